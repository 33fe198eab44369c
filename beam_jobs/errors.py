"""Errors of the embedding jobs (no Beam import: the CLI classifies them cheaply)."""


class EmbeddingJobError(RuntimeError):
    """A job could not run or refused to publish; the message says why and what to do."""


class ErrorRateExceededError(EmbeddingJobError):
    """More records were dead-lettered than `embed.max_error_rate` allows."""
