"""The Beam jobs' output in an Airflow task log: real levels, known-harmless noise dropped.

The lines below are copied from the task log of a real `embed_stories` run (where each
was logged as WARNING); the last test runs a real Beam pipeline through the hook.
"""

from __future__ import annotations

import sys
import textwrap

import pytest

from tests.airflow_support import process_airflow_home


@pytest.fixture(scope="module")
def beam_task_logs():
    process_airflow_home()  # Airflow reads its home on first import
    from orchestration import beam_task_logs

    return beam_task_logs


class Recorder:
    """A logger that keeps (level, message)."""

    def __init__(self):
        self.records: list[tuple[str, str]] = []

    def __getattr__(self, level):
        return lambda fmt, *args: self.records.append((level.upper(), fmt % args))


def relay(beam_task_logs, lines: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(stream, line) pairs as run_beam_command hands them over -> what reaches the task log."""
    recorder = Recorder()
    log = beam_task_logs.BeamJobLog(recorder)
    for stream, line in lines:
        (log.warning if stream == "stderr" else log.info)(line)
    return recorder.records


def test_python_and_tensorflow_lines_keep_their_levels_and_known_noise_is_dropped(beam_task_logs):
    records = relay(
        beam_task_logs,
        [
            (
                "stderr",
                'INFO:apache_beam.typehints.native_type_compatibility:Converting string literal type hint to Any: "pa.Table"',
            ),
            ("stderr", "INFO:apache_beam.runners.direct.direct_runner:Running pipeline with PrismRunner."),
            ("stderr", "INFO:apache_beam.runners.direct.direct_runner:Exception with PrismRunner:"),
            (
                "stderr",
                " Unable to fetch remote prism binary at https://github.com/...: <urlopen error [Errno -2] Name or service not known>",
            ),
            ("stderr", ""),
            ("stderr", "INFO:apache_beam.runners.direct.direct_runner:Falling back to DirectRunner"),
            ("stderr", "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"),
            (
                "stderr",
                "I0000 00:00:1796122051.031952   31225 port.cc:153] oneDNN custom operations are on. You may see slightly different numerical results",
            ),
            (
                "stderr",
                "I0000 00:00:1796122051.033040   31225 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used.",
            ),
            (
                "stderr",
                "I0000 00:00:1796122051.118876   31225 cpu_feature_guard.cc:227] This TensorFlow binary is optimized to use available CPU instructions in performance-critical operations.",
            ),
            (
                "stderr",
                "To enable the following instructions: AVX2 AVX512F AVX512_VNNI AVX512_BF16 FMA, in other operations, rebuild TensorFlow with the appropriate compiler flags.",
            ),
            (
                "stderr",
                "E0000 00:00:1796122055.366511   31225 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
            ),
            ("stderr", "W0000 00:00:1796122055.366511   31225 some_op.cc:12] a real TensorFlow warning"),
            ("stderr", "INFO:artifacts.store:embeddings/stories: LATEST None -> 20261021T220000Z-x (publish)"),
            ("stderr", "WARNING:beam_jobs.driver:embeddings/stories: skipped: older"),
            ("stderr", "/work/main/models/towers.py:12: UserWarning: something to look at"),
            (
                "stdout",
                "embeddings/stories/20261021T220000Z-x: 4938 embeddings; LATEST moved from None to 20261021T220000Z-x",
            ),
            ("stderr", "Traceback (most recent call last):"),
            ("stderr", '  File "/work/main/beam_jobs/story_embeddings.py", line 153, in <module>'),
            ("stderr", "ValueError: boom"),
        ],
    )
    assert records == [
        ("INFO", "apache_beam.runners.direct.direct_runner: Running pipeline with PrismRunner."),
        ("INFO", "apache_beam.runners.direct.direct_runner: Exception with PrismRunner:"),
        (
            "INFO",
            " Unable to fetch remote prism binary at https://github.com/...: <urlopen error [Errno -2] Name or service not known>",
        ),
        ("INFO", "apache_beam.runners.direct.direct_runner: Falling back to DirectRunner"),
        ("WARNING", "tensorflow some_op.cc:12: a real TensorFlow warning"),
        ("INFO", "artifacts.store: embeddings/stories: LATEST None -> 20261021T220000Z-x (publish)"),
        ("WARNING", "beam_jobs.driver: embeddings/stories: skipped: older"),
        ("WARNING", "/work/main/models/towers.py:12: UserWarning: something to look at"),
        (
            "INFO",
            "embeddings/stories/20261021T220000Z-x: 4938 embeddings; LATEST moved from None to 20261021T220000Z-x",
        ),
        ("ERROR", "Traceback (most recent call last):"),
        ("ERROR", '  File "/work/main/beam_jobs/story_embeddings.py", line 153, in <module>'),
        ("ERROR", "ValueError: boom"),
    ]


def test_an_unknown_stderr_line_stays_a_warning(beam_task_logs):
    assert relay(beam_task_logs, [("stderr", "something the job printed to stderr")]) == [
        ("WARNING", "something the job printed to stderr")
    ]


@pytest.mark.slow
def test_a_real_beam_pipeline_through_the_hook(beam_task_logs, tmp_path):
    """A real DirectRunner pipeline, started by the hook the DAGs use, its output relayed."""
    job = tmp_path / "job.py"
    job.write_text(
        textwrap.dedent("""
        from __future__ import annotations
        import logging, sys
        import apache_beam as beam

        class Double(beam.DoFn):
            def process(self, x: int):
                yield 2 * x

        if __name__ == "__main__":
            logging.basicConfig(level=logging.INFO)
            with beam.Pipeline(argv=sys.argv[1:]) as p:
                _ = p | beam.Create([1, 2, 3]) | beam.ParDo(Double()) | beam.Map(lambda x: x)
            logging.getLogger("beam_jobs.driver").warning("a warning of the job")
            print("job done: 3 elements")
    """)
    )
    recorder = Recorder()
    hook = beam_task_logs.LeveledBeamHook(runner="DirectRunner")
    hook._log = recorder  # what LoggingMixin.log returns once set: the hook logs here
    hook._start_pipeline(variables={}, command_prefix=[sys.executable, str(job)])
    levels = {message: level for level, message in recorder.records}
    assert levels["job done: 3 elements"] == "INFO"
    assert levels["beam_jobs.driver: a warning of the job"] == "WARNING"
    assert not [m for m in levels if "Converting string literal type hint" in m], recorder.records
    warnings = [m for level, m in recorder.records if level != "INFO"]
    assert warnings == ["beam_jobs.driver: a warning of the job"], recorder.records
    assert any(m.startswith("apache_beam.") for m in levels), recorder.records


def test_the_operator_uses_the_leveled_hook_and_does_not_warn_about_dataflow_config(beam_task_logs):
    """The DAGs always pass a dataflow_config (the runner is configuration); on DirectRunner
    the provider warned about it on every run."""
    op = beam_task_logs.BeamJobOperator(
        task_id="embed_x",
        py_file="job.py",
        runner="DirectRunner",
        dataflow_config={"project_id": "p", "location": "europe-west4"},
    )
    op._log = recorder = Recorder()
    op._cast_dataflow_config()
    assert recorder.records == [] and op.dataflow_config.job_name == "embed_x"
    op._init_pipeline_options()
    assert isinstance(op.beam_hook, beam_task_logs.LeveledBeamHook)
