"""What a job run will do, resolved once in the driver before the pipeline starts.

The `JobPlan` is small and picklable: it travels to every worker inside the DoFns,
so workers never re-read the configuration, LATEST or the clock (a runner may start
workers at different times; they must all agree on the model version and as-of).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

from artifacts import MODELS, ArtifactStore, UnknownVersionError, version_name
from artifacts.store import new_attempt_id
from beam_jobs.errors import EmbeddingJobError
from beam_jobs.inputs import check_input_files
from beam_jobs.options import EmbeddingJobOptions
from config import EbrConfig, FeatureConfig, load_config
from warehouse import Warehouse
from warehouse.tables import day_start_ts

log = logging.getLogger(__name__)

DASK_RUNNER = "beam_jobs.dask_runner.DaskRunner"  # beam_jobs.dask_runner.RUNNER, without importing dask here


@dataclass(frozen=True)
class JobPlan:
    """One run of an embedding job.

    Attributes:
      cfg: the run's configuration (root, embed settings, store settings).
      entity: "users" or "stories" (the story job also writes "creators").
      model_version: the models/two_tower version whose tower runs.
      model_local_dir: that version's directory when the root is on this file system
        (workers load it in place); None for gs:// (workers download and verify it).
      features: the model's own FeatureConfig (from its features.json): inference builds
        features exactly as this model was trained, whatever the current config says.
      content_dim, output_dim: input content size and embedding size of the model.
      as_of: UTC seconds; features see only events strictly before it.
      snapshot: the version name written under embeddings/<entity> (and creators).
      run_id: the run this belongs to, for HISTORY.jsonl.
      files: Beam-readable paths per warehouse table ("users", "stories", "creators",
        "events": the event partitions this run reads).
      attempt: the write attempt id shared by the workers and the commit step.
    """

    cfg: EbrConfig
    entity: str
    model_version: str
    model_local_dir: str | None
    features: FeatureConfig
    content_dim: int
    output_dim: int
    as_of: int
    snapshot: str
    run_id: str | None
    files: dict[str, list[str]]
    publish: bool = True
    # This run's write attempt: workers stage shards under it, the commit step registers
    # them, and a zombie run on the same snapshot name has its own (see ArtifactKind.new_version).
    attempt: str = field(default_factory=new_attempt_id)

    @property
    def as_of_iso(self) -> str:
        return datetime.fromtimestamp(self.as_of, UTC).isoformat().replace("+00:00", "Z")

    @property
    def tower(self) -> str:
        return "user_tower" if self.entity == "users" else "story_tower"


def parse_as_of(text: str) -> int:
    """Epoch seconds from `1761955200` or ISO 8601 (`2026-10-21`, `2026-10-21T06:00:00Z`,
    Airflow's `2026-10-21T06:00:00+00:00`); naive times are UTC."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise EmbeddingJobError(
            f"--as_of {text!r} is neither epoch seconds nor ISO 8601 (e.g. 2026-10-21T06:00:00Z)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp())


def job_config(options: PipelineOptions) -> EbrConfig:
    """The configuration from --ebr_config, --set and --root (the environment's EBR_* too)."""
    job = options.view_as(EmbeddingJobOptions)
    overrides = list(job.ebr_overrides or [])
    if job.root:
        overrides.append(f"root={job.root}")
    return load_config(job.ebr_config, overrides)


def with_configured_runner(argv: list[str] | None, cfg: EbrConfig) -> PipelineOptions:
    """Options with `embed.runner` and `embed.pipeline_options` as defaults under `argv`.

    The runner is configuration: a flag on the command line wins, then the config.
    Without any, Beam 2.77 would pick its Prism runner and try to download it. On the
    Dask runner the bag partitions follow `embed.buckets` (`--dask_npartitions`) and the
    scheduler is `embed.dask_address` (`--dask_client_address`), unless flags say otherwise.
    """
    configured = [f"--runner={cfg.embed.runner}", *cfg.embed.pipeline_options]
    runner = PipelineOptions([*configured, *(argv or [])]).view_as(StandardOptions).runner
    if runner == DASK_RUNNER:
        dask = (
            [f"--dask_npartitions={cfg.embed.buckets}"]
            if not any(a.startswith("--dask_partition_size") for a in [*configured, *(argv or [])])
            else []
        )
        dask += [f"--dask_client_address={cfg.embed.dask_address}"] if cfg.embed.dask_address else []
        configured = [*configured[:1], *dask, *configured[1:]]
    return PipelineOptions([*configured, *(argv or [])])


def beam_path(uri: str) -> str:
    """A path Beam's file systems read: gs:// as is, file:///abs as /abs."""
    return uri[len("file://") :] if uri.startswith("file://") else uri


def resolve_plan(cfg: EbrConfig, options: PipelineOptions, entity: str, *, lookback_days: float | None) -> JobPlan:
    """Resolves the model version, as-of, snapshot name and input files of one run.

    `lookback_days`: the event partitions read are those from the day of
    `as_of - lookback_days` to the day of as-of (None: every partition up to as-of).
    """
    job = options.view_as(EmbeddingJobOptions)
    store = ArtifactStore.from_config(cfg)
    models = store.kind(MODELS)
    model_version = job.model_version or models.latest()
    if not model_version:
        raise EmbeddingJobError(
            f"{store.uri}/{MODELS} has no published model: train one first (ebr train), or pass --model_version"
        )
    try:
        models.manifest(model_version)
    except UnknownVersionError as err:
        raise EmbeddingJobError(str(err)) from None
    model_features = json.loads(models.read_file(model_version, "features.json"))

    warehouse = Warehouse.from_config(cfg)
    days = warehouse.event_days()
    if not days:
        raise EmbeddingJobError(
            f"{warehouse.uri} has no event partitions: write the warehouse first (ebr data generate)"
        )
    as_of = (
        parse_as_of(job.as_of)
        if job.as_of
        else min(day_start_ts(days[-1] + timedelta(days=1)), int(datetime.now(UTC).timestamp()))
    )
    as_of_day = datetime.fromtimestamp(as_of, UTC).date()
    first_day = (datetime.fromtimestamp(as_of - lookback_days * 86_400, UTC).date()) if lookback_days else date.min
    event_files = [beam_path(u) for u in warehouse.event_files(first_day, as_of_day + timedelta(days=1))]
    if not event_files:
        raise EmbeddingJobError(
            f"{warehouse.uri} has no event partitions between {first_day} and {as_of_day}: check --as_of"
        )

    model_tag = model_version.split("-", 1)[0]
    snapshot = job.snapshot or version_name(
        f"{entity}-model_{model_tag}-{job.run_id or 'manual'}", datetime.fromtimestamp(as_of, UTC)
    )
    local = models.local_dir(model_version)  # where its files are, through its manifest
    if local is not None:
        models.verify(model_version)  # workers load it in place: check every sha256 once, here
    files = {
        "users": [beam_path(f"{warehouse.uri}/users/part-00000.parquet")],
        "stories": [beam_path(f"{warehouse.uri}/stories/part-00000.parquet")],
        "creators": [beam_path(f"{warehouse.uri}/creators/part-00000.parquet")],
        "events": event_files,
    }
    check_input_files(files)  # a damaged file fails here, named, before any worker starts
    return JobPlan(
        cfg=cfg,
        entity=entity,
        model_version=model_version,
        model_local_dir=str(local) if local is not None else None,
        features=FeatureConfig.model_validate(model_features["features"]),
        content_dim=int(model_features["content_dim"]),
        output_dim=int(model_features["output_dim"]),
        as_of=as_of,
        snapshot=snapshot,
        run_id=job.run_id,
        files=files,
        publish=not job.no_publish,
    )
