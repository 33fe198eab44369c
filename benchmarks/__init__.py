"""The benchmark scripts: a package of the checkout, not of the installed distribution.

setup.py's PACKAGES leave it out (a wheel carries no benchmarks); it is a package so
that the scripts import each other, and `ebr report` imports `benchmarks.report`, as
modules by name (`from benchmarks import serving`), not by file path.

Each script is run as `python benchmarks/NAME.py` (what `make bench` and the README
say). Run that way its own folder is sys.path[0], where `import serving` would find
benchmarks/serving.py instead of the `serving` package, and `benchmarks` would not be
found at all; so every script that imports a sibling (all but embedding_jobs.py,
model_quality.py and loadgen.py) first replaces that entry with the checkout:

    sys.path[:] = [str(REPO), *(p for p in sys.path if Path(p or ".").resolve() not in (REPO, REPO / "benchmarks"))]
"""
