"""MovieLens and KuaiRand converters.

MovieLens 100K is read from ../shared/data (skipped when absent; never copied here).
MovieLens 1M and KuaiRand are not on this machine: their tests write small files in the
original formats, with the original column names and separators.
"""

import numpy as np
import pytest

from warehouse import Warehouse
from warehouse.kuairand import LOG_COLUMNS, USER_COLUMNS, convert_kuairand
from warehouse.movielens import convert_movielens
from warehouse.source_files import SourceFileError


@pytest.fixture
def warehouse(tmp_path):
    return Warehouse.open(f"file://{tmp_path}/root")


def test_movielens_100k_becomes_stories_and_engagement(movielens_100k, warehouse):
    summary = convert_movielens(movielens_100k, warehouse)
    assert summary["counts"]["events"] == 100_000
    assert warehouse.summary()["rows"] == {"users": 943, "stories": 1_682, "creators": 1_682, "events": 100_000}
    ratings = np.loadtxt(movielens_100k / "u.data", dtype=np.int64)
    events = warehouse.read_events()
    assert int(events["long_view"].to_numpy(zero_copy_only=False).sum()) == int((ratings[:, 2] >= 4).sum())
    assert int(events["favorite"].to_numpy(zero_copy_only=False).sum()) == int((ratings[:, 2] == 5).sum())
    assert sorted(set(events["user_id"].to_pylist()), key=int)[:3] == ["1", "2", "3"]
    stories = {r["story_id"]: r for r in warehouse.read_table("stories").to_pylist()}
    assert stories["1"]["description"] == "Toy Story (1995)"
    assert stories["1"]["hashtags"] == ["animation", "childrens", "comedy"]
    assert len(stories["1"]["content_embedding"]) == 19


def _write_movielens_1m(folder):
    folder.mkdir()
    (folder / "ratings.dat").write_text("1::10::5::978300760\n1::20::3::978302109\n2::10::4::978301968\n")
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (folder / "movies.dat").write_bytes(
        "10::GoldenEye (1995)::Action|Adventure|Thriller\n20::Café au lait (1993)::Comedy\n".encode("latin-1")
    )


def test_movielens_1m_format(tmp_path, warehouse):
    _write_movielens_1m(tmp_path / "ml-1m")
    summary = convert_movielens(tmp_path / "ml-1m", warehouse)
    assert summary["source"] == "movielens-1m"
    assert warehouse.summary()["rows"] == {"users": 2, "stories": 2, "creators": 2, "events": 3}
    users = {r["user_id"]: r for r in warehouse.read_table("users").to_pylist()}
    assert users["1"]["age_bucket"] == "<18" and users["2"]["age_bucket"] == "56+"
    stories = {r["story_id"]: r for r in warehouse.read_table("stories").to_pylist()}
    assert stories["20"]["description"] == "Café au lait (1993)"  # latin-1 decoded
    assert stories["10"]["hashtags"] == ["action", "adventure", "thriller"]
    assert stories["20"]["created_ts"] == 725846400  # 1993-01-01T00:00:00Z
    events = warehouse.read_events().to_pylist()
    assert [(e["user_id"], e["story_id"], e["favorite"], e["long_view"], e["skip"]) for e in events] == [
        ("1", "10", True, True, False),
        ("2", "10", False, True, False),
        ("1", "20", False, False, False),
    ]


def test_movielens_errors_name_the_file(tmp_path, warehouse):
    with pytest.raises(SourceFileError, match="neither MovieLens 100K"):
        convert_movielens(tmp_path, warehouse)
    _write_movielens_1m(tmp_path / "ml-1m")
    (tmp_path / "ml-1m" / "movies.dat").unlink()
    with pytest.raises(SourceFileError, match=r"movies.dat is missing"):
        convert_movielens(tmp_path / "ml-1m", warehouse)
    (tmp_path / "ml-1m" / "movies.dat").write_text("10::GoldenEye (1995)\n")
    with pytest.raises(SourceFileError, match=r"movies.dat is malformed: line 1 has 2 fields"):
        convert_movielens(tmp_path / "ml-1m", warehouse)


def _write_kuairand(folder, with_videos=False, drop_column=None):
    folder.mkdir(exist_ok=True)
    log_columns = [c for c in LOG_COLUMNS if c != drop_column]
    rows = [
        # user, video, date, hourmin, time_ms, click, like, follow, comment, forward, hate,
        # long_view, play_ms, duration_ms, profile_stay, comment_stay, profile_enter, rand, tab
        [10, 100, 20220408, 1000, 1649412000000, 1, 1, 0, 0, 0, 0, 1, 9000, 10000, 0, 0, 0, 0, 1],
        [10, 101, 20220408, 1100, 1649415600000, 0, 0, 0, 0, 0, 0, 0, 0, 20000, 0, 0, 0, 0, 1],
        [11, 100, 20220409, 900, 1649494800000, 1, 0, 1, 0, 1, 0, 0, 30000, 10000, 0, 0, 0, 0, 2],
        [11, 102, 20220409, 905, 1649495100000, 1, 0, 0, 0, 0, 1, 0, 500, 0, 0, 0, 0, 0, 2],
    ]
    keep = [LOG_COLUMNS.index(c) for c in log_columns]
    lines = [",".join(log_columns)] + [",".join(str(r[i]) for i in keep) for r in rows]
    (folder / "log_standard_4_08_to_4_21_1k.csv").write_text("\n".join(lines) + "\n")
    user_rows = [
        [10, "high_active", 0, 0, 0, "0-10", "0-10", "0-5", "31-60", *range(18)],
        [12, "full_active", 0, 0, 1, "10-50", "10-100", "5-30", "730+", *range(18)],
    ]
    (folder / "user_features_1k.csv").write_text(
        ",".join(USER_COLUMNS) + "\n" + "\n".join(",".join(map(str, r)) for r in user_rows) + "\n"
    )
    if with_videos:
        (folder / "video_features_basic_1k.csv").write_text(
            "video_id,author_id,video_type,upload_dt,upload_type,visible_status,video_duration,"
            "server_width,server_height,music_id,music_type,tag\n"
            '100,7,NORMAL,2022-04-01,ShortImport,public,10000,720,1280,0,0,"28,11"\n'
            "101,7,AD,2022-04-05,ShortImport,public,20000,720,1280,0,0,9\n"
        )


def test_kuairand_logs_become_engagement(tmp_path, warehouse):
    _write_kuairand(tmp_path / "kr")
    summary = convert_kuairand(tmp_path / "kr", warehouse)
    assert summary["counts"] == {"users": 3, "stories": 3, "creators": 3, "events": 4, "days": 2}
    events = {(e["user_id"], e["story_id"]): e for e in warehouse.read_events().to_pylist()}
    liked = events[("10", "100")]
    assert liked["view"] and liked["long_view"] and liked["favorite"] and not liked["skip"]
    assert liked["watch_ratio"] == pytest.approx(0.9)
    assert liked["ts"] == 1649412000
    unwatched = events[("10", "101")]
    assert not unwatched["view"] and unwatched["skip"] and unwatched["watch_ratio"] == 0
    shared = events[("11", "100")]
    assert shared["share"] and shared["boost"] and shared["watch_ratio"] == pytest.approx(3.0)
    assert events[("11", "102")]["skip"]  # is_hate, even though it was clicked
    users = {r["user_id"]: r for r in warehouse.read_table("users").to_pylist()}
    assert users["10"]["user_active_degree"] == "high_active"
    assert users["10"]["account_created_ts"] == 1649412000 - 31 * 86_400
    assert users["11"]["user_active_degree"] is None  # in the log, not in the features file
    assert users["12"]["register_days_range"] == "730+"  # in the features file, no events
    stories = {r["story_id"]: r for r in warehouse.read_table("stories").to_pylist()}
    assert stories["101"]["duration_s"] == pytest.approx(20.0)
    assert stories["100"]["content_embedding"] == []


def test_kuairand_video_features_give_creators_and_tags(tmp_path, warehouse):
    _write_kuairand(tmp_path / "kr", with_videos=True)
    convert_kuairand(tmp_path / "kr", warehouse)
    stories = {r["story_id"]: r for r in warehouse.read_table("stories").to_pylist()}
    assert stories["100"]["creator_id"] == stories["101"]["creator_id"] == "7"
    assert stories["100"]["hashtags"] == ["tag_28", "tag_11"]
    assert stories["100"]["created_ts"] == 1648771200  # 2022-04-01
    assert stories["102"]["creator_id"] == "v102"  # in the log only
    assert {r["creator_id"] for r in warehouse.read_table("creators").to_pylist()} == {"7", "v102"}


def test_kuairand_errors_name_the_file(tmp_path, warehouse):
    with pytest.raises(SourceFileError, match=r"no file matches .*log_standard_\*\.csv"):
        convert_kuairand(tmp_path, warehouse)
    _write_kuairand(tmp_path / "kr", drop_column="play_time_ms")
    with pytest.raises(SourceFileError, match=r"log_standard_4_08_to_4_21_1k.csv lacks column\(s\) play_time_ms"):
        convert_kuairand(tmp_path / "kr", warehouse)
    _write_kuairand(tmp_path / "kr")
    (tmp_path / "kr" / "user_features_1k.csv").unlink()
    with pytest.raises(SourceFileError, match=r"user_features_\*\.csv"):
        convert_kuairand(tmp_path / "kr", warehouse)
