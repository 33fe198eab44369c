"""`ebr report`: one self-contained HTML page from the latest benchmark run.

A thin launcher of benchmarks/report.py (`write_report`), which lives beside the
benchmark scripts in the repository: benchmarks/ is a folder of scripts, not an
installed package, so it is loaded from the checkout this package comes from.
"""

from __future__ import annotations

import importlib.util
import sys
from argparse import Namespace
from pathlib import Path

from config import EbrConfig

BENCHMARKS_DIR = Path(__file__).resolve().parents[1] / "benchmarks"
# var/, not beside the results: benchmarks/report.html is the committed page of `make bench`.
DEFAULT_OUT = BENCHMARKS_DIR.parent / "var" / "report.html"


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


def load_benchmark_script(name: str):
    """benchmarks/NAME.py of this checkout as a module, loaded once per process.

    The one loader of the benchmark scripts (`ebr report`, run_all.py, report.py and the
    tests use it), so each is loaded under one module name: benchmarks/ is a folder of
    scripts, not a package, and putting it on sys.path would let benchmarks/serving.py
    shadow the `serving` package.
    """
    path = BENCHMARKS_DIR / f"{name}.py"
    if not path.is_file():
        raise ReportError(
            f"{path} is missing: it needs the repository checkout (an editable install), not an installed wheel"
        )
    module_name = f"ebr_benchmark_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    return sys.modules[module_name]


def render_report(cfg: EbrConfig, args: Namespace) -> int:
    report = load_benchmark_script("report")
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
