"""A failed reconcile is classified deliberately: a rejected object is not retried, the rest backs off."""

from __future__ import annotations

import httpx2
from lightkube import ApiError
from lightkube.models.meta_v1 import Status
from pydantic import ValidationError

from modelyard.api.llmmodel import LLMModelSpec
from modelyard.operator.failures import MAX_RETRY_SECONDS, classify, retry_delay

REJECTED = (
    'Deployment.apps "llama" is invalid: spec.template.spec.containers[0].resources.limits[nvidia/gpu x]: '
    'Invalid value: "nvidia/gpu x": must be a standard resource type or fully qualified'
)


def api_error(code: int, message: str) -> ApiError:
    return ApiError(status=Status(code=code, message=message, reason="Invalid", status="Failure"))


def test_a_rejected_child_is_permanent_and_keeps_the_api_servers_message() -> None:
    failure = classify(api_error(422, REJECTED), generation=3)
    assert failure.permanent
    assert REJECTED in failure.message
    assert failure.generation == 3
    assert failure.error == "api_422"


def test_conflicts_overload_and_server_errors_are_temporary() -> None:
    for code in (403, 404, 409, 429, 500, 503):
        failure = classify(api_error(code, "try later"), generation=1)
        assert not failure.permanent, code
        assert "try later" in failure.message


def test_an_unreachable_api_server_is_temporary() -> None:
    failure = classify(httpx2.ConnectTimeout("timed out"), generation=1)
    assert not failure.permanent
    assert failure.error == "transport"


def test_an_unparsable_spec_is_permanent() -> None:
    try:
        LLMModelSpec.model_validate({"url": "ftp://nope"})
    except ValidationError as exc:
        failure = classify(exc, generation=1)
    assert failure.permanent
    assert failure.message.startswith("invalid spec:")


def test_an_unexpected_error_is_temporary_and_named() -> None:
    failure = classify(KeyError("spec"), generation=1)
    assert not failure.permanent
    assert "KeyError" in failure.message


def test_retries_back_off_exponentially_up_to_a_cap() -> None:
    delays = [retry_delay(n) for n in range(12)]
    assert delays[:4] == [5.0, 10.0, 20.0, 40.0]
    assert delays == sorted(delays)
    assert max(delays) == MAX_RETRY_SECONDS
    assert retry_delay(10_000) == MAX_RETRY_SECONDS
