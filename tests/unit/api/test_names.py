"""One rule decides served-name clashes, for the operator's status and the router's table alike."""

from __future__ import annotations

from typing import Any

from modelyard.api.names import NameClaim, NameConflict, name_conflicts


def llm(
    name: str, namespace: str = "a", created: str = "2026-01-01T00:00:00Z", **spec: Any
) -> dict[str, Any]:
    meta = {"name": name, "namespace": namespace, "creationTimestamp": created}
    return {"metadata": meta, "spec": spec}


T1, T2, T3 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z", "2026-01-03T00:00:00Z"


def test_distinct_names_do_not_conflict() -> None:
    assert name_conflicts([llm("x"), llm("y", servedName="z", aliases=["w"])]) == {}


def test_the_older_model_keeps_a_served_name_whatever_the_namespace() -> None:
    older, newer = (
        llm("first", "team-b", T1, servedName="chat"),
        llm("second", "team-a", T2, servedName="chat"),
    )
    assert name_conflicts([newer, older]) == {("team-a", "second"): NameConflict("chat", ("team-b", "first"))}


def test_a_tie_is_broken_by_namespace_then_name() -> None:
    losers = name_conflicts([llm("b", "ns", T1, servedName="chat"), llm("a", "ns", T1, servedName="chat")])
    assert list(losers) == [("ns", "b")]
    # The message says so, rather than "created earlier".
    assert losers[("ns", "b")].tie
    assert "created in the same second, first by namespace/name" in losers[("ns", "b")].message()
    assert "created earlier" not in losers[("ns", "b")].message()
    losers = name_conflicts([llm("m", "ns2", T1, servedName="chat"), llm("m", "ns1", T1, servedName="chat")])
    assert list(losers) == [("ns2", "m")]


def test_an_alias_clash_loses_the_whole_model_not_just_the_alias() -> None:
    losers = name_conflicts(
        [llm("old", created=T1, aliases=["default"]), llm("new", created=T2, aliases=["default"])]
    )
    assert losers == {("a", "new"): NameConflict("default", ("a", "old"))}
    # An alias against another model's served name (metadata.name when servedName is unset) too.
    losers = name_conflicts([llm("default", created=T1), llm("new", created=T2, aliases=["default"])])
    assert list(losers) == [("a", "new")]


def test_a_loser_claims_nothing_so_it_cannot_make_a_third_model_lose() -> None:
    losers = name_conflicts(
        [
            llm("one", created=T1, servedName="x"),
            llm("two", created=T2, servedName="x", aliases=["y"]),
            llm("three", created=T3, servedName="y"),
        ]
    )
    assert list(losers) == [("a", "two")]


def test_a_model_not_yet_stored_counts_as_the_newest() -> None:
    unsaved = {"metadata": {"name": "new", "namespace": "a"}, "spec": {"servedName": "chat"}}
    assert list(name_conflicts([unsaved, llm("old", created=T3, servedName="chat")])) == [("a", "new")]


def test_the_message_names_the_holder_and_what_to_change() -> None:
    message = NameConflict("chat", ("team-b", "first")).message()
    assert "(created earlier)" in message
    assert 'name "chat"' in message
    assert "LLMModel team-b/first" in message
    assert "spec.servedName" in message


def test_a_claim_lists_the_served_name_first_without_duplicates() -> None:
    assert NameClaim.of(llm("m", aliases=["m", "x", "x"])).names == ("m", "x")
