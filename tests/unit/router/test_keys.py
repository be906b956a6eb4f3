"""API keys: parsing, authentication, model lists and per-key limits."""

from __future__ import annotations

import hashlib

import pytest

from modelyard.router.errors import RouterError
from modelyard.router.keys import KeyStore, parse_keys

DOC = """
keys:
  - name: team-a
    key: sk-team-a-0001
    models: ["tiny"]
    requestsPerMinute: 2
  - name: team-b
    keySha256: {}
    tokensPerMinute: 60
  - name: team-c
    key: sk-team-c-0003
    maxConcurrent: 1
""".format(hashlib.sha256(b"sk-team-b-0002").hexdigest())


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def store() -> tuple[KeyStore, Clock]:
    clock = Clock()
    ks = KeyStore(clock)
    ks.load(parse_keys(DOC))
    return ks, clock


def status(exc: pytest.ExceptionInfo[RouterError]) -> tuple[int, str | None, int | None]:
    return exc.value.status, exc.value.code, exc.value.retry_after_s


def test_valid_keys_authenticate_by_name_plain_or_hashed() -> None:
    ks, _ = store()
    assert ks.authenticate("Bearer sk-team-a-0001").name == "team-a"
    assert ks.authenticate("bearer sk-team-b-0002").name == "team-b"


@pytest.mark.parametrize("header", [None, "", "Basic abc", "Bearer ", "sk-team-a-0001"])
def test_missing_key_is_401(header: str | None) -> None:
    ks, _ = store()
    with pytest.raises(RouterError) as info:
        ks.authenticate(header)
    assert status(info)[:2] == (401, "invalid_api_key")


def test_wrong_key_is_401() -> None:
    ks, _ = store()
    with pytest.raises(RouterError) as info:
        ks.authenticate("Bearer sk-team-a-0002")
    assert status(info)[:2] == (401, "invalid_api_key")
    assert info.value.type == "authentication_error"


def test_model_outside_the_keys_list_is_the_same_404_as_a_missing_one_and_aliases_count() -> None:
    """403 would tell a tenant that a model it may not use exists."""
    ks, _ = store()
    key = ks.authenticate("Bearer sk-team-a-0001")
    with pytest.raises(RouterError) as info:
        ks.admit(key, "other")
    assert status(info)[:2] == (404, "model_not_found")
    assert info.value.message == "The model `other` does not exist."
    ks.admit(key, "canonical", requested="tiny")  # the alias the client used is listed


def test_requests_per_minute_is_a_refilling_bucket_with_retry_after() -> None:
    ks, clock = store()
    key = ks.authenticate("Bearer sk-team-a-0001")
    ks.admit(key, "tiny")
    ks.release(key, 0)
    ks.admit(key, "tiny")
    ks.release(key, 0)
    with pytest.raises(RouterError) as info:
        ks.admit(key, "tiny")
    assert status(info) == (429, "rate_limit_exceeded", 30)  # 2/min -> one every 30 s
    clock.now += 30
    ks.admit(key, "tiny")


def test_tokens_per_minute_charges_usage_after_the_fact() -> None:
    ks, clock = store()
    key = ks.authenticate("Bearer sk-team-b-0002")
    ks.admit(key, "any")
    ks.release(key, 90)  # budget 60 -> -30
    with pytest.raises(RouterError) as info:
        ks.admit(key, "any")
    assert status(info) == (429, "rate_limit_exceeded", 31)  # back above zero after 31 s at 1/s
    clock.now += 31
    ks.admit(key, "any")


def test_concurrency_limit_frees_on_release() -> None:
    ks, _ = store()
    key = ks.authenticate("Bearer sk-team-c-0003")
    ks.admit(key, "any")
    with pytest.raises(RouterError) as info:
        ks.admit(key, "any")
    assert status(info)[:2] == (429, "rate_limit_exceeded")
    assert info.value.retry_after_s is not None
    ks.release(key, 0)
    ks.admit(key, "any")


def test_reload_keeps_counters_of_unchanged_keys_and_drops_removed_ones() -> None:
    ks, _ = store()
    key = ks.authenticate("Bearer sk-team-c-0003")
    ks.admit(key, "any")
    ks.load(parse_keys(DOC))
    with pytest.raises(RouterError):
        ks.admit(ks.authenticate("Bearer sk-team-c-0003"), "any")  # still one in flight
    ks.load(parse_keys("keys: []"))
    with pytest.raises(RouterError):
        ks.authenticate("Bearer sk-team-c-0003")


@pytest.mark.parametrize(
    "doc",
    [
        "keys: [{name: a}]",  # no secret
        "keys: [{name: a, key: sk-aaaaaaaa, keySha256: " + "0" * 64 + "}]",  # both
        "keys: [{name: a, key: short}]",
        "keys: [{name: a, key: sk-aaaaaaaa}, {name: a, key: sk-bbbbbbbb}]",  # duplicate names
        "keys: [{name: a, key: sk-aaaaaaaa, requestsPerMinute: -1}]",
        "keys: [{name: a, key: sk-aaaaaaaa, typo: 1}]",
    ],
)
def test_malformed_documents_are_rejected(doc: str) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - pydantic's ValidationError is a ValueError
        parse_keys(doc)
