"""Load the OpenAI spec before any server test runs.

Parsing the 3 MB spec takes seconds and blocks the event loop; done lazily inside a timing-sensitive
test (a full queue, a batch of streams) it would let the server finish the work being observed.
"""

from __future__ import annotations

import pytest

from tests.fixtures.openai_spec import schema_errors


@pytest.fixture(scope="session", autouse=True)
def _openai_spec_loaded() -> None:
    assert (
        schema_errors("ErrorResponse", {"error": {"message": "m", "type": "t", "param": None, "code": None}})
        == []
    )
