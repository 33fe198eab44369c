"""The two-tower model: both towers, the in-batch loss, and the learning-rate schedule."""

from __future__ import annotations

import math

import tensorflow as tf
import tensorflow_recommenders as tfrs

from config import ModelConfig
from models.loss import in_batch_loss, mixed_log_q, pointwise_loss
from models.towers import SharedEmbeddings, StoryTower, UserTower


class TwoTowerModel(tfrs.models.Model):
    """Scores a user and a story by the dot product of their L2-normalised tower outputs.

    `compute_loss` takes a batch of B rows:

        "user"      {USER_INPUTS: [B, ...]}   user-tower inputs (`models.features`)
        "story"     {STORY_INPUTS: [B, ...]}  story-tower inputs; story i is user i's positive
        "log_q"     float32 [B]   log probability that an example's story is this one (the
                                  training positives' distribution: count / examples)
        "weight"    float32 [B]   each row's weight
        "label"     float32 [B]   impression negatives only: 1.0 if the impression was engaged

    With in-batch negatives story i is user i's positive and the batch's other stories
    are its negatives (see `models.loss`); with impression negatives each row is one
    impression and "label" says if it was engaged.

    Mixed negatives (`cfg.corpus_negatives` = N > 0; in-batch negatives only) add N stories
    drawn uniformly from the candidate corpus, negatives of every row:

        "corpus_story"          {STORY_INPUTS: [N, ...]}  their story-tower inputs, as of the
                                                          batch's earliest example time (so
                                                          no row's negatives see its future)
        "corpus_log_q"          float32 [N]  log probability of the corpus sampler for each:
                                             log(1 / corpus size) for uniform sampling
        "corpus_unigram_log_q"  float32 [N]  what "log_q" gives for the same stories (a story
                                             sampled from the corpus may also be an in-batch
                                             negative); needed when logq_strength > 0

    The logQ correction then uses each candidate's probability under the mixed distribution
    q*(y) = (B q_batch(y) + N q_corpus(y)) / (B + N) (`models.loss.mixed_log_q`), the same for a
    story whether it came from the batch or the corpus. A corpus sample equal to a row's
    positive is masked in that row.
    """

    def __init__(
        self,
        vocabularies: dict[str, list[str]],
        user_stats_dim: int,
        story_stats_dim: int,
        content_dim: int,
        cfg: ModelConfig,
    ):
        super().__init__()
        self.cfg = cfg
        shared = SharedEmbeddings(vocabularies, cfg)
        self.user_tower = UserTower(vocabularies, shared, user_stats_dim, cfg, name="user_tower")
        self.story_tower = StoryTower(shared, story_stats_dim, content_dim, cfg, name="story_tower")
        # SigLIP-style bias for the sigmoid loss: one positive among B-1 negatives per row.
        uses_bias = cfg.loss == "sigmoid" or cfg.negatives == "impressions"
        self.sigmoid_bias = tf.Variable(cfg.sigmoid_bias_init, trainable=uses_bias, name="sigmoid_bias")

    def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
        query = self.user_tower(inputs["user"], training=training)
        replicas = _replica_context()
        # Across replicas each returns its share of the global batch's mean (the optimizer
        # sums the replicas' gradients): the denominator is the global weight sum.
        weight_total = (
            None
            if replicas is None
            else replicas.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(tf.reduce_sum(inputs["weight"])))
        )
        if self.cfg.negatives == "impressions":
            candidate = self.story_tower(inputs["story"], training=training)
            return pointwise_loss(
                query,
                candidate,
                inputs["label"],
                temperature=self.cfg.temperature,
                bias=self.sigmoid_bias,
                sample_weight=inputs["weight"],
                weight_total=weight_total,
            )
        corpus = inputs.get("corpus_story")
        if self.cfg.corpus_negatives and corpus is None:
            raise KeyError(
                f"model.corpus_negatives = {self.cfg.corpus_negatives} but the batch has no 'corpus_story': "
                "the example source must add the corpus samples (keys in TwoTowerModel's docstring)"
            )
        if corpus is not None and replicas is not None:
            raise ValueError(
                "model.corpus_negatives is not supported in distributed training (train.workers > 1) yet: set it to 0"
            )
        log_q, extra, extra_ids, extra_log_q = inputs["log_q"], None, None, None
        ids = inputs["story"]["story_id"]
        if corpus is None:
            candidate = self.story_tower(inputs["story"], training=training)
            if replicas is not None:
                ids, extra, extra_ids, extra_log_q = _other_replicas_candidates(replicas, candidate, ids, log_q)
        else:  # one pass of the story tower over batch and corpus stories
            both = {k: tf.concat([inputs["story"][k], corpus[k]], axis=0) for k in inputs["story"]}
            batch_size = tf.shape(query)[0]
            encoded = self.story_tower(both, training=training)
            candidate, extra = encoded[:batch_size], encoded[batch_size:]
            extra_ids = corpus["story_id"]
            if self.cfg.logq_strength:
                if "corpus_unigram_log_q" not in inputs:
                    raise KeyError(
                        "the batch has 'corpus_story' but no 'corpus_unigram_log_q', which the logQ correction needs (logq_strength > 0)"
                    )
                log_q, extra_log_q = mixed_log_q(log_q, inputs["corpus_log_q"], inputs["corpus_unigram_log_q"])
        return in_batch_loss(
            query,
            candidate,
            ids,
            temperature=self.cfg.temperature,
            loss=self.cfg.loss,
            candidate_log_q=log_q if self.cfg.logq_strength else None,
            logq_strength=self.cfg.logq_strength,
            sample_weight=inputs["weight"],
            sigmoid_bias=self.sigmoid_bias,
            extra_candidate_embeddings=extra,
            extra_candidate_ids=extra_ids,
            extra_candidate_log_q=extra_log_q,
            weight_total=weight_total,
        )


def _replica_context() -> tf.distribute.ReplicaContext | None:
    """The replica context of a distributed step with more than one replica, else None."""
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync <= 1:
        return None
    return context


def _other_replicas_candidates(
    replicas: tf.distribute.ReplicaContext, candidate: tf.Tensor, ids: tf.Tensor, log_q: tf.Tensor
):
    """In-batch negatives across the global batch: the other replicas' stories.

    Every replica gathers all replicas' story embeddings, ids and log q and keeps the
    others' as extra negatives of its rows, so each row meets the global batch's B*R - 1
    negatives, as in one process. all_gather has a gradient (an all-reduce, then this
    replica's slice), so the other replicas' rows train this replica's stories too.
    Story ids are compared as 64-bit hashes: collectives do not carry strings.

    Returns (this batch's ids as hashes, [(R-1)*B, dim] embeddings, [(R-1)*B] hashed ids,
    [(R-1)*B] log q).
    """
    hashed = tf.strings.to_hash_bucket_fast(ids, 2**62)
    # One gather per value (a batched gather packs them into one tensor: one dtype), in
    # the same order on every replica. tf.identity gives each value a device, which the
    # collective needs as its destination ("destinations can not be empty" otherwise).
    gathered, gathered_ids, gathered_log_q = (
        replicas.all_gather(tf.identity(v), axis=0) for v in (candidate, hashed, tf.cast(log_q, tf.float32))
    )
    n = tf.shape(candidate)[0]
    start = tf.cast(replicas.replica_id_in_sync_group, tf.int32) * n

    def others(values: tf.Tensor) -> tf.Tensor:
        return tf.concat([values[:start], values[start + n :]], axis=0)

    return hashed, others(gathered), others(gathered_ids), others(gathered_log_q)


class WarmupCosine(tf.keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak` over `warmup_steps`, then a cosine down to `floor * peak` at
    `total_steps`, constant after that. Counted in optimisation steps (see TrainConfig)."""

    def __init__(self, peak: float, total_steps: int, warmup_steps: int, floor: float = 0.0):
        self.peak = peak
        self.total_steps = max(int(total_steps), 1)
        self.warmup_steps = max(int(warmup_steps), 1)
        self.floor = float(floor)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        warm = self.peak * (step + 1.0) / self.warmup_steps
        progress = tf.clip_by_value((step - self.warmup_steps) / max(self.total_steps - self.warmup_steps, 1), 0.0, 1.0)
        low = self.floor * self.peak
        cosine = low + 0.5 * (self.peak - low) * (1.0 + tf.cos(math.pi * progress))
        return tf.where(step < self.warmup_steps, warm, cosine)

    def get_config(self):
        return {
            "peak": self.peak,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "floor": self.floor,
        }
