"""Warehouse schemas, Parquet I/O and the synthetic world."""

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from config import WorldConfig
from tests.parquet_support import DAMAGES, damage_parquet
from warehouse import Warehouse, WarehouseMissingError, WarehouseSchemaError, validate_table
from warehouse.ground_truth import GroundTruth
from warehouse.synthetic import generate_world
from warehouse.synthetic_world import LANGUAGES

TINY = WorldConfig(size="tiny", seed=7)


@pytest.fixture(scope="module")
def tiny_world(tmp_path_factory):
    warehouse = Warehouse.open(f"file://{tmp_path_factory.mktemp('world')}")
    generate_world(TINY, warehouse, progress=False)
    return warehouse


def _events(n=3, **overrides):
    columns = {
        "user_id": ["u1"] * n,
        "story_id": ["s1"] * n,
        "ts": [1_790_000_000] * n,
        "view": [True] * n,
        "long_view": [False] * n,
        "boost": [False] * n,
        "favorite": [False] * n,
        "share": [False] * n,
        "skip": [False] * n,
        "watch_ratio": [0.5] * n,
    }
    columns.update(overrides)
    return pa.table(columns)


class TestSchemaValidation:
    def test_a_missing_column_is_named_with_the_table(self):
        with pytest.raises(WarehouseSchemaError, match=r"table 'events', column 'watch_ratio' in f.parquet: missing"):
            validate_table("events", _events().drop_columns(["watch_ratio"]), "f.parquet")

    def test_a_wrong_type_is_named(self):
        with pytest.raises(WarehouseSchemaError, match=r"column 'ts'.*type string, expected int64"):
            validate_table("events", _events(ts=["yesterday"] * 3))

    def test_nulls_are_located(self):
        with pytest.raises(WarehouseSchemaError, match=r"column 'user_id'.*1 null value\(s\), first at row 1"):
            validate_table("events", _events(user_id=["u1", None, "u3"]))

    def test_duplicate_ids_in_an_entity_table(self):
        users = pa.table(
            {
                "user_id": ["a", "b", "a"],
                "country": ["US"] * 3,
                "language": ["en"] * 3,
                "age_bucket": ["18-24"] * 3,
                "account_created_ts": [0, 0, 0],
            }
        )
        with pytest.raises(WarehouseSchemaError, match=r"'users', column 'user_id'.*1 duplicate id\(s\), e.g. 'a'"):
            validate_table("users", users)

    def test_milliseconds_and_bad_watch_ratios_are_refused(self):
        with pytest.raises(WarehouseSchemaError, match="milliseconds"):
            validate_table("events", _events(ts=[1_790_000_000_000] * 3))
        with pytest.raises(WarehouseSchemaError, match="watch_ratio"):
            validate_table("events", _events(watch_ratio=[0.5, float("nan"), 0.1]))

    def test_embeddings_of_different_lengths_are_refused(self, tiny_world):
        stories = tiny_world.read_table("stories").slice(0, 2)
        ragged = stories.set_column(
            stories.column_names.index("content_embedding"),
            "content_embedding",
            pa.array([[0.1, 0.2], [0.3]], pa.list_(pa.float32())),
        )
        with pytest.raises(WarehouseSchemaError, match=r"content_embedding.*different lengths \(1..2\)"):
            validate_table("stories", ragged)

    def test_safe_casts_are_applied_and_extras_kept(self):
        events = _events(ts=pa.array([1, 2, 3], pa.int32()), watch_ratio=pa.array([0.5] * 3, pa.float64()))
        events = events.append_column("surface", pa.array(["feed"] * 3))
        out = validate_table("events", events)
        assert out.schema.field("ts").type == pa.int64()
        assert out.schema.field("watch_ratio").type == pa.float32()
        assert out.column_names[-1] == "surface"

    def test_a_corrupt_parquet_file_is_named(self, tmp_path):
        warehouse = Warehouse.open(f"file://{tmp_path}")
        (tmp_path / "warehouse" / "users").mkdir(parents=True)
        (tmp_path / "warehouse" / "users" / "part-00000.parquet").write_bytes(b"not parquet")
        with pytest.raises(WarehouseSchemaError, match="users/part-00000.parquet is not a readable Parquet file"):
            warehouse.read_table("users")

    def test_a_missing_warehouse_says_how_to_make_one(self, tmp_path):
        with pytest.raises(WarehouseMissingError, match="ebr data generate"):
            Warehouse.open(f"file://{tmp_path}").read_table("stories")


def _small_warehouse(root: Path) -> Warehouse:
    """Every table, two rows of users and events on two days: enough for every reader."""
    warehouse = Warehouse.open(f"file://{root}")
    warehouse.write_table(
        "users",
        pa.table(
            {
                "user_id": ["u1", "u2"],
                "country": ["US"] * 2,
                "language": ["en"] * 2,
                "age_bucket": ["18-24"] * 2,
                "account_created_ts": [0, 0],
            }
        ),
    )
    warehouse.write_table(
        "creators",
        pa.table(
            {
                "creator_id": ["c1"],
                "country": ["US"],
                "language": ["en"],
                "created_ts": [0],
                "follower_count": [3],
            }
        ),
    )
    warehouse.write_table(
        "stories",
        pa.table(
            {
                "story_id": ["s1"],
                "creator_id": ["c1"],
                "created_ts": [0],
                "country": ["US"],
                "language": ["en"],
                "duration_s": pa.array([10.0], pa.float32()),
                "hashtags": [["cats"]],
                "description": ["a cat"],
                "content_embedding": pa.array([[0.1, 0.2]], pa.list_(pa.float32())),
            }
        ),
    )
    warehouse.write_events(_events(2, ts=[1_790_000_000, 1_790_000_000 + 86_400]))
    return warehouse


class TestCorruptParquet:
    """A damaged file fails every reader with one error that names the file and the problem."""

    @pytest.mark.parametrize("how", DAMAGES)
    def test_an_entity_table(self, tmp_path, how):
        warehouse = _small_warehouse(tmp_path)
        path = tmp_path / "warehouse" / "users" / "part-00000.parquet"
        problem = damage_parquet(path, how)
        # summary() reads footers only: pages that do not decode are found by readers of rows.
        for read in (
            lambda: warehouse.read_table("users"),
            lambda: warehouse.read_table("users", ["user_id"]),
            *([warehouse.summary] if how != "corrupt pages" else []),
        ):
            with pytest.raises(WarehouseSchemaError) as err:
                read()
            assert f"file://{path}" in str(err.value) and re.search(problem, str(err.value)), str(err.value)

    @pytest.mark.parametrize("how", DAMAGES)
    def test_an_event_partition(self, tmp_path, how):
        warehouse = _small_warehouse(tmp_path)
        assert len(warehouse.event_days()) == 2
        path = tmp_path / "warehouse" / "events" / "dt=2026-09-22" / "part-00000.parquet"
        problem = damage_parquet(path, how)
        readers = [
            warehouse.read_events,
            lambda: list(warehouse.iter_events()),
            lambda: warehouse.read_events(columns=["ts"]),
        ]
        for read in readers + ([warehouse.summary] if how != "corrupt pages" else []):
            with pytest.raises(WarehouseSchemaError) as err:
                read()
            assert f"file://{path}" in str(err.value) and re.search(problem, str(err.value)), str(err.value)
        assert len(warehouse.event_days()) == 2  # listing partitions reads none of them

    def test_a_partition_that_is_not_a_date(self, tmp_path):
        warehouse = _small_warehouse(tmp_path)
        (tmp_path / "warehouse" / "events" / "dt=2026-02-30").mkdir()
        with pytest.raises(
            WarehouseSchemaError, match=r"warehouse/events/dt=2026-02-30 is not a day partition: day is out of range"
        ):
            warehouse.event_days()

    @pytest.mark.parametrize("how", ["truncated", "wrong schema"])
    def test_ebr_data_show_prints_one_error_line(self, tmp_path, capsys, how):
        from cli.main import main

        _small_warehouse(tmp_path)
        path = tmp_path / "warehouse" / "stories" / "part-00000.parquet"
        damage_parquet(path, how)
        assert main(["--root", f"file://{tmp_path}", "data", "show"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("error: ") and f"file://{path}" in err[0], err


class TestSyntheticWorld:
    def test_counts_and_layout(self, tiny_world):
        summary = tiny_world.summary()
        assert summary["rows"] == {"users": 300, "stories": 2_000, "creators": 60, "events": 30_000}
        assert summary["days"] == 14 and summary["first_day"] == "2026-10-01"
        assert summary["source"]["source"] == "synthetic"

    def test_same_seed_same_world_other_seed_other_world(self, tiny_world, tmp_path):
        again = Warehouse.open(f"file://{tmp_path}/a")
        generate_world(TINY, again, progress=False)
        for table in ("users", "stories", "creators"):
            assert again.read_table(table).equals(tiny_world.read_table(table))
        assert again.read_events().equals(tiny_world.read_events())
        other = Warehouse.open(f"file://{tmp_path}/b")
        generate_world(TINY.model_copy(update={"seed": 8}), other, progress=False)
        assert not other.read_events().equals(tiny_world.read_events())

    def test_events_only_show_stories_that_exist_and_are_fresh(self, tiny_world):
        events = tiny_world.read_events()
        stories = tiny_world.read_table("stories")
        created = dict(zip(stories["story_id"].to_pylist(), stories["created_ts"].to_pylist(), strict=True))
        age = events["ts"].to_numpy() - np.array([created[s] for s in events["story_id"].to_pylist()])
        assert age.min() >= 0
        assert age.max() <= TINY.story_lifetime_days * 86_400
        for day, part in tiny_world.iter_events():
            days = {
                d.date() for d in pc.cast(pc.multiply(part["ts"], 1_000_000), pa.timestamp("us", "UTC")).to_pylist()
            }
            assert days == {day}

    def test_popularity_has_a_zipf_like_head(self, tiny_world):
        counts = np.sort(pc.value_counts(tiny_world.read_events()["story_id"]).field("counts").to_numpy())[::-1]
        top_share = counts[: max(1, len(counts) // 100)].sum() / counts.sum()
        assert top_share > 0.08  # the top 1% of stories take several times their share

    def test_engagement_carries_the_latent_interests(self, tiny_world):
        events = tiny_world.read_events()
        truth = GroundTruth.load(tiny_world)
        user_index = {u: i for i, u in enumerate(truth.user_ids)}
        story_index = {s: i for i, s in enumerate(truth.story_ids)}
        u = np.array([user_index[x] for x in events["user_id"].to_pylist()])
        s = np.array([story_index[x] for x in events["story_id"].to_pylist()])
        oracle = truth.oracle_scores(u, s)
        for signal in ("long_view", "favorite", "share", "boost"):
            positive = events[signal].to_numpy(zero_copy_only=False)
            assert oracle[positive].mean() > oracle[~positive].mean() + 0.3, signal
        skipped = events["skip"].to_numpy(zero_copy_only=False)
        assert oracle[skipped].mean() < oracle[~skipped].mean()

    def test_most_engagement_stays_inside_the_users_language(self, tiny_world):
        events = tiny_world.read_events()
        truth = GroundTruth.load(tiny_world)
        user_language = dict(zip(truth.user_ids, truth.user_language, strict=True))
        story_language = dict(zip(truth.story_ids, truth.story_language, strict=True))
        same = np.array(
            [
                user_language[a] == story_language[b]
                for a, b in zip(events["user_id"].to_pylist(), events["story_id"].to_pylist(), strict=True)
            ]
        )
        long_view = events["long_view"].to_numpy(zero_copy_only=False)
        assert same[long_view].mean() > 0.8
        assert same[long_view].mean() > same.mean()  # engagement is more local than exposure
        assert set(tiny_world.read_table("users")["language"].to_pylist()) <= set(LANGUAGES)

    def test_hashtags_and_content_embedding_carry_the_topic(self, tiny_world):
        stories = tiny_world.read_table("stories")
        truth = GroundTruth.load(tiny_world)
        topics = tiny_world.read_json("_truth/world.json")["topics"]
        first_tag_topic = [tags[0].split("_")[0] for tags in stories["hashtags"].to_pylist()]
        true_topic = [topics[t] for t in truth.story_topic]
        assert np.mean([a == b for a, b in zip(first_tag_topic, true_topic, strict=True)]) > 0.95
        embedding = np.stack(stories["content_embedding"].to_numpy(zero_copy_only=False))
        cosine = embedding @ embedding.T
        same_topic = truth.story_topic[:, None] == truth.story_topic[None, :]
        assert cosine[same_topic].mean() > cosine[~same_topic].mean() + 0.3
