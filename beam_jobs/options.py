"""Pipeline options of the embedding jobs: their own flags, next to Beam's.

Beam parses the flags of every direct `PipelineOptions` subclass together (and warns
about, then drops for the runner, flags only a deeper subclass knows), so the flags both
jobs share live in `EmbeddingJobOptions` and each job has a direct subclass of its own.
Anything else on the command line (`--runner`, `--project`, `--direct_running_mode`,
...) is a standard Beam option.
"""

from __future__ import annotations

from apache_beam.options.pipeline_options import PipelineOptions


class EmbeddingJobOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--root", help="artifact root: file:///abs/path or gs://bucket/prefix (default: the configured root)"
        )
        parser.add_argument(
            "--model_version", help="models/two_tower version whose tower to run (default: the one LATEST names)"
        )
        parser.add_argument(
            "--as_of",
            help="UTC time the features are computed as of: ISO 8601 or epoch seconds "
            "(default: the end of the newest event partition)",
        )
        parser.add_argument(
            "--snapshot", help="snapshot version name (default: <as of>-<entity>-model_<model time>-<run id>)"
        )
        parser.add_argument("--run_id", help="the run this belongs to (a DAG run id): in names and HISTORY.jsonl")
        parser.add_argument("--ebr_config", help="TOML file layered over the embedded defaults")
        parser.add_argument(
            "--set",
            dest="ebr_overrides",
            action="append",
            default=[],
            metavar="SECTION.KEY=VALUE",
            help="configuration override (repeatable), as `ebr --set`",
        )
        parser.add_argument("--no_publish", action="store_true", help="write the snapshot but do not move LATEST")


class UserEmbeddingOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--user_lookback_days",
            type=int,
            help="days of events read before as-of (default: embed.user_lookback_days; all)",
        )


class StoryEmbeddingOptions(PipelineOptions):
    @classmethod
    def _add_argparse_args(cls, parser):
        parser.add_argument(
            "--story_max_age_days",
            type=float,
            help="embed stories at most this old at as-of (default: embed.story_max_age_days)",
        )
