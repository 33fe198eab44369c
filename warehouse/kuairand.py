"""KuaiRand (Kuaishou short-video logs) into the warehouse tables.

Reads a KuaiRand folder (1K, Pure or 27K): every `log_standard_*.csv` (and, with
`include_random=True`, the randomly exposed `log_random_*.csv`), `user_features_*.csv`,
and, when present, `video_features_basic_*.csv`. The whole log is read into memory
(columnar, only the needed columns): KuaiRand-1K fits easily; the 27K logs need a
machine with memory to match.

Mapping:

| warehouse                 | from KuaiRand                                                   |
|---------------------------|-----------------------------------------------------------------|
| event.ts                  | time_ms / 1000                                                  |
| event.view                | is_click = 1 or play_time_ms > 0                                |
| event.long_view           | long_view                                                       |
| event.favorite            | is_like                                                         |
| event.share               | is_forward                                                      |
| event.boost               | is_follow (following the author: the strongest endorsement)    |
| event.skip                | is_hate = 1 or not viewed                                       |
| event.watch_ratio         | play_time_ms / duration_ms (0 when the duration is 0), <= 10    |
| users.country / language  | "CN" / "zh" (Kuaishou's users; not in the data)                 |
| users.age_bucket          | "unknown" (not in the data)                                     |
| users.account_created_ts  | first event - lower bound of register_days_range                |
| users (extra columns)     | every other column of user_features, as given                   |
| stories                   | videos of video_features_basic: author_id -> creator_id,        |
|                           | upload_dt -> created_ts, video_duration (ms) -> duration_s,     |
|                           | tag -> hashtags ("tag_<n>"), video_type -> description;         |
|                           | without that file: each video is its own creator, first seen    |
|                           | -> created_ts, duration from the log's duration_ms, no tags     |
| stories.content_embedding | empty (KuaiRand has no content embedding)                       |
| creators                  | authors; created_ts = their first story; follower_count 0       |
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from warehouse.source_files import SourceFileError, min_by_key, read_delimited, require_glob
from warehouse.tables import SECONDS_PER_DAY, Warehouse

LOG_COLUMNS = [
    "user_id",
    "video_id",
    "date",
    "hourmin",
    "time_ms",
    "is_click",
    "is_like",
    "is_follow",
    "is_comment",
    "is_forward",
    "is_hate",
    "long_view",
    "play_time_ms",
    "duration_ms",
    "profile_stay_time",
    "comment_stay_time",
    "is_profile_enter",
    "is_rand",
    "tab",
]
USER_COLUMNS = [
    "user_id",
    "user_active_degree",
    "is_lowactive_period",
    "is_live_streamer",
    "is_video_author",
    "follow_user_num_range",
    "fans_user_num_range",
    "friend_user_num_range",
    "register_days_range",
    *[f"onehot_feat{i}" for i in range(18)],
]
VIDEO_COLUMNS = ["video_id", "author_id", "video_type", "upload_dt", "video_duration", "tag"]
_INT_LOG_COLUMNS = [c for c in LOG_COLUMNS if c not in ("tab",)]


def convert_kuairand(source: Path, warehouse: Warehouse, include_random: bool = False) -> dict[str, Any]:
    """Converts the KuaiRand folder `source` into `warehouse`; returns a summary."""
    source = Path(source)
    log_files = require_glob(source, "log_standard_*.csv", "KuaiRand standard logs")
    if include_random:
        log_files += require_glob(source, "log_random_*.csv", "KuaiRand random-exposure logs")
    logs = pa.concat_tables(
        [
            read_delimited(
                f, LOG_COLUMNS, delimiter=",", header=True, types={c: pa.int64() for c in _INT_LOG_COLUMNS}
            ).select(LOG_COLUMNS)
            for f in log_files
        ]
    )
    user_file = require_glob(source, "user_features_*.csv", "KuaiRand user features")[0]
    user_features = read_delimited(user_file, USER_COLUMNS, delimiter=",", header=True, types={"user_id": pa.int64()})
    video_files = sorted(source.glob("video_features_basic_*.csv"))
    videos = (
        read_delimited(
            video_files[0],
            VIDEO_COLUMNS,
            delimiter=",",
            header=True,
            types={"video_id": pa.int64(), "author_id": pa.int64(), "tag": pa.string(), "upload_dt": pa.string()},
        )
        if video_files
        else None
    )

    ts = (logs["time_ms"].to_numpy() // 1000).astype(np.int64)
    play = logs["play_time_ms"].to_numpy().astype(np.float64)
    duration = logs["duration_ms"].to_numpy().astype(np.float64)
    flag = {
        c: logs[c].to_numpy() == 1 for c in ("is_click", "is_like", "is_follow", "is_forward", "is_hate", "long_view")
    }
    view = flag["is_click"] | (play > 0)
    watch_ratio = np.clip(np.divide(play, duration, out=np.zeros_like(play), where=duration > 0), 0, 10)
    user_ids = pc.cast(logs["user_id"], pa.string())
    video_ids = pc.cast(logs["video_id"], pa.string())

    stories, creators = _stories_and_creators(logs, ts, videos, video_files[0] if video_files else None)
    users = _users(user_features, logs["user_id"].to_numpy(), ts)

    warehouse.clear()
    warehouse.write_table("users", users)
    warehouse.write_table("stories", stories)
    warehouse.write_table("creators", creators)
    days = warehouse.write_events(
        pa.table(
            {
                "user_id": user_ids,
                "story_id": video_ids,
                "ts": pa.array(ts),
                "view": view,
                "long_view": flag["long_view"],
                "boost": flag["is_follow"],
                "favorite": flag["is_like"],
                "share": flag["is_forward"],
                "skip": flag["is_hate"] | ~view,
                "watch_ratio": watch_ratio.astype(np.float32),
            }
        )
    )
    summary = {
        "source": "kuairand",
        "path": str(source),
        "files": [f.name for f in log_files] + [user_file.name] + [f.name for f in video_files[:1]],
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {
            "users": len(users),
            "stories": len(stories),
            "creators": len(creators),
            "events": len(ts),
            "days": len(days),
        },
        "mapping": "see warehouse/kuairand.py",
    }
    warehouse.write_json("_SOURCE.json", summary)
    return summary


def _users(features: pa.Table, log_users: np.ndarray, ts: np.ndarray) -> pa.Table:
    first_event = min_by_key(log_users, ts)
    ids = features["user_id"].to_numpy()
    all_ids = np.union1d(ids, log_users)
    row_of = {u: i for i, u in enumerate(ids.tolist())}
    register = features["register_days_range"].to_pylist()
    default_ts = int(ts.min()) if len(ts) else 0
    created = []
    for u in all_ids.tolist():
        days = _range_lower_bound(register[row_of[u]]) if u in row_of else 0
        created.append(max(first_event.get(u, default_ts) - days * SECONDS_PER_DAY, 0))
    n = len(all_ids)
    table = pa.table(
        {
            "user_id": pc.cast(pa.array(all_ids), pa.string()),
            "country": pa.array(["CN"] * n),
            "language": pa.array(["zh"] * n),
            "age_bucket": pa.array(["unknown"] * n),
            "account_created_ts": pa.array(created, pa.int64()),
        }
    )
    take = pa.array([row_of.get(u) for u in all_ids.tolist()], pa.int64())  # null where unknown
    for column in USER_COLUMNS[1:]:
        table = table.append_column(column, pc.cast(features[column], pa.string()).take(take))
    return table


def _stories_and_creators(logs: pa.Table, ts: np.ndarray, videos: pa.Table | None, video_file: Path | None):
    log_videos = logs["video_id"].to_numpy()
    first_seen = min_by_key(log_videos, ts)
    if videos is not None:
        ids = np.union1d(videos["video_id"].to_numpy(), log_videos)
        row_of = {v: i for i, v in enumerate(videos["video_id"].to_pylist())}
        authors = videos["author_id"].to_pylist()
        uploads = videos["upload_dt"].to_pylist()
        durations = videos["video_duration"].to_pylist()
        tags = videos["tag"].to_pylist()
        types = videos["video_type"].to_pylist()
        rows = []
        for v in ids.tolist():
            i = row_of.get(v)
            if i is None:  # in the log but not in the video file
                rows.append((f"v{v}", first_seen[v], None, [], ""))
                continue
            rows.append(
                (
                    str(authors[i]),
                    _parse_upload(uploads[i], video_file) or first_seen.get(v, int(ts.min())),
                    float(durations[i]) / 1000.0 if durations[i] not in (None, "") else None,
                    [f"tag_{t}" for t in re.split(r"[,;\s]+", tags[i] or "") if t],
                    str(types[i] or ""),
                )
            )
        creator, created, duration, hashtags, description = (list(c) for c in zip(*rows, strict=True))
    else:
        ids = np.unique(log_videos)
        median_duration = _median_by_key(log_videos, logs["duration_ms"].to_numpy())
        creator = [f"v{v}" for v in ids.tolist()]
        created = [first_seen[v] for v in ids.tolist()]
        duration = [median_duration[v] / 1000.0 for v in ids.tolist()]
        hashtags = [[] for _ in ids]
        description = [""] * len(ids)
    n = len(ids)
    stories = pa.table(
        {
            "story_id": pc.cast(pa.array(ids), pa.string()),
            "creator_id": pa.array(creator),
            "created_ts": pa.array(created, pa.int64()),
            "country": pa.array(["CN"] * n),
            "language": pa.array(["zh"] * n),
            "duration_s": pa.array(duration, pa.float32()),
            "hashtags": pa.array(hashtags, pa.list_(pa.string())),
            "description": pa.array(description),
            "content_embedding": pa.array([[] for _ in range(n)], pa.list_(pa.float32())),
        }
    )
    creator_first = {}
    for c, t in zip(creator, created, strict=True):
        creator_first[c] = min(t, creator_first.get(c, t))
    m = len(creator_first)
    creators = pa.table(
        {
            "creator_id": pa.array(list(creator_first)),
            "country": pa.array(["CN"] * m),
            "language": pa.array(["zh"] * m),
            "created_ts": pa.array(list(creator_first.values()), pa.int64()),
            "follower_count": pa.array(np.zeros(m, dtype=np.int64)),
        }
    )
    return stories, creators


def _median_by_key(keys: np.ndarray, values: np.ndarray) -> dict[int, float]:
    order = np.lexsort((values, keys))
    k, v = keys[order], values[order]
    starts = np.flatnonzero(np.concatenate([[True], k[1:] != k[:-1]]))
    ends = np.append(starts[1:], len(k))
    return {int(k[s]): float(np.median(v[s:e])) for s, e in zip(starts, ends, strict=True)}


def _range_lower_bound(text: str | None) -> int:
    """'31-60' -> 31, '730+' -> 730, anything else -> 0."""
    match = re.match(r"^\s*(\d+)", text or "")
    return int(match.group(1)) if match else 0


def _parse_upload(text: str | None, where: Path | None) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.strptime(text.strip(), "%Y-%m-%d").replace(tzinfo=UTC).timestamp())
    except ValueError:
        raise SourceFileError(f"{where}: upload_dt {text!r} is not a YYYY-MM-DD date") from None
