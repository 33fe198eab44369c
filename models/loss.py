"""In-batch retrieval losses over the [batch, batch] score matrix.

Row i holds user i's scores for every story in the batch; story i is user i's positive
(the diagonal), the batch's other stories are its negatives. Off-diagonal entries whose
story id equals the row's positive ("accidental hits": a popular story twice in a batch)
are not negatives and are left out of the loss.

- "sigmoid" (the seed's loss): binary cross-entropy on every (user, story) pair, summed
  over the pairs of a row that count, then averaged over rows (as SigLIP does: averaging
  over the row instead would scale the positive's gradient by 1/batch). A learnable scalar
  bias is added to the logits: with one positive and B-1 negatives per row the logits need
  an offset that the scale of normalised dot products cannot give; it does not change
  rankings.
- "softmax": cross-entropy of the diagonal against its row.

Both divide the dot products by a temperature and, with `candidate_log_q`, subtract
`logq_strength` times the log of each story's sampling probability (logQ correction:
popular stories are in-batch negatives more often than their share of the catalogue,
which otherwise pushes them down; strength 0 is no correction, 1 the full one).
"""

from __future__ import annotations

import tensorflow as tf

MASKED_LOGIT = -1e9


def in_batch_loss(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    candidate_ids: tf.Tensor,
    *,
    temperature: float,
    loss: str = "sigmoid",
    candidate_log_q: tf.Tensor | None = None,
    logq_strength: float = 1.0,
    sample_weight: tf.Tensor | None = None,
    sigmoid_bias: tf.Tensor | float = 0.0,
) -> tf.Tensor:
    """The mean in-batch loss.

    Args:
      query_embeddings: [batch, dim] user embeddings (L2-normalised).
      candidate_embeddings: [batch, dim] story embeddings; row i is query i's positive.
      candidate_ids: [batch] story ids, to find accidental hits.
      temperature: logits are dot products divided by this.
      loss: "sigmoid" or "softmax".
      candidate_log_q: [batch] log sampling probability of each candidate, or None.
      logq_strength: the logits subtract this times `candidate_log_q`.
      sample_weight: [batch] weight of each row, or None for equal weights.
      sigmoid_bias: added to the logits of the sigmoid loss.

    Returns:
      A scalar: the (weighted) mean over rows of each row's loss.
    """
    logits = tf.matmul(query_embeddings, candidate_embeddings, transpose_b=True) / temperature
    if candidate_log_q is not None and logq_strength:
        logits -= logq_strength * tf.cast(candidate_log_q, logits.dtype)[tf.newaxis, :]
    batch = tf.shape(logits)[0]
    diagonal = tf.eye(batch, dtype=tf.bool)
    same_story = tf.equal(candidate_ids[:, tf.newaxis], candidate_ids[tf.newaxis, :])
    counts = tf.logical_not(tf.logical_and(same_story, tf.logical_not(diagonal)))
    labels = tf.cast(diagonal, logits.dtype)

    if loss == "softmax":
        masked = tf.where(counts, logits, tf.constant(MASKED_LOGIT, logits.dtype))
        per_row = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=masked)
    elif loss == "sigmoid":
        per_pair = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits + sigmoid_bias)
        per_row = tf.reduce_sum(per_pair * tf.cast(counts, logits.dtype), axis=1)
    else:
        raise ValueError(f"loss must be 'sigmoid' or 'softmax', not {loss!r}")

    if sample_weight is None:
        return tf.reduce_mean(per_row)
    sample_weight = tf.cast(sample_weight, per_row.dtype)
    return tf.reduce_sum(per_row * sample_weight) / tf.maximum(tf.reduce_sum(sample_weight), 1e-9)


def pointwise_loss(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    labels: tf.Tensor,
    *,
    temperature: float,
    bias: tf.Tensor | float = 0.0,
    sample_weight: tf.Tensor | None = None,
) -> tf.Tensor:
    """Sigmoid cross-entropy on (user, shown story, engaged?) rows: no in-batch negatives.

    Args:
      query_embeddings, candidate_embeddings: [batch, dim]; row i is one impression.
      labels: [batch] 1.0 for an engaged impression, 0.0 otherwise.
    """
    logits = tf.reduce_sum(query_embeddings * candidate_embeddings, axis=1) / temperature + bias
    per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits)
    if sample_weight is None:
        return tf.reduce_mean(per_row)
    sample_weight = tf.cast(sample_weight, per_row.dtype)
    return tf.reduce_sum(per_row * sample_weight) / tf.maximum(tf.reduce_sum(sample_weight), 1e-9)
