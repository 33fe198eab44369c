"""Where the artifacts are: a hint when the root is empty and `make demo`'s folder is not.

The default root is `var/ebr`, and `make demo` writes to `var/demo` beside it (a fresh
world each run, kept apart from the one a user builds with `ebr data generate`). A
newcomer who runs `ebr artifacts list` after the demo would otherwise just read that
there is nothing, so every command that finds nothing says where the demo's artifacts
are and how to point at them. Only folders are looked at (no file is opened or written).
"""

from __future__ import annotations

import sys
from pathlib import Path

from config import EbrConfig

DEMO_FOLDER = "demo"  # the Makefile's DEMO_ROOT: var/demo, beside the default var/ebr
TOP_FOLDERS = ("warehouse", "models", "embeddings", "indexes")


def _holds_artifacts(folder: Path) -> bool:
    try:
        return any(child.is_dir() and any(child.iterdir()) for child in (folder / name for name in TOP_FOLDERS))
    except OSError:
        return False


def demo_root_hint(cfg: EbrConfig) -> str | None:
    """ "hint: ..." when the (local) root holds no artifacts but `demo/` beside it does, else None."""
    if not cfg.root.startswith("file://"):
        return None
    root = Path(cfg.root.removeprefix("file://"))
    demo = root.parent / DEMO_FOLDER
    if root == demo or _holds_artifacts(root) or not _holds_artifacts(demo):
        return None
    uri = f"file://{demo}"
    return (
        f"hint: {cfg.root} is empty; `make demo` wrote to {uri}: pass --root {uri}, "
        f"or `export EBR_ROOT={uri}`, or run `make shell`"
    )


def print_demo_root_hint(cfg: EbrConfig) -> None:
    hint = demo_root_hint(cfg)
    if hint:
        print(hint, file=sys.stderr)
