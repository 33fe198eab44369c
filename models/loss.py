"""In-batch retrieval losses over the [batch, batch (+ corpus)] score matrix.

Row i holds user i's scores for every story in the batch; story i is user i's positive
(the diagonal), the batch's other stories are its negatives. Off-diagonal entries whose
story id equals the row's positive ("accidental hits": a popular story twice in a batch)
are not negatives and are left out of the loss.

Mixed negatives (Yang et al. 2020, "Mixed Negative Sampling for Learning Two-tower Neural
Networks in Recommendations"): N more candidates, sampled from the whole corpus, are
negatives of every row, giving [batch, batch + N] logits. In-batch negatives follow the
training positives' (unigram) distribution and so rarely include the long tail; the
corpus samples do. A corpus sample equal to the row's positive is an accidental hit too.

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
which otherwise pushes them down; strength 0 is no correction, 1 the full one). With mixed
negatives every candidate's probability is the one under the mixed distribution
(`mixed_log_q`).
"""

from __future__ import annotations

import tensorflow as tf

MASKED_LOGIT = -1e9


def mixed_log_q(
    batch_log_q: tf.Tensor, corpus_log_q: tf.Tensor, corpus_unigram_log_q: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor]:
    """Log sampling probability of each candidate under the mixed distribution.

    One candidate slot out of B + N holds story y with probability

        q*(y) = (B * q_batch(y) + N * q_corpus(y)) / (B + N)

    (the paper's mixture), where q_batch is the training positives' distribution (what
    "log_q" gives for the batch) and q_corpus the corpus sampler's. The corpus sampler is
    taken to be uniform, so q_corpus of an in-batch story is the value every corpus sample
    has (their mean is used).

    Args:
      batch_log_q: [B] log q_batch of the batch's stories.
      corpus_log_q: [N] log q_corpus of the corpus samples (uniform: log(1 / corpus size)).
      corpus_unigram_log_q: [N] log q_batch of the corpus samples (what "log_q" would be
        for them: a popular story is often an in-batch negative as well).

    Returns:
      ([B], [N]): log q* of the in-batch candidates and of the corpus samples.
    """
    batch_log_q = tf.cast(batch_log_q, tf.float32)
    corpus_log_q = tf.cast(corpus_log_q, tf.float32)
    corpus_unigram_log_q = tf.cast(corpus_unigram_log_q, tf.float32)
    b = tf.cast(tf.shape(batch_log_q)[0], tf.float32)
    n = tf.cast(tf.shape(corpus_log_q)[0], tf.float32)
    uniform = tf.fill(tf.shape(batch_log_q), tf.reduce_mean(corpus_log_q))

    def mix(log_q_batch, log_q_corpus):
        both = tf.stack([tf.math.log(b) + log_q_batch, tf.math.log(n) + log_q_corpus])
        return tf.reduce_logsumexp(both, axis=0) - tf.math.log(b + n)

    return mix(batch_log_q, uniform), mix(corpus_unigram_log_q, corpus_log_q)


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
    extra_candidate_embeddings: tf.Tensor | None = None,
    extra_candidate_ids: tf.Tensor | None = None,
    extra_candidate_log_q: tf.Tensor | None = None,
    weight_total: tf.Tensor | None = None,
) -> tf.Tensor:
    """The mean in-batch loss, optionally with extra (corpus) negatives.

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
      extra_candidate_embeddings: [n, dim] more stories, negatives of every row (mixed
        negatives); None for in-batch negatives only.
      extra_candidate_ids: [n] their story ids: one equal to row i's positive is masked
        in row i. Required with `extra_candidate_embeddings`.
      extra_candidate_log_q: [n] their log sampling probability; required when
        `candidate_log_q` is given (both then under the same, mixed, distribution).
      weight_total: the denominator of the weighted mean; None: this batch's weight sum
        (or row count). A replica of a distributed step passes the global batch's, so
        that the replicas' losses (and gradients) sum to the global batch's mean.

    Returns:
      A scalar: the (weighted) mean over rows of each row's loss.
    """
    logits = tf.matmul(query_embeddings, candidate_embeddings, transpose_b=True) / temperature
    batch = tf.shape(logits)[0]
    diagonal = tf.eye(batch, dtype=tf.bool)
    same_story = tf.equal(candidate_ids[:, tf.newaxis], candidate_ids[tf.newaxis, :])
    counts = tf.logical_not(tf.logical_and(same_story, tf.logical_not(diagonal)))
    log_q = candidate_log_q
    if extra_candidate_embeddings is not None:
        if extra_candidate_ids is None:
            raise ValueError(
                "extra_candidate_ids is required with extra_candidate_embeddings (to mask accidental hits)"
            )
        if candidate_log_q is not None and extra_candidate_log_q is None:
            raise ValueError(
                "extra_candidate_log_q is required when candidate_log_q is given: every candidate needs one"
            )
        extra_logits = tf.matmul(query_embeddings, extra_candidate_embeddings, transpose_b=True) / temperature
        logits = tf.concat([logits, extra_logits], axis=1)
        extra_hit = tf.equal(candidate_ids[:, tf.newaxis], extra_candidate_ids[tf.newaxis, :])
        counts = tf.concat([counts, tf.logical_not(extra_hit)], axis=1)
        diagonal = tf.concat([diagonal, tf.zeros_like(extra_hit)], axis=1)
        if candidate_log_q is not None:
            log_q = tf.concat(
                [tf.cast(candidate_log_q, logits.dtype), tf.cast(extra_candidate_log_q, logits.dtype)], axis=0
            )
    if log_q is not None and logq_strength:
        logits -= logq_strength * tf.cast(log_q, logits.dtype)[tf.newaxis, :]
    labels = tf.cast(diagonal, logits.dtype)

    if loss == "softmax":
        masked = tf.where(counts, logits, tf.constant(MASKED_LOGIT, logits.dtype))
        per_row = tf.nn.softmax_cross_entropy_with_logits(labels=labels, logits=masked)
    elif loss == "sigmoid":
        per_pair = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits + sigmoid_bias)
        per_row = tf.reduce_sum(per_pair * tf.cast(counts, logits.dtype), axis=1)
    else:
        raise ValueError(f"loss must be 'sigmoid' or 'softmax', not {loss!r}")

    return _weighted_mean(per_row, sample_weight, weight_total)


def _weighted_mean(per_row: tf.Tensor, sample_weight: tf.Tensor | None, weight_total: tf.Tensor | None) -> tf.Tensor:
    weights = tf.ones_like(per_row) if sample_weight is None else tf.cast(sample_weight, per_row.dtype)
    total = tf.reduce_sum(weights) if weight_total is None else tf.cast(weight_total, per_row.dtype)
    return tf.reduce_sum(per_row * weights) / tf.maximum(total, 1e-9)


def pointwise_loss(
    query_embeddings: tf.Tensor,
    candidate_embeddings: tf.Tensor,
    labels: tf.Tensor,
    *,
    temperature: float,
    bias: tf.Tensor | float = 0.0,
    sample_weight: tf.Tensor | None = None,
    weight_total: tf.Tensor | None = None,
) -> tf.Tensor:
    """Sigmoid cross-entropy on (user, shown story, engaged?) rows: no in-batch negatives.

    Args:
      query_embeddings, candidate_embeddings: [batch, dim]; row i is one impression.
      labels: [batch] 1.0 for an engaged impression, 0.0 otherwise.
      weight_total: as for `in_batch_loss`.
    """
    logits = tf.reduce_sum(query_embeddings * candidate_embeddings, axis=1) / temperature + bias
    per_row = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(labels, logits.dtype), logits=logits)
    return _weighted_mean(per_row, sample_weight, weight_total)
