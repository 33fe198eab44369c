"""`ebr report`: one self-contained HTML page from the latest benchmark run.

A thin launcher of `benchmarks.report.write_report`. The benchmarks are a package of
the repository checkout, not of the installed distribution (a wheel has none), so the
command imports it from the checkout this package was installed from (`pip install -e`,
which `make` does) and says so plainly where there is no such checkout. Nothing in
benchmarks/ imports the CLI: the dependency goes one way.
"""

from __future__ import annotations

import importlib
import sys
from argparse import Namespace
from pathlib import Path

from config import EbrConfig

CHECKOUT = Path(__file__).resolve().parents[1]
BENCHMARKS_DIR = CHECKOUT / "benchmarks"
# var/, not beside the results: benchmarks/report.html is the committed page of `make bench`.
DEFAULT_OUT = CHECKOUT / "var" / "report.html"


class ReportError(Exception):
    """No report can be rendered: results or the report module are missing or unreadable."""


def add_parser(commands) -> None:
    report = commands.add_parser(
        "report",
        help="render the latest benchmark results as one HTML page (tables, plots, targets)",
        description="Reads the results `make bench` wrote (benchmarks/results.json), draws the plots "
        "and writes one HTML file with them embedded: the targets met and not met beside the "
        "plots, then the figures, the machine and the commit the run came from.",
    )
    report.add_argument(
        "--results",
        type=Path,
        default=BENCHMARKS_DIR / "results.json",
        metavar="FILE",
        help="results of benchmarks/run_all.py (default: %(default)s)",
    )
    report.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        metavar="FILE.html",
        help="default: %(default)s (benchmarks/report.html is the committed one `make bench` writes)",
    )
    report.set_defaults(handler=render_report, action="render")


def benchmark_report_module():
    """`benchmarks.report` of the checkout this package comes from; ReportError without one."""
    if not (BENCHMARKS_DIR / "report.py").is_file():
        raise ReportError(
            f"{BENCHMARKS_DIR / 'report.py'} is missing: `ebr report` needs the repository checkout "
            "(its editable install, `make venv`), not an installed wheel; in a checkout, "
            "`python benchmarks/report.py` renders the same page"
        )
    if str(CHECKOUT) not in sys.path:
        # Appended, so nothing already on the path is shadowed; the checkout's other packages
        # are the ones the editable install maps anyway.
        sys.path.append(str(CHECKOUT))
    return importlib.import_module("benchmarks.report")


def render_report(cfg: EbrConfig, args: Namespace) -> int:
    report = benchmark_report_module()
    try:
        out = report.write_report(args.results, args.out)
    except (FileNotFoundError, ValueError) as exc:
        raise ReportError(str(exc)) from exc
    results = report.load_results(args.results)
    met = sum(1 for t in results["targets"] if t["met"] is True)
    print(
        f"{out}: {len(results['figures'])} figures, {met} of {len(results['targets'])} targets met "
        f"({results.get('mode', '?')} run of {results.get('started_at', '?')})"
    )
    return 0


EXPECTED_ERRORS = (ReportError,)
