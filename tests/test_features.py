"""As-of features: what a tower sees at time T depends only on events before T."""

import numpy as np
import pyarrow as pa
import pytest

from config import FeatureConfig, WorldConfig
from models.features import (
    Catalog,
    EventHistory,
    positive_scores,
    story_features,
    story_stat_names,
    user_features,
    user_stat_names,
)
from warehouse import Warehouse
from warehouse.synthetic import generate_world

DAY = 86_400
T0 = 1_790_000_000
CFG = FeatureConfig(history_length=3, hashtag_history_stories=2, story_hashtags=2, windows_days=(1.0, 7.0))


def _catalog():
    users = pa.table(
        {
            "user_id": ["alice", "bob"],
            "country": ["US", "FR"],
            "language": ["en", "fr"],
            "age_bucket": ["18-24", "25-34"],
            "account_created_ts": [T0 - 10 * DAY, T0 - DAY],
        }
    )
    stories = pa.table(
        {
            "story_id": ["s1", "s2", "s3", "s4"],
            "creator_id": ["c1", "c1", "c2", "c2"],
            "created_ts": [T0 - 5 * DAY, T0 - 2 * DAY, T0 - DAY, T0],
            "country": ["US"] * 4,
            "language": ["en"] * 4,
            "duration_s": pa.array([10.0, None, 30.0, 5.0], pa.float32()),
            "hashtags": [["pets", "cats"], ["food"], ["pets"], []],
            "description": ["a", "b", "c", "d"],
            "content_embedding": pa.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.5, 0.5]], pa.list_(pa.float32())),
        }
    )
    creators = pa.table(
        {
            "creator_id": ["c1", "c2"],
            "country": ["US", "US"],
            "language": ["en", "en"],
            "created_ts": [0, 0],
            "follower_count": [99, 0],
        }
    )
    return Catalog.from_tables(users, stories, creators, CFG)


def _events(rows):
    """rows: (user, story, ts, long_view)."""
    n = len(rows)
    return pa.table(
        {
            "user_id": [r[0] for r in rows],
            "story_id": [r[1] for r in rows],
            "ts": [r[2] for r in rows],
            "view": [True] * n,
            "long_view": [r[3] for r in rows],
            "boost": [False] * n,
            "favorite": [False] * n,
            "share": [False] * n,
            "skip": [False] * n,
            "watch_ratio": pa.array([0.5] * n, pa.float32()),
        }
    )


EVENTS = _events(
    [
        ("alice", "s1", T0 + 100, True),
        ("alice", "s2", T0 + 200, False),
        ("alice", "s3", T0 + 300, True),
        ("alice", "s4", T0 + 2 * DAY, True),
        ("bob", "s1", T0 + 150, True),
    ]
)


def test_user_history_stops_strictly_before_as_of():
    history = EventHistory.from_events(EVENTS, _catalog(), CFG)
    alice = np.array([0, 0, 0])
    features = user_features(history, alice, np.array([T0 + 300, T0 + 301, T0 + 3 * DAY]))
    # As of T0+300 the long view of s3 (at T0+300) is not yet visible; s2 was no positive.
    assert features["history_story_ids"].tolist() == [
        ["s1", "", ""],
        ["s3", "s1", ""],  # newest first
        ["s4", "s3", "s1"],
    ]
    assert features["history_creator_ids"][1].tolist() == ["c2", "c1", ""]
    # Hashtags of the 2 newest positives, 2 slots each: s3 (pets, -) then s1 (pets, cats).
    assert features["history_hashtags"][1].tolist() == ["pets", "", "pets", "cats"]
    stats = dict(zip(user_stat_names(CFG), features["user_stats"][1], strict=True))
    # Three impressions before T0+301 in the last day, two of them positive.
    assert stats["log_impressions_1d"] == pytest.approx(np.log1p(3))
    assert stats["log_positives_1d"] == pytest.approx(np.log1p(2))
    assert stats["positive_rate_1d"] == pytest.approx(2 / 3)
    assert stats["watch_ratio_1d"] == pytest.approx(0.5)
    assert stats["log_account_age_days"] == pytest.approx(np.log1p(10 + 301 / DAY))
    # Three days later only s4's impression is inside the one-day window.
    late = dict(zip(user_stat_names(CFG), features["user_stats"][2], strict=True))
    assert late["log_impressions_1d"] == pytest.approx(np.log1p(1))
    assert late["log_impressions_7d"] == pytest.approx(np.log1p(4))
    assert features["user_id"].tolist() == ["alice"] * 3 and features["language"][0] == "en"


def test_story_statistics_count_only_earlier_events():
    history = EventHistory.from_events(EVENTS, _catalog(), CFG)
    s1 = np.array([0, 0])
    features = story_features(history, s1, np.array([T0 + 150, T0 + 151]))
    before, after = (dict(zip(story_stat_names(CFG), row, strict=True)) for row in features["story_stats"])
    assert before["log_impressions_all"] == pytest.approx(np.log1p(1))  # alice's, not bob's at T0+150
    assert after["log_impressions_all"] == pytest.approx(np.log1p(2))
    assert after["log_creator_followers"] == pytest.approx(np.log1p(99))
    assert before["log_age_hours"] == pytest.approx(np.log1p((5 * DAY + 150) / 3600))
    s2 = story_features(history, np.array([1]), np.array([T0]))
    row = dict(zip(story_stat_names(CFG), s2["story_stats"][0], strict=True))
    assert row["duration_missing"] == 1.0 and row["log_duration_s"] == 0.0
    assert s2["hashtags"].tolist() == [["food", ""]]
    assert s2["content_embedding"].tolist() == [[0.0, 1.0]]


def test_no_feature_sees_the_future(tmp_path):
    """Features as of T from the whole log equal features from the log cut at T."""
    warehouse = Warehouse.open(f"file://{tmp_path}")
    generate_world(WorldConfig(size="tiny", seed=3), warehouse, progress=False)
    cfg = FeatureConfig()
    catalog = Catalog.from_tables(
        warehouse.read_table("users"), warehouse.read_table("stories"), warehouse.read_table("creators"), cfg
    )
    events = warehouse.read_events()
    cut = int(np.median(events["ts"].to_numpy()))
    full = EventHistory.from_events(events, catalog, cfg)
    past = EventHistory.from_events(events.filter(pa.compute.less(events["ts"], cut)), catalog, cfg)
    users, stories = np.arange(len(catalog.user_ids)), np.arange(len(catalog.story_ids))
    at = lambda n: np.full(n, cut)  # noqa: E731
    for name, value in user_features(full, users, at(len(users))).items():
        np.testing.assert_array_equal(value, user_features(past, users, at(len(users)))[name], err_msg=name)
    for name, value in story_features(full, stories, at(len(stories))).items():
        np.testing.assert_array_equal(value, story_features(past, stories, at(len(stories)))[name], err_msg=name)


def test_positive_label_combines_weighted_signals():
    events = EVENTS.set_column(
        EVENTS.column_names.index("favorite"), "favorite", pa.array([True, True, False, False, False])
    )
    cfg = FeatureConfig(label_weights={"long_view": 1.0, "favorite": 0.5}, label_threshold=1.0)
    assert positive_scores(events, cfg).tolist() == [1.5, 0.5, 1.0, 1.0, 1.0]
    with pytest.raises(KeyError, match="label signal 'likes'"):
        positive_scores(events, FeatureConfig(label_weights={"likes": 1.0}))


def test_unknown_ids_in_events_are_named():
    with pytest.raises(KeyError, match="user id 'carol'"):
        EventHistory.from_events(_events([("carol", "s1", T0, True)]), _catalog(), CFG)
