"""The pairing policy of the reloader (`serving.pairing`): which story index and user
embeddings versions may be served together, worked out by hand on version names."""

from __future__ import annotations

from serving.pairing import PairChoice, choose_pair, may_keep_served, newest_consistent_pair

STORIES, USERS = "indexes/stories", "embeddings/users"


def no_history():
    raise AssertionError("HISTORY.jsonl is only read when nothing is served and the newest pair disagrees")


def test_the_newest_pair_is_served_when_both_sides_are_of_one_model():
    latest = {STORIES: "s2", USERS: "u2"}
    choice = choose_pair(latest, {STORIES: "m2", USERS: "m2"}, ({STORIES: "s1", USERS: "u1"}, "m1"), no_history)
    assert choice == PairChoice({STORIES: "s2", USERS: "u2"}, "m2", "")


def test_a_newest_pair_of_two_models_keeps_the_served_pair_and_says_why():
    latest = {STORIES: "s2", USERS: "u2"}
    choice = choose_pair(latest, {STORIES: "m1", USERS: "m2"}, ({STORIES: "s1", USERS: "u1"}, "m1"), no_history)
    assert (choice.pair, choice.model) == ({STORIES: "s1", USERS: "u1"}, "m1")
    assert "newest story index s2 is from model 'm1' but newest user embeddings u2 are from 'm2'" in choice.waiting
    assert choice.waiting.endswith("serving the previous pair until both sides match")


def test_with_nothing_served_the_newest_consistent_pair_in_history_is_served_or_none():
    latest, models = {STORIES: "s2", USERS: "u2"}, {STORIES: "m1", USERS: "m2"}
    found = choose_pair(latest, models, None, lambda: ({STORIES: "s1", USERS: "u1"}, "m1"))
    assert (found.pair, found.model) == ({STORIES: "s1", USERS: "u1"}, "m1")
    assert found.waiting.endswith(
        "started during the rollout: serving the newest consistent pair in HISTORY.jsonl, model m1"
    )
    none = choose_pair(latest, models, None, lambda: None)
    assert (none.pair, none.model) == (None, None)
    assert none.waiting.endswith(" (no consistent pair in HISTORY.jsonl either)")


def test_newest_consistent_pair_takes_the_model_whose_pair_became_complete_last():
    # Newest move first. Only m1 is on both sides: its newest story index s2 (t3), user u1 (t2).
    stories = [("t5", "s3", "m2"), ("t3", "s2", "m1"), ("t1", "s1", "m1")]
    users = [("t4", "u2", "m3"), ("t2", "u1", "m1")]
    assert newest_consistent_pair({STORIES: stories, USERS: users}) == ({STORIES: "s2", USERS: "u1"}, "m1")
    # m2 on both sides too: complete at t6 (u3), later than m1's t3, so m2 wins.
    users = [("t6", "u3", "m2"), *users]
    assert newest_consistent_pair({STORIES: stories, USERS: users}) == ({STORIES: "s3", USERS: "u3"}, "m2")
    # Complete at the same move (t4) for both: the other move decides, m2's t2 is later than m1's t1.
    stories = [("t4", "s2", "m1"), ("t2", "s1", "m2")]
    users = [("t4", "u2", "m2"), ("t1", "u1", "m1")]
    assert newest_consistent_pair({STORIES: stories, USERS: users}) == ({STORIES: "s1", USERS: "u2"}, "m2")
    assert newest_consistent_pair({STORIES: stories, USERS: [("t3", "u9", "m9")]}) is None
    assert newest_consistent_pair({STORIES: [], USERS: users}) is None


def test_moves_within_one_second_are_ordered_by_their_microseconds():
    """Pointer moves keep microseconds: a user snapshot of m2 published 0.2 s after the m2
    story index, both in the second of m1's pair, makes m2's the newest consistent pair
    (with whole seconds the two models tied, and the choice was arbitrary)."""
    stories = [("2026-12-01T16:59:01.300000+00:00", "s2", "m2"), ("2026-12-01T16:59:01.100000+00:00", "s1", "m1")]
    users = [("2026-12-01T16:59:01.500000+00:00", "u2", "m2"), ("2026-12-01T16:59:01+00:00", "u1", "m1")]
    assert newest_consistent_pair({STORIES: stories, USERS: users}) == ({STORIES: "s2", USERS: "u2"}, "m2")


def test_a_pointer_move_records_its_time_to_the_microsecond(tmp_path):
    from artifacts import ArtifactStore

    kind = ArtifactStore.open(f"file://{tmp_path}").kind(USERS)
    with kind.new_version("u1", parents={"model_version": "m1"}) as writer:
        writer.add_bytes("part", b"u1")
    kind.publish("u1", reason="test")
    (move,) = kind.history()
    assert len(move.at) == len("2026-12-01T16:59:01.500000+00:00") and move.at.endswith("+00:00")


def test_a_side_keeps_its_served_version_only_while_that_is_of_the_pair_s_model():
    assert may_keep_served("m1", "m1")
    assert not may_keep_served("m1", "m2")
