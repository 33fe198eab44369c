"""Apache Beam embedding dataflows: user tower every few hours, story tower frequently.

`beam_jobs.user_embeddings` and `beam_jobs.story_embeddings` each have `run(argv=None)`;
the runner (DirectRunner here, Dataflow / Flink / Spark at scale) is a flag.
"""
