"""MovieLens 100K and 1M into the warehouse tables.

The licence of MovieLens forbids redistribution: nothing here ships the data; point the
converter at a folder you have (`ebr data convert movielens --source DIR`).

Mapping (MovieLens has ratings of movies, the warehouse has impressions of stories):

| warehouse                  | from MovieLens                                            |
|----------------------------|-----------------------------------------------------------|
| story                      | movie (story_id = movie id)                               |
| creator                    | none in the data: each movie is its own creator ("c<id>") |
| stories.hashtags           | genres, lower case ("sci-fi", "childrens")                |
| stories.description        | title                                                     |
| stories.content_embedding  | genre multi-hot, L2-normalised                            |
| stories.created_ts         | release date (100K) / 1 January of the title's year (1M)  |
| stories.duration_s         | null (unknown)                                            |
| users.country / language   | "US" / "en" (MovieLens users are US residents)            |
| users.age_bucket           | MovieLens 1M's age groups (<18, 18-24, ..., 56+)          |
| users.account_created_ts   | the user's first rating (the account date is not given)   |
| users (extra columns)      | gender, occupation, zip_code                              |
| event                      | one rating: view = true                                   |
| event.long_view            | rating >= 4                                               |
| event.favorite             | rating == 5                                               |
| event.skip                 | rating <= 2                                               |
| event.boost, event.share   | false (no such signal)                                    |
| event.watch_ratio          | rating / 5                                                |
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from warehouse.source_files import SourceFileError, min_by_key, read_delimited, require_file
from warehouse.tables import Warehouse

GENRES_100K = (
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
)
GENRES_1M = GENRES_100K[1:]
AGE_GROUPS_1M = {1: "<18", 18: "18-24", 25: "25-34", 35: "35-44", 45: "45-49", 50: "50-55", 56: "56+"}


def detect_format(source: Path) -> str:
    if (source / "u.data").is_file():
        return "100k"
    if (source / "ratings.dat").is_file():
        return "1m"
    raise SourceFileError(
        f"{source} holds neither MovieLens 100K (u.data, u.user, u.item) "
        "nor MovieLens 1M (ratings.dat, users.dat, movies.dat)"
    )


def convert_movielens(source: Path, warehouse: Warehouse) -> dict[str, Any]:
    """Converts the MovieLens folder `source` (100K or 1M) into `warehouse`; returns a summary."""
    source = Path(source)
    fmt = detect_format(source)
    ratings, users, movies = _read_100k(source) if fmt == "100k" else _read_1m(source)
    genres = GENRES_100K if fmt == "100k" else GENRES_1M
    return write_ratings_world(ratings, users, movies, genres, warehouse, f"movielens-{fmt}", source)


def _read_ratings(path: Path, delimiter: str) -> pa.Table:
    """user, movie, rating, ts: the same four integer columns in both formats."""
    columns = ["user", "movie", "rating", "ts"]
    return read_delimited(path, columns, delimiter=delimiter, header=False, types={c: pa.int64() for c in columns})


def _read_100k(source: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    ratings = _read_ratings(require_file(source, "u.data", "MovieLens 100K ratings"), "\t")
    raw_users = read_delimited(
        require_file(source, "u.user", "MovieLens 100K users"),
        ["user", "age", "gender", "occupation", "zip_code"],
        delimiter="|",
        header=False,
        types={"user": pa.int64(), "age": pa.int64(), "zip_code": pa.string()},
    )
    users = raw_users.set_column(1, "age_bucket", pa.array([_age_bucket(a) for a in raw_users["age"].to_pylist()]))
    item_columns = ["movie", "title", "release", "video_release", "url", *[f"g{i}" for i in range(len(GENRES_100K))]]
    items = read_delimited(
        require_file(source, "u.item", "MovieLens 100K movies"),
        item_columns,
        delimiter="|",
        header=False,
        encoding="latin-1",
        types={"movie": pa.int64(), **{f"g{i}": pa.int8() for i in range(len(GENRES_100K))}},
    )
    flags = np.column_stack([items[f"g{i}"].to_numpy() for i in range(len(GENRES_100K))]).astype(bool)
    released = [_parse_release(text) for text in items["release"].to_pylist()]
    movies = pa.table(
        {
            "movie": items["movie"],
            "title": items["title"],
            "released_ts": pa.array(released, pa.int64()),
            "genres": [list(np.array(GENRES_100K)[row]) for row in flags],
        }
    )
    return ratings, users, movies


def _read_1m(source: Path) -> tuple[pa.Table, pa.Table, pa.Table]:
    ratings = _read_ratings(require_file(source, "ratings.dat", "MovieLens 1M ratings"), "::")
    raw_users = read_delimited(
        require_file(source, "users.dat", "MovieLens 1M users"),
        ["user", "gender", "age", "occupation", "zip_code"],
        delimiter="::",
        header=False,
        types={"user": pa.int64(), "age": pa.int64()},
    )
    unknown_ages = set(raw_users["age"].to_pylist()) - set(AGE_GROUPS_1M)
    if unknown_ages:
        raise SourceFileError(f"{source / 'users.dat'}: unknown age code(s) {sorted(unknown_ages)}")
    users = pa.table(
        {
            "user": raw_users["user"],
            "age_bucket": [AGE_GROUPS_1M[a] for a in raw_users["age"].to_pylist()],
            "gender": raw_users["gender"],
            "occupation": raw_users["occupation"],
            "zip_code": raw_users["zip_code"],
        }
    )
    raw_movies = read_delimited(
        require_file(source, "movies.dat", "MovieLens 1M movies"),
        ["movie", "title", "genres"],
        delimiter="::",
        header=False,
        encoding="latin-1",
        types={"movie": pa.int64()},
    )
    years = [re.search(r"\((\d{4})\)\s*$", t) for t in raw_movies["title"].to_pylist()]
    movies = pa.table(
        {
            "movie": raw_movies["movie"],
            "title": raw_movies["title"],
            "released_ts": [int(datetime(int(m.group(1)), 1, 1, tzinfo=UTC).timestamp()) if m else None for m in years],
            "genres": [g.split("|") if g else [] for g in raw_movies["genres"].to_pylist()],
        }
    )
    bad = sorted({g for gs in movies["genres"].to_pylist() for g in gs} - set(GENRES_1M))
    if bad:
        raise SourceFileError(f"{source / 'movies.dat'}: unknown genre(s) {bad}")
    return ratings, users, movies


def write_ratings_world(
    ratings: pa.Table,
    users: pa.Table,
    movies: pa.Table,
    genres: tuple[str, ...],
    warehouse: Warehouse,
    name: str,
    source: Path,
) -> dict[str, Any]:
    """Writes the four tables from normalised MovieLens-like inputs (see the module table)."""
    rating = ratings["rating"].to_numpy()
    if rating.min() < 1 or rating.max() > 5:
        raise SourceFileError(f"{source}: ratings must be 1..5, found {rating.min()}..{rating.max()}")
    ts = ratings["ts"].to_numpy()
    user_str = pc.cast(ratings["user"], pa.string())
    movie_str = pc.cast(ratings["movie"], pa.string())

    first_rating = min_by_key(ratings["user"].to_numpy(), ts)
    first_seen = min_by_key(ratings["movie"].to_numpy(), ts)
    multi_hot = np.array([[g in row for g in genres] for row in movies["genres"].to_pylist()], dtype=np.float32)
    norms = np.linalg.norm(multi_hot, axis=1, keepdims=True)
    content = multi_hot / np.where(norms > 0, norms, 1.0)
    movie_ids = movies["movie"].to_numpy()
    created = np.array(
        [
            released if released is not None else first_seen.get(m, int(ts.min()))
            for m, released in zip(movie_ids, movies["released_ts"].to_pylist(), strict=True)
        ],
        dtype=np.int64,
    )
    story_ids = pc.cast(movies["movie"], pa.string())
    creator_ids = pc.binary_join_element_wise("c", story_ids, "")
    n_movies, n_users = len(movies), len(users)

    warehouse.clear()
    warehouse.write_table(
        "users",
        pa.table(
            {
                "user_id": pc.cast(users["user"], pa.string()),
                "country": pa.array(["US"] * n_users),
                "language": pa.array(["en"] * n_users),
                "age_bucket": users["age_bucket"],
                "account_created_ts": pa.array(
                    [first_rating.get(u, int(ts.min())) for u in users["user"].to_pylist()], pa.int64()
                ),
                "gender": users["gender"],
                "occupation": users["occupation"],
                "zip_code": users["zip_code"],
            }
        ),
    )
    warehouse.write_table(
        "stories",
        pa.table(
            {
                "story_id": story_ids,
                "creator_id": creator_ids,
                "created_ts": pa.array(created),
                "country": pa.array(["US"] * n_movies),
                "language": pa.array(["en"] * n_movies),
                "duration_s": pa.nulls(n_movies, pa.float32()),
                "hashtags": [[_hashtag(g) for g in row] for row in movies["genres"].to_pylist()],
                "description": movies["title"],
                "content_embedding": pa.array(list(content), pa.list_(pa.float32())),
            }
        ),
    )
    warehouse.write_table(
        "creators",
        pa.table(
            {
                "creator_id": creator_ids,
                "country": pa.array(["US"] * n_movies),
                "language": pa.array(["en"] * n_movies),
                "created_ts": pa.array(created),
                "follower_count": pa.array(np.zeros(n_movies, dtype=np.int64)),
            }
        ),
    )
    falses = np.zeros(len(rating), dtype=bool)
    days = warehouse.write_events(
        pa.table(
            {
                "user_id": user_str,
                "story_id": movie_str,
                "ts": ratings["ts"],
                "view": np.ones(len(rating), dtype=bool),
                "long_view": rating >= 4,
                "boost": falses,
                "favorite": rating == 5,
                "share": falses,
                "skip": rating <= 2,
                "watch_ratio": (rating / 5.0).astype(np.float32),
            }
        )
    )
    summary = {
        "source": name,
        "path": str(source),
        "converted_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "counts": {
            "users": n_users,
            "stories": n_movies,
            "creators": n_movies,
            "events": len(rating),
            "days": len(days),
        },
        "mapping": "see warehouse/movielens.py",
    }
    warehouse.write_json("_SOURCE.json", summary)
    return summary


def _age_bucket(age: int) -> str:
    for upper, bucket in ((18, "<18"), (25, "18-24"), (35, "25-34"), (45, "35-44"), (50, "45-49"), (56, "50-55")):
        if age < upper:
            return bucket
    return "56+"


def _parse_release(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return int(datetime.strptime(text, "%d-%b-%Y").replace(tzinfo=UTC).timestamp())
    except ValueError:
        return None


def _hashtag(genre: str) -> str:
    return re.sub(r"[^a-z0-9-]", "", genre.lower())
