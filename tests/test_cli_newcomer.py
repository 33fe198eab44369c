"""What a newcomer meets after `make demo` (#16): the CLI finds the demo's artifacts or says
where they are, reads without writing, names versions by prefix or `previous`, prints
tables that fit 120 columns (`--wide` for all), reports errors as one short line, keeps
TensorFlow's start-up noise out of the terminal, and `ebr query` parses as argparse users
expect. Real stores on tmp_path, the real console script where the process matters."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from artifacts import ArtifactStore
from cli.main import build_parser, main
from cli.output import WIDTH
from cli.quiet import is_native_noise
from tests.polling import wait_for
from tests.test_serving import searcher, start_service, world  # noqa: F401 - fixtures

INDEX_VERSIONS = (
    "20261015T000000Z-ebr_story_index-scheduled__2026-10-15T00-00-00-00-00",
    "20261015T003000Z-ebr_story_index-scheduled__2026-10-15T00-30-00-00-00",
    "20261016T000000Z-ebr_story_index-manual__2026-12-01T10-47-08.959219+00-00",
)
MODEL = "20261014T000000Z-ebr_train-scheduled__2026-10-14T00-00-00-00-00"
EBR = str(Path(sys.executable).with_name("ebr"))


def populate(root: str) -> None:
    """Three published story index versions with DAG-style (70-character) names."""
    kind = ArtifactStore.open(root).kind("indexes/stories")
    for name in INDEX_VERSIONS:
        with kind.new_version(
            name, parents={"model_version": MODEL, "embedding_snapshot": name}, params={"mode": "full"}
        ) as v:
            v.add_bytes("index.hnsw", name.encode())
        kind.publish(name, reason=f"index of embeddings/stories/{name} (full)", run_id=f"scheduled__{name[:16]}")


def ebr(capsys, root: str, *args: str) -> tuple[int, str, str]:
    code = main(["--root", root, *args])
    out, err = capsys.readouterr()
    return code, out, err


def tree(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under `folder` with its size and mtime: what a write would change."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.rglob("*"))}


READ_ONLY = [
    ["artifacts", "list"],
    ["artifacts", "list", "indexes/stories"],
    ["artifacts", "history", "indexes/stories"],
    ["artifacts", "show", "indexes/stories"],
    ["artifacts", "verify", "indexes/stories"],
    ["index", "list"],
    ["index", "list", "--collection", "users"],
    ["index", "show"],
    ["data", "show"],
    ["config", "show"],
]


@pytest.mark.parametrize("state", ["missing root", "empty root", "populated root"])
def test_read_only_commands_write_nothing(tmp_path, capsys, state):
    folder = tmp_path / "root"
    if state == "empty root":
        folder.mkdir()
    elif state == "populated root":
        populate(f"file://{folder}")
    before = tree(folder)
    for args in READ_ONLY:
        ebr(capsys, f"file://{folder}", *args)
        assert tree(folder) == before, f"`ebr {' '.join(args)}` changed {folder}"
    assert folder.exists() == (state != "missing root")


def test_an_empty_root_beside_the_demo_s_says_where_the_demo_s_artifacts_are(tmp_path, capsys):
    empty, demo = f"file://{tmp_path}/var/ebr", f"file://{tmp_path}/var/demo"
    code, out, err = ebr(capsys, empty, "artifacts", "list")
    assert code == 0 and "no artifacts under" in out and "hint" not in err  # no demo either: nothing to point at
    populate(demo)
    hint = f"hint: {empty} is empty; `make demo` wrote to {demo}: pass --root {demo}"
    for args in (["artifacts", "list"], ["index", "list"], ["artifacts", "history", "indexes/stories"]):
        code, out, err = ebr(capsys, empty, *args)
        assert code == 0 and err.startswith(hint) and "make shell" in err, args
    code, out, err = ebr(capsys, empty, "data", "show")
    assert code == 1 and err.splitlines()[0].startswith("error: ") and err.splitlines()[1].startswith(hint)
    code, out, err = ebr(capsys, demo, "artifacts", "list")
    assert code == 0 and "indexes/stories" in out and err == ""


def test_tables_fit_120_columns_and_wide_shows_every_name_whole(tmp_path, capsys):
    root = f"file://{tmp_path}/root"
    populate(root)
    for args in (
        ["index", "list"],
        ["artifacts", "list"],
        ["artifacts", "list", "indexes/stories"],
        ["artifacts", "history", "indexes/stories"],
    ):
        code, out, _ = ebr(capsys, root, *args)
        assert code == 0 and max(len(line) for line in out.splitlines()) <= WIDTH, (args, out)
        for position in (["--wide", *args], [*args, "--wide"]):
            code, out, _ = ebr(capsys, root, *position)
            assert code == 0 and INDEX_VERSIONS[2] in out and "…" not in out, position
    code, out, _ = ebr(capsys, root, "index", "list")
    assert "* 20261016T000000Z-ebr_st" in out and "--wide shows all" in out
    cut = next(line for line in out.splitlines() if line.startswith("* ")).split()[1].rstrip("…")
    code, out, _ = ebr(capsys, root, "index", "show", cut)  # what a cut table shows still names the version
    assert code == 0 and f'"version": "{INDEX_VERSIONS[2]}"' in out


def test_versions_are_named_by_unique_prefix_or_previous_and_mistakes_are_one_short_line(tmp_path, capsys):
    root = f"file://{tmp_path}/root"
    populate(root)
    code, out, _ = ebr(capsys, root, "artifacts", "show", "indexes/stories", "20261015T0030")
    assert code == 0 and INDEX_VERSIONS[1] in out
    code, out, _ = ebr(
        capsys, root, "index", "rollback", "--collection", "stories", "--to", "previous", "--reason", "bad"
    )
    assert code == 0 and f"from {INDEX_VERSIONS[2]} to {INDEX_VERSIONS[1]}" in out
    code, out, _ = ebr(
        capsys, root, "artifacts", "rollback", "indexes/stories", "--to", "previous", "--reason", "worse"
    )
    assert code == 0 and f"to {INDEX_VERSIONS[0]}" in out
    code, out, _ = ebr(capsys, root, "artifacts", "verify", "indexes/stories", "20261016")
    assert code == 0 and "all checksums match" in out

    for args, message in (
        (["artifacts", "show", "indexes/stories", "2026101"], "'2026101' matches 3 versions"),
        (["index", "rollback", "--collection", "stories", "--to", "2026", "--reason", "x"], "matches 3 versions"),
        (["index", "rollback", "--collection", "stories", "--to", "previous", "--reason", "x"], "no previous one"),
        (
            ["artifacts", "rollback", "indexes/stories", "--to", "20261231", "--reason", "x"],
            "newest complete: " + INDEX_VERSIONS[2],
        ),
        (["index", "show", "nope"], "has no version 'nope'"),
    ):
        code, out, err = ebr(capsys, root, *args)
        assert code == 1 and err.startswith("error: ") and message in err, (args, err)
        assert len(err.splitlines()) == 1 and len(err) < 320 and "Traceback" not in err, err
    newest_first = ebr(capsys, root, "artifacts", "show", "indexes/stories", "2026101")[2]
    assert (
        newest_first.index(INDEX_VERSIONS[2])
        < newest_first.index(INDEX_VERSIONS[1])
        < newest_first.index(INDEX_VERSIONS[0])
    )


def test_query_user_takes_comma_lists_of_exclusions_and_never_swallows_the_user_id():
    parser = build_parser()
    args = parser.parse_args(["query", "user", "--exclude", "a,b", "u1"])
    assert (args.user_id, args.exclude) == ("u1", ["a", "b"])
    args = parser.parse_args(["query", "user", "u1", "--exclude", "a", "--exclude", "b,c", "-k", "3"])
    assert (args.user_id, args.exclude, args.k) == ("u1", ["a", "b", "c"], 3)
    assert parser.parse_args(["query", "user", "u1"]).exclude == []


def test_query_for_similar_users_leaves_the_user_out_and_exclusions_reach_the_service(world, start_service, capsys):
    world.users("u1", "m1", seed=1)
    world.index("stories", "s1", "m1", seed=2)
    assert main(["--root", world.root, "index", "build", "--collection", "users"]) == 0  # from the user embeddings
    capsys.readouterr()
    _, server, client = start_service()
    wait_for(
        lambda: client.get("/readyz").status_code == 200 and "indexes/users" in client.get("/v1/versions").text,
        what="readiness with the users index",
    )
    query = ["--root", world.root, "query", "--url", server.url, "user"]

    raw = client.post("/v1/retrieve/users", json={"user_id": "u3", "k": 3}).json()["items"]
    assert raw[0]["id"] == "u3"  # a user is its own nearest neighbour: the API returns what it is asked
    assert main([*query, "u3", "-k", "3", "--collection", "users"]) == 0
    ranked = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert len(ranked) == 3 and "u3" not in ranked

    assert main([*query, "u3", "-k", "2"]) == 0
    top = [line.split()[1] for line in capsys.readouterr().out.splitlines() if line[:1].isdigit()]
    assert main([*query, "--exclude", ",".join(top), "u3", "-k", "2"]) == 0
    out = capsys.readouterr().out
    assert "for user u3" in out and not set(top) & {line.split()[1] for line in out.splitlines() if line[:1].isdigit()}


def test_the_native_noise_filter_drops_tensorflow_s_lines_and_nothing_else():
    noise = [
        b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n",
        b"I0000 00:00:1796125644.517759   20233 port.cc:153] oneDNN custom operations are on.\n",
        b"I0000 00:00:1796125644.518816   20233 cudart_stub.cc:31] Could not find cuda drivers on your machine.\n",
        b"E0000 00:00:1796125647.664176   20233 cuda_platform.cc:52] failed call to cuInit: INTERNAL\n",
        b"To enable the following instructions: AVX2 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.\n",
    ]
    kept = [
        b"error: the warehouse is missing\n",
        b"F0000 00:00:1796125647.664176   20233 x.cc:1] fatal\n",
        b"\r 50%|#####     | 5/10\r",
        b"Traceback (most recent call last):\n",
    ]
    assert all(is_native_noise(line) for line in noise)
    assert not any(is_native_noise(line) for line in kept)


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "TF_CPP_MIN_LOG_LEVEL")}
    return {**env, "EBR_ROOT": f"file://{tmp_path}/empty"}


@pytest.mark.slow
def test_the_console_script_loads_tensorflow_with_keras_2_and_keeps_its_noise_out(tmp_path):
    """`ebr train` outside make: TF_USE_LEGACY_KERAS is set by the entry point (before, TFRS
    refused Keras 3 with an ImportError traceback), and TensorFlow's C++ start-up lines are
    gone from stderr unless -v. `train` imports TensorFlow and TFRS before it finds that
    the warehouse is missing, so the run is short and ends in one error line."""
    env = _clean_env(tmp_path)
    train = ["train", "--workdir", str(tmp_path / "work")]
    quiet = subprocess.run([EBR, *train], capture_output=True, text=True, env=env, timeout=600)
    assert quiet.returncode == 1, quiet.stderr
    assert quiet.stderr.startswith("error: ") and "ebr data generate" in quiet.stderr, quiet.stderr
    assert "Traceback" not in quiet.stderr and "Keras" not in quiet.stderr
    assert not [line for line in quiet.stderr.splitlines() if is_native_noise(line.encode())], quiet.stderr

    plain = subprocess.run(
        [sys.executable, "-c", "import tensorflow"], capture_output=True, text=True, env=env, timeout=600
    )
    printed = [line for line in plain.stderr.splitlines() if is_native_noise(line.encode())]
    verbose = subprocess.run([EBR, "-v", *train], capture_output=True, text=True, env=env, timeout=600)
    assert verbose.returncode == 1 and "Traceback" not in verbose.stderr
    brought_back = [line for line in verbose.stderr.splitlines() if is_native_noise(line.encode())]
    assert len(brought_back) >= len(printed), verbose.stderr  # whatever TensorFlow prints on this machine


def test_the_training_table_of_the_model_and_four_baselines_fits_120_columns_unless_wide():
    from cli.output import table
    from cli.train_commands import metric_cell

    metrics = {"recall@10": 0.2437, "recall@10_lo": 0.2009, "recall@10_hi": 0.2887, "coverage@100": 0.8756}
    columns = ["model", "popularity", "recent_popularity", "als", "ease"]  # what `ebr train` printed here
    for wide, cell in ((False, "0.244 [.201,.289]"), (True, "0.2437 [0.2009, 0.2887]")):
        rows = [
            (name, *(metric_cell(metrics, "recall@10", wide) for _ in columns)) for name in ("catalogue_recall@100",)
        ]
        assert rows[0][1] == cell
        widest = max(len(line) for line in table(["metric", *columns], rows, wide=wide).splitlines())
        assert (widest <= WIDTH) is not wide, widest
    assert metric_cell(metrics, "coverage@100", False) == "0.876" and metric_cell(metrics, "ndcg@10", False) == "-"
