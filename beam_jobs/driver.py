"""Running an embedding job: plan, pipeline, wait, then publish (what each `run()` does).

The pipeline writes the snapshot and its manifest; the driver, once the run has
finished, moves LATEST (compare-and-swap through the artifact store). A rerun with the
same snapshot name finds the version complete and only retries the publish: the same
DAG run never embeds or publishes twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.options.pipeline_options import PipelineOptions

from artifacts import ArtifactStore, IncompleteVersionError, UnknownVersionError
from beam_jobs.errors import EmbeddingJobError, ErrorRateExceededError
from beam_jobs.plan import JobPlan
from beam_jobs.transforms import METRICS_NAMESPACE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobOutcome:
    """One snapshot a run wrote (or found complete) and what happened to LATEST."""

    kind: str
    snapshot: str
    model_version: str
    as_of_iso: str
    count: int
    counters: dict[str, int]
    published: bool
    published_detail: str
    reused: bool


def run_pipeline(
    options: PipelineOptions, plan: JobPlan, kinds: list[str], build: Callable[[beam.Pipeline, JobPlan], None]
) -> list[JobOutcome]:
    """Runs `build`'s pipeline unless every snapshot is complete, then publishes them."""
    store = ArtifactStore.from_config(plan.cfg)
    complete = all(store.kind(k).is_complete(plan.snapshot) for k in kinds)
    counters: dict[str, int] = {}
    if complete:
        log.info("%s: snapshot %s is complete already; only publishing", plan.entity, plan.snapshot)
    else:
        # Leftovers of earlier attempts stay: each attempt stages in its own folder (one
        # may still be running), and retention removes the abandoned ones.
        pipeline = beam.Pipeline(options=options)
        build(pipeline, plan)
        result = pipeline.run()
        result.wait_until_finish()
        counters = _counters(result)
    outcomes = []
    for kind_name in kinds:
        kind = store.kind(kind_name)
        try:
            manifest = kind.manifest(plan.snapshot)
        except (IncompleteVersionError, UnknownVersionError):
            raise _refusal(store, kind_name, plan) from None
        if plan.publish:
            moved = kind.publish(
                plan.snapshot,
                reason=f"{plan.entity} dataflow as of {plan.as_of_iso} with model {plan.model_version}",
                run_id=plan.run_id,
            )
            detail, published = moved.detail, moved.moved or moved.latest == plan.snapshot
            if moved.skipped == "older":
                log.warning("%s: %s", kind_name, moved.detail)
        else:
            detail, published = "not published (--no_publish)", False
        outcomes.append(
            JobOutcome(
                kind_name,
                plan.snapshot,
                plan.model_version,
                plan.as_of_iso,
                int(manifest.metrics.get("count", 0)),
                counters,
                published,
                detail,
                complete,
            )
        )
    return outcomes


def main(run: Callable[[list[str]], list[JobOutcome]], argv: list[str]) -> None:
    """A job's `__main__`: logs at INFO in the basic format and prints one line per snapshot.

    `orchestration.beam_task_logs` reads that log format, `orchestration.demo` the line.
    """
    logging.basicConfig(level=logging.INFO)
    for outcome in run(argv):
        print(f"{outcome.kind}/{outcome.snapshot}: {outcome.count} embeddings; {outcome.published_detail}")


def _refusal(store: ArtifactStore, kind_name: str, plan: JobPlan) -> EmbeddingJobError:
    kind = store.kind(kind_name)
    body = kind.refusal(plan.snapshot, plan.attempt)
    if body is None:
        return EmbeddingJobError(
            f"{kind_name}/{plan.snapshot} has no manifest after the run: the pipeline did not finish its commit step"
        )
    where = f"{store.uri}/{kind.staging_key(plan.snapshot, plan.attempt)}"
    hint = f"; dead letters in {where}/{body['dead_letter_file']}" if body.get("dead_letter_file") else ""
    message = f"{kind_name}/{plan.snapshot} was not published: {'; '.join(body['refused'])}{hint}"
    if any("max_error_rate" in r for r in body["refused"]):
        return ErrorRateExceededError(message + " (fix the input, or raise embed.max_error_rate)")
    return EmbeddingJobError(message)


def _counters(result) -> dict[str, int]:
    try:
        counters = result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]
    except (NotImplementedError, KeyError):  # a runner without metrics support
        return {}
    out: dict[str, int] = {}
    for counter in counters:
        value = counter.committed if counter.committed is not None else counter.attempted
        out[counter.key.metric.name] = out.get(counter.key.metric.name, 0) + int(value or 0)
    return dict(sorted(out.items()))
