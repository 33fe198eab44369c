"""Beam on a dask.distributed cluster: Beam 2.77's DaskRunner with the fixes the jobs need.

    --runner=beam_jobs.dask_runner.DaskRunner --dask_client_address=tcp://HOST:8786

(or `embed.runner = "beam_jobs.dask_runner.DaskRunner"` and `embed.dask_address`). The
pipeline is translated into dask bags as Beam's runner does (`apache_beam.runners.dask`);
what differs is below, each fix with the test that fails on the shipped runner
(`tests/test_dask_runner.py`, marked `xfail(strict=True)` there: when Beam fixes one, its
test passes on the shipped runner, fails as XPASS, and the fix here can go) and the
upstream thread it corresponds to:

1. Every leaf runs. The shipped runner computes only the last bag it translated
   (apache/beam#33806, "Run a significantly smaller Dask Graph"), so of two sinks (the
   story job writes stories and creators) only one ran. Here every PCollection nobody
   consumes is computed, in one `client.compute`, so shared upstream work runs once.
2. Tagged outputs are separated. The shipped ParDo returns every output of a
   multi-output DoFn in one bag (tags dropped), so the main output carried the dead
   letters and row counts too (the story job failed in `ConcatTables`). Here a ParDo
   yields (tag, value) pairs and each output PCollection selects its own tag. No
   upstream issue was found; Beam 2.77's dask_runner_test.py has no multi-output test.
3. Side inputs are computed once. The shipped `DaskBagWindowedIterator` calls
   `list(bag)` inside every task that reads it: a computation of the side input's whole
   upstream from inside each task, shared only by tasks that happen to overlap (its
   FIXME; side inputs on Dask were left unfinished in apache/beam#23913 and #27618).
   Here a side input is one dask value, a dependency of the tasks: computed once, first.
4. Metrics are reported. The shipped `DaskRunnerResult.metrics()` raises
   NotImplementedError ("collecting metrics will come later"; no upstream issue found),
   so the jobs' counters came back empty. Here each bundle runs in a
   `MetricsContainer` whose cumulative updates travel back with the results and are
   merged into `DirectMetrics` (committed = attempted: a retried task's result replaces
   the failed one's).
5. `setup()` runs once per DoFn instance, not per bundle. The shipped runner calls
   setup/teardown around every partition (the story tower was loaded once per bucket;
   no upstream issue found). Here set-up DoFn instances are kept per worker process
   and reused, one bundle at a time; teardown runs once the run is older than the
   worker's newest `RUNS_KEPT`, or at the worker's exit (best effort, as Beam says).
6. Parallelism follows `--dask_npartitions`. The shipped runner splits a `Create` into
   partitions of 128 elements and keeps the partition count through every GroupByKey,
   so a job reading fewer than 128 files ran in one partition end to end (compare
   apache/beam#26669 on `Create`'s partitioning). Here every GroupByKey shuffles into
   `--dask_npartitions` partitions; the jobs set it to `embed.buckets`.

Also: outputs a DoFn emits in `finish_bundle` are kept (the shipped runner collected the
bundle's outputs before calling it). Only the global window is supported, as upstream.
Cost: a GroupByKey is dask's all-to-all task shuffle, npartitions² small tasks, and
combiners are not lifted: keep `--dask_npartitions` a small multiple of the worker threads.
"""

from __future__ import annotations

import atexit
import logging
import threading
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam import pvalue
from apache_beam.metrics.execution import MetricsContainer
from apache_beam.pipeline import PipelineVisitor
from apache_beam.runners.common import DoFnContext, DoFnInvoker, DoFnSignature, Receiver, _OutputHandler
from apache_beam.runners.dask import dask_runner as shipped
from apache_beam.runners.dask import transform_evaluator as evaluators
from apache_beam.runners.dask.overrides import _Create, _Flatten, _GroupByKeyOnly, dask_overrides
from apache_beam.runners.direct.direct_metrics import DirectMetrics
from apache_beam.runners.runner import PipelineResult, PipelineState
from apache_beam.runners.worker import statesampler
from apache_beam.transforms.sideinputs import SideInputMap
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils import counters
from apache_beam.utils.windowed_value import WindowedValue

log = logging.getLogger(__name__)

RUNNER = f"{__name__}.DaskRunner"  # the value of --runner / embed.runner
_METRICS = "__ebr_dask_metrics__"  # the tag a bundle's metric updates travel under


# -- on the workers -------------------------------------------------------------------------

# DoFn instances that have run setup(), idle between bundles (fix 5), per run and ParDo:
# {run: {ParDo token: [instances]}}. A long-lived cluster serves run after run: the
# instances of all but the newest RUNS_KEPT runs are torn down (a tower each, otherwise).
_IDLE_DOFNS: dict[str, dict[str, list[beam.DoFn]]] = {}
_IDLE_LOCK = threading.Lock()
RUNS_KEPT = 4


def _borrow_dofn(run: str, token: str, fresh: beam.DoFn) -> tuple[beam.DoFn, bool]:
    """An idle set-up instance of ParDo `token` of `run`, or `fresh` (True: needs setup)."""
    retired: list[beam.DoFn] = []
    with _IDLE_LOCK:
        if run not in _IDLE_DOFNS:
            _IDLE_DOFNS[run] = {}
            while len(_IDLE_DOFNS) > RUNS_KEPT:  # dicts keep insertion order: oldest first
                retired += [fn for idle in _IDLE_DOFNS.pop(next(iter(_IDLE_DOFNS))).values() for fn in idle]
        idle = _IDLE_DOFNS[run].get(token)
        found = idle.pop() if idle else None
    _teardown(retired)
    return (found, False) if found is not None else (fresh, True)


def _return_dofn(run: str, token: str, fn: beam.DoFn) -> None:
    with _IDLE_LOCK:
        if run in _IDLE_DOFNS:
            _IDLE_DOFNS[run].setdefault(token, []).append(fn)
            return
    _teardown([fn])  # its run was retired meanwhile


def _teardown(instances: list[beam.DoFn]) -> None:
    for fn in instances:
        try:
            fn.teardown()
        except Exception:  # best effort, as Beam's contract says
            log.exception("teardown of %r failed", fn)


@atexit.register
def _teardown_idle_dofns() -> None:
    with _IDLE_LOCK:
        instances = [fn for run in _IDLE_DOFNS.values() for idle in run.values() for fn in idle]
        _IDLE_DOFNS.clear()
    _teardown(instances)


class _TagReceiver(Receiver):
    def __init__(self, tag: str | None, out: list):
        self.tag, self.out = tag, out

    def receive(self, windowed_value: WindowedValue):
        self.out.append((self.tag, windowed_value.value))


class _TagReceivers(dict):
    def __init__(self, out: list):
        super().__init__()
        self.out = out

    def __missing__(self, tag):
        receiver = self[tag] = _TagReceiver(tag, self.out)
        return receiver


def _side_input_map(view: tuple[type, dict], values: list) -> SideInputMap:
    """`view`: the AsSideInput's class and view options (the AsSideInput itself does not
    unpickle on a worker: its PCollection does not travel)."""
    windowed = [WindowedValue(v, 0, (GlobalWindow(),)) for v in values]
    return SideInputMap(view[0], view[1], windowed)


def _run_bundle(
    elements: Iterable,
    label: str,
    run: str,
    token: str,
    fn: beam.DoFn,
    window_fn,
    args,
    kwargs,
    views: Sequence[tuple[type, dict]],
    *side_values: list,
) -> list[tuple[str | None, Any]]:
    """One dask partition as one Beam bundle: [(tag, output)..., (_METRICS, updates)]."""
    out: list = []
    receivers = _TagReceivers(out)
    handler = _OutputHandler(
        window_fn=window_fn,
        main_receivers=receivers[None],
        tagged_receivers=receivers,
        per_element_output_counter=None,
        output_batch_converter=None,
        process_yields_batches=False,
        process_batch_yields_elements=False,
    )
    fn, needs_setup = _borrow_dofn(run, token, fn)
    invoker = DoFnInvoker.create_invoker(
        DoFnSignature(fn),
        handler,
        context=DoFnContext(label, state=None),
        side_inputs=[_side_input_map(view, v) for view, v in zip(views, side_values, strict=True)],
        input_args=list(args),
        input_kwargs=kwargs,
        user_state_context=None,
        bundle_finalizer_param=beam.DoFn.BundleFinalizerParam(),
    )
    container = MetricsContainer(label)
    sampler = statesampler.StateSampler("", counters.CounterFactory())
    previous = statesampler.get_current_tracker()
    statesampler.set_current_tracker(sampler)
    try:
        with sampler.scoped_state(label, "process", metrics_container=container):
            if needs_setup:
                invoker.invoke_setup()
            invoker.invoke_start_bundle()
            for element in elements:
                invoker.invoke_process(evaluators.get_windowed_value(element, window_fn))
            invoker.invoke_finish_bundle()  # before collecting: finish_bundle may output
    finally:
        statesampler.set_current_tracker(previous)
    _return_dofn(run, token, fn)  # only after a bundle that succeeded
    out.append((_METRICS, container.get_cumulative()))
    return out


def _select(tagged: list, tag: str | None) -> list:
    return [value for t, value in tagged if t == tag]


def _concat(partitions: list[list]) -> list:
    return [value for part in partitions for value in part]


def _drain(partition: Iterable) -> list[int]:
    return [sum(1 for _ in partition)]


# -- translation, on the client -------------------------------------------------------------


class _ParDo(evaluators.DaskBagOp):
    """A ParDo: the bag of (tag, value) pairs of every output (fixes 2-5)."""

    run = ""  # the pipeline run it belongs to (set by _Translation): set-up DoFns are kept per run

    def apply(self, input_bag, side_inputs=None):
        import dask

        transform = self.transform
        args, kwargs = transform.raw_side_inputs
        main_input = next(iter(self.applied.main_inputs.values()))
        window_fn = main_input.windowing.windowfn if hasattr(main_input, "windowing") else None
        views = [(type(si), si._view_options()) for si in self.applied.side_inputs]
        # One dask value per side input, computed once for all tasks (fix 3).
        values = [dask.delayed(_concat, pure=True)(bag.to_delayed(optimize_graph=False)) for bag in side_inputs or []]
        return input_bag.map_partitions(
            _run_bundle,
            self.applied.full_label,
            self.run,
            uuid.uuid4().hex,
            transform.fn,
            window_fn,
            args,
            kwargs,
            views,
            *values,
        )


class _GroupByKey(evaluators.DaskBagOp):
    """GroupByKey into `npartitions` partitions (fix 6), else as many as its input has."""

    def apply(self, input_bag, side_inputs=None):
        # dask's task shuffle keeps its input's partition count (it ignores npartitions=):
        # split or merge the input first. Keys go by dask's tokenize, alike in every process.
        partitions = self.bag_kwargs.get("npartitions") or input_bag.npartitions
        if partitions != input_bag.npartitions:
            input_bag = input_bag.repartition(npartitions=partitions)
        grouped = input_bag.groupby(lambda kv: kv[0], shuffle="tasks")
        return grouped.map(lambda kv: (kv[0], [evaluators.defenestrate(pair[1]) for pair in kv[1]]))


class _CreateOp(evaluators.Create):
    """Create, also of no values (the shipped op cannot partition an empty sequence)."""

    def apply(self, input_bag, side_inputs=None):
        import dask.bag as db

        if not self.transform.values:
            return db.from_sequence([], npartitions=1)
        return super().apply(input_bag, side_inputs)


_TRANSLATIONS = {_Create: _CreateOp, beam.ParDo: _ParDo, _GroupByKeyOnly: _GroupByKey, _Flatten: evaluators.Flatten}


class _Translation(PipelineVisitor):
    """Dask bags per PCollection (the shipped visitor keys them by producing transform,
    which merges a multi-output ParDo's outputs)."""

    def __init__(self, bag_kwargs: dict):
        self.bag_kwargs = bag_kwargs
        self.run = uuid.uuid4().hex
        self.bags: dict[pvalue.PCollection, Any] = {}
        self.consumed: set[pvalue.PValue] = set()
        self.metric_bags: list = []

    def visit_transform(self, node) -> None:
        op = _TRANSLATIONS.get(node.transform.__class__, evaluators.NoOp)(node, bag_kwargs=self.bag_kwargs)
        if isinstance(op, _ParDo):
            op.run = self.run
        inputs = [None if isinstance(i, pvalue.PBegin) else self.bags[i] for i in node.inputs]
        self.consumed.update(node.inputs)
        self.consumed.update(si.pvalue for si in node.side_inputs)
        side_bags = [self.bags[si.pvalue] for si in node.side_inputs]
        main = inputs if isinstance(op, evaluators.Flatten) else (inputs[0] if len(inputs) == 1 else (inputs or None))
        bag = op.apply(main, side_bags)
        if isinstance(op, _ParDo):
            self.metric_bags.append(bag.map_partitions(_select, _METRICS))
            for tag, pcoll in node.outputs.items():
                self.bags[pcoll] = bag.map_partitions(_select, tag)
        else:
            for pcoll in node.outputs.values():
                self.bags[pcoll] = bag

    def leaves(self) -> list:
        """Every PCollection nothing consumes, reduced to element counts (fix 1)."""
        return [
            bag.map_partitions(_drain)
            for pcoll, bag in self.bags.items()
            if pcoll not in self.consumed and bag is not None
        ]


class DaskRunner(shipped.DaskRunner):
    """Executes a pipeline on a dask.distributed cluster (see the module docstring)."""

    def run_pipeline(self, pipeline, options):
        import dask.distributed as ddist

        dask_options = options.view_as(shipped.DaskOptions).get_all_options(drop_default=True, current_only=True)
        bag_kwargs = shipped.DaskOptions._extract_bag_kwargs(dask_options)
        client = ddist.Client(**dask_options)
        pipeline.replace_all(dask_overrides())
        translation = _Translation(bag_kwargs)
        pipeline.visit(translation)
        leaves = translation.leaves()
        futures = client.compute([*leaves, *translation.metric_bags])
        log.info(
            "dask: %d leaves, %d ParDos on %s", len(leaves), len(translation.metric_bags), client.scheduler.address
        )
        return DaskRunnerResult(client, futures, metric_futures=frozenset(futures[len(leaves) :]))


@dataclass
class DaskRunnerResult(PipelineResult):
    client: Any
    futures: list
    metric_futures: frozenset

    def __post_init__(self):
        super().__init__(PipelineState.RUNNING)
        self._metrics = DirectMetrics()

    def wait_until_finish(self, duration=None) -> str:
        import dask.distributed as ddist

        if self._state in (PipelineState.DONE, PipelineState.FAILED, PipelineState.CANCELLED):
            return self._state
        try:
            # with_results: a worker's exception is raised here, on the client.
            for future, result in ddist.as_completed(
                self.futures, timeout=None if duration is None else duration / 1000, with_results=True
            ):
                if future in self.metric_futures:
                    for bundle, updates in enumerate(result):
                        self._metrics.commit_logical((future.key, bundle), updates)
                        self._metrics.commit_physical((future.key, bundle), updates)
            self._state = PipelineState.DONE
        except BaseException:
            self._state = PipelineState.FAILED
            raise
        finally:
            if self._state != PipelineState.RUNNING:
                self.client.close()
        return self._state

    def cancel(self) -> str:
        self.client.cancel(self.futures)
        self.client.close()
        self._state = PipelineState.CANCELLED
        return self._state

    def metrics(self) -> DirectMetrics:
        return self._metrics
