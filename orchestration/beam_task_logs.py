"""The Beam jobs' log lines in an Airflow task log, at their own levels, without known noise.

The Beam provider's hook reads the job process's output and logs every stderr line as
WARNING and every stdout line as INFO (`process_fd`). Python logging writes to stderr,
so a successful job showed ~90 WARNING lines. The jobs log in the standard library's
basic format (`LEVEL:logger:message`, `logging.basicConfig` in `beam_jobs.driver.main`);
TensorFlow's C++ code writes glog lines (`I0000 00:00:... file.cc:12] message`). Both
carry a level, which `BeamJobLog` reads and logs with; a line without one continues the
record before it (a multi-line message or traceback) and takes its level.

`KNOWN_NOISE` drops specific messages known to be harmless here, each for a stated
reason; everything else reaches the log, an unknown line at the level its stream
implies (stderr: WARNING).

`BeamJobOperator` is `BeamRunPythonPipelineOperator` with that hook (and without its
warning that `dataflow_config` is set while the runner is not Dataflow: the DAGs always
pass one, the runner is configuration).
"""

from __future__ import annotations

import re
from typing import Any

from airflow.providers.apache.beam.hooks.beam import BeamHook, beam_options_to_args, run_beam_command
from airflow.providers.apache.beam.operators.beam import BeamRunPythonPipelineOperator
from airflow.providers.google.cloud.operators.dataflow import DataflowConfiguration

PYTHON_RECORD = re.compile(r"^(?P<level>DEBUG|INFO|WARNING|ERROR|CRITICAL):(?P<logger>[\w.]+):(?P<message>.*)$", re.S)
GLOG_RECORD = re.compile(r"^(?P<level>[IWEF])\d{4} [\d:.]+\s+\d+ (?P<where>[\w.]+:\d+)\] (?P<message>.*)$", re.S)
PYTHON_WARNING = re.compile(r"^\S+\.py:\d+: \w*Warning: ")
GLOG_LEVELS = {"I": "INFO", "W": "WARNING", "E": "ERROR", "F": "CRITICAL"}

# (logger or None for TensorFlow's C++ lines, message pattern, why it is harmless here)
KNOWN_NOISE: tuple[tuple[str | None, re.Pattern[str], str], ...] = (
    (
        "apache_beam.typehints.native_type_compatibility",
        re.compile(r"^Converting string literal type hint to Any"),
        "one INFO line per `from __future__ import annotations` hint of a DoFn; Beam then checks nothing, as intended",
    ),
    (
        None,
        re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"),
        "absl's notice that TensorFlow logs before it is configured, printed at every TensorFlow import",
    ),
    (
        None,
        re.compile(r"^oneDNN custom operations are on"),
        "TensorFlow's CPU kernels; numerics within float round-off",
    ),
    (None, re.compile(r"^Could not find cuda drivers on your machine"), "no GPU here: the towers run on the CPU"),
    (
        None,
        re.compile(r"^failed call to cuInit"),
        "the same, as an ERROR line: CUDA is installed with TensorFlow, no GPU is",
    ),
    (
        None,
        re.compile(r"^This TensorFlow binary is optimized to use available CPU instructions"),
        "a build hint (its second line, 'To enable the following instructions', goes with it)",
    ),
)


def is_known_noise(logger: str | None, message: str) -> bool:
    return any(logger == noisy and pattern.match(message) for noisy, pattern, _ in KNOWN_NOISE)


class BeamJobLog:
    """Stands in for the hook's logger in `run_beam_command`: re-levels the job's lines.

    `run_beam_command` calls `info(line)` for stdout and `warning(line)` for stderr (and
    `info(fmt, *args)` for its own messages); both become `forward(line, default)`.
    """

    def __init__(self, log: Any):
        self.log = log
        self.continuing: dict[str, tuple[str, bool]] = {}  # stream -> (level, dropped) of its last record

    def info(self, message: str, *args: Any) -> None:
        self.forward(message % args if args else message, "INFO", "stdout")

    def warning(self, message: str, *args: Any) -> None:
        self.forward(message % args if args else message, "WARNING", "stderr")

    def forward(self, line: str, default: str, stream: str) -> None:
        level, text, dropped = self.classify(line, default, stream)
        if not dropped and text.strip():  # blank lines (a multi-line message's end) carry nothing
            getattr(self.log, level.lower())("%s", text)

    def classify(self, line: str, default: str, stream: str) -> tuple[str, str, bool]:
        """(level, text to log, dropped?) of one output line."""
        python, glog = PYTHON_RECORD.match(line), GLOG_RECORD.match(line)
        if python:
            level, logger, message = python["level"], python["logger"], python["message"]
            dropped, text = is_known_noise(logger, message), f"{logger}: {message}"
        elif glog:
            level, message = GLOG_LEVELS[glog["level"]], glog["message"]
            dropped, text = is_known_noise(None, message), f"tensorflow {glog['where']}: {message}"
        elif PYTHON_WARNING.match(line):
            level, dropped, text = "WARNING", False, line  # warnings.warn's "file.py:12: UserWarning: ..."
        elif line.startswith("Traceback (most recent call last)"):
            level, dropped, text = "ERROR", False, line  # an uncaught exception (or a logged one's traceback)
        elif is_known_noise(None, line):
            level, dropped, text = default, True, line
        elif stream in self.continuing:  # the next line of a multi-line record
            level, dropped = self.continuing[stream]
            return level, line, dropped
        else:
            level, dropped, text = default, False, line
        self.continuing[stream] = (level, dropped)
        return level, text, dropped


class LeveledBeamHook(BeamHook):
    """BeamHook whose job output goes through `BeamJobLog`."""

    def _start_pipeline(
        self,
        variables: dict,
        command_prefix: list[str],
        process_line_callback=None,
        working_directory: str | None = None,
        is_dataflow_job_id_exist_callback=None,
    ) -> None:
        cmd = [*command_prefix, f"--runner={self.runner}"]
        if variables:
            cmd.extend(beam_options_to_args(variables))
        run_beam_command(
            cmd=cmd,
            process_line_callback=process_line_callback,
            working_directory=working_directory,
            log=BeamJobLog(self.log),
            is_dataflow_job_id_exist_callback=is_dataflow_job_id_exist_callback,
        )


class BeamJobOperator(BeamRunPythonPipelineOperator):
    """The embedding DAGs' Beam task: the provider's operator with `LeveledBeamHook`."""

    def _init_pipeline_options(self, *args, **kwargs):
        result = super()._init_pipeline_options(*args, **kwargs)
        self.beam_hook = LeveledBeamHook(runner=self.runner)
        return result

    def _cast_dataflow_config(self):
        if self.runner.lower() == "dataflowrunner":
            return super()._cast_dataflow_config()
        if isinstance(self.dataflow_config, dict):
            self.dataflow_config = DataflowConfiguration(**self.dataflow_config)
        self.dataflow_config = self.dataflow_config or DataflowConfiguration()
        self.dataflow_config.job_name = self.dataflow_config.job_name or self.task_id
        return None
