"""Arguments several commands share: how a version is named, `--wide`."""

from __future__ import annotations

import argparse

# How a version is named wherever one is asked for (ArtifactKind.resolve).
VERSION_HELP = (
    "its full name, a unique prefix of it (e.g. 20261123T18), or `previous` (the one published before "
    "the one LATEST names)"
)


def add_wide_flag(parser: argparse.ArgumentParser) -> None:
    """`--wide` after the command too (`ebr index list --wide`), beside `ebr --wide ...`.

    SUPPRESS as default: a sub-command's default would otherwise overwrite the `--wide`
    given before the command."""
    parser.add_argument(
        "--wide",
        action="store_true",
        default=argparse.SUPPRESS,
        help="tables at full width (default: cut to 120 columns)",
    )
