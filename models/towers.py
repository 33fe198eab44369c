"""The user tower and the story tower, as the seed describes them.

Input layer: dense statistics normalised (a Normalization layer adapted on training
data), sparse ids embedded through vocabularies with an out-of-vocabulary row (unseen
ids at inference map there), sequences average-pooled over their non-padding entries
(or, with `sequence_encoder = "transformer"`, the story/creator history encoded by
self-attention first: `HistoryTransformer`).
Representation layer: a ResNet-style MLP and a deep cross network (`tfrs.layers.dcn.Cross`)
over the same concatenated input, each projected to the output size and summed.
Output: L2-normalised [batch, output_dim].

Story ids, creator ids and hashtags have one embedding table each, shared by the two
towers (the user's history sequences and the story's own ids look up the same rows), so
what the model learns about a story from being engaged with carries over to matching it.
Each exported tower carries its own copy of the shared tables.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from config import ModelConfig

PAD = ""


PAD_INDEX = 0
OOV_INDEX = 1


class IdEmbedding(tf.keras.layers.Layer):
    """String ids -> embeddings. "" is padding (row 0, masked by callers); unseen ids
    share one out-of-vocabulary row (row 1); the vocabulary's ids are rows 2...

    An empty vocabulary (e.g. a dataset without hashtags) is allowed: every id but ""
    maps to the out-of-vocabulary row.
    """

    def __init__(self, vocabulary: list[str], dim: int, **kwargs):
        super().__init__(**kwargs)
        vocabulary = [v for v in vocabulary if v != PAD]
        # StringLookup refuses an empty vocabulary ("Cannot set an empty vocabulary").
        self.lookup = (
            tf.keras.layers.StringLookup(vocabulary=vocabulary, mask_token=PAD, num_oov_indices=1)
            if vocabulary
            else None
        )
        self.embedding = tf.keras.layers.Embedding(len(vocabulary) + 2, dim)

    def index(self, ids: tf.Tensor) -> tf.Tensor:
        """Row of each id: int64, the shape of `ids`."""
        if self.lookup is None:
            return tf.where(tf.equal(ids, PAD), tf.constant(PAD_INDEX, tf.int64), tf.constant(OOV_INDEX, tf.int64))
        return self.lookup(ids)

    def call(self, ids: tf.Tensor) -> tf.Tensor:
        return self.embedding(self.index(ids))


def drop_to_oov(index: tf.Tensor, rate: float, training: bool) -> tf.Tensor:
    """Training only: each non-padding row index becomes OOV_INDEX with probability `rate`."""
    if not training or rate <= 0:
        return index
    dropped = tf.random.uniform(tf.shape(index)) < rate
    return tf.where(tf.logical_and(dropped, tf.not_equal(index, PAD_INDEX)), tf.constant(OOV_INDEX, index.dtype), index)


def masked_mean(embeddings: tf.Tensor, ids: tf.Tensor) -> tf.Tensor:
    """Average of embeddings [batch, n, dim] over positions whose id is not padding."""
    return mean_over_valid(embeddings, tf.not_equal(ids, PAD))


def mean_over_valid(values: tf.Tensor, valid: tf.Tensor) -> tf.Tensor:
    """Average of values [batch, n, dim] over positions where valid [batch, n] is true;
    zeros for a row with none. Invalid positions contribute nothing, whatever they hold."""
    mask = tf.cast(valid, values.dtype)[:, :, tf.newaxis]
    return tf.reduce_sum(tf.where(mask > 0, values, tf.zeros_like(values)), axis=1) / tf.maximum(
        tf.reduce_sum(mask, axis=1), 1.0
    )


class HistoryTransformer(tf.keras.layers.Layer):
    """Self-attention over the user's history sequence -> [batch, dim].

    Input tokens [batch, n, dim] (story + creator embedding per engaged story) and a
    `valid` mask [batch, n] (false = padding). The sequence is most recent first, so the
    learned position embedding is a recency embedding. Pre-norm Transformer blocks
    (attention, then a ReLU feed-forward layer, each residual); padding is masked as an
    attention key, so it never reaches a real position, and the output is the mean over
    real positions only. A history that is all padding gives zeros.
    """

    def __init__(self, cfg: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.cfg = cfg
        self.blocks = []

    def build(self, input_shape):
        length, dim = int(input_shape[1]), int(input_shape[2])
        cfg = self.cfg
        self.positions = (
            self.add_weight(
                name="position_embedding",
                shape=(length, dim),
                initializer=tf.keras.initializers.TruncatedNormal(stddev=0.02),
            )
            if cfg.transformer_positions
            else None
        )
        for i in range(cfg.transformer_layers):
            self.blocks.append(
                (
                    tf.keras.layers.LayerNormalization(name=f"attention_norm_{i}"),
                    tf.keras.layers.MultiHeadAttention(
                        num_heads=cfg.transformer_heads,
                        key_dim=max(dim // cfg.transformer_heads, 1),
                        dropout=cfg.transformer_dropout,
                        name=f"attention_{i}",
                    ),
                    tf.keras.layers.LayerNormalization(name=f"feed_forward_norm_{i}"),
                    tf.keras.layers.Dense(cfg.transformer_ff_dim, activation="relu", name=f"feed_forward_{i}"),
                    tf.keras.layers.Dense(dim, name=f"feed_forward_output_{i}"),
                    tf.keras.layers.Dropout(cfg.transformer_dropout),
                )
            )
        self.gates = (
            [
                self.add_weight(name=f"rezero_{i}", shape=(2,), initializer="zeros")
                for i in range(cfg.transformer_layers)
            ]
            if cfg.transformer_rezero
            else None
        )
        self.output_norm = (
            tf.keras.layers.LayerNormalization(name="output_norm") if cfg.transformer_output_norm else None
        )
        super().build(input_shape)

    def call(self, tokens: tf.Tensor, valid: tf.Tensor, training: bool = False) -> tf.Tensor:
        x = tokens if self.positions is None else tokens + self.positions[tf.newaxis, :, :]
        # [batch, query, key]: any query may attend to the real keys only. A row with no
        # real key attends uniformly to padding (finite), and is dropped by the mean below.
        attend = tf.logical_and(valid[:, tf.newaxis, :], tf.ones_like(valid)[:, :, tf.newaxis])
        for i, (attention_norm, attention, ff_norm, ff, ff_output, dropout) in enumerate(self.blocks):
            h = attention_norm(x)
            update = dropout(attention(h, h, attention_mask=attend, training=training), training=training)
            x = x + (update if self.gates is None else self.gates[i][0] * update)
            update = dropout(ff_output(ff(ff_norm(x))), training=training)
            x = x + (update if self.gates is None else self.gates[i][1] * update)
        return mean_over_valid(x if self.output_norm is None else self.output_norm(x), valid)


class Representation(tf.keras.layers.Layer):
    """ResNet MLP + deep cross network over the same input, summed: [batch, output_dim]."""

    def __init__(self, cfg: ModelConfig, output_dim: int | None = None, **kwargs):
        super().__init__(**kwargs)
        output_dim = output_dim or cfg.output_dim
        self.input_projection = tf.keras.layers.Dense(cfg.mlp_width)
        self.blocks = [
            (
                tf.keras.layers.Dense(cfg.mlp_width, activation="relu"),
                tf.keras.layers.Dropout(cfg.dropout),
                tf.keras.layers.Dense(cfg.mlp_width),
                tf.keras.layers.LayerNormalization(),
            )
            for _ in range(cfg.resnet_blocks)
        ]
        self.mlp_output = tf.keras.layers.Dense(output_dim)
        self.crosses = [tfrs.layers.dcn.Cross(projection_dim=cfg.cross_projection_dim) for _ in range(cfg.cross_layers)]
        self.cross_output = tf.keras.layers.Dense(output_dim)

    def call(self, x: tf.Tensor, training: bool = False) -> tf.Tensor:
        h = self.input_projection(x)
        for expand, dropout, project, norm in self.blocks:
            h = norm(h + project(dropout(expand(h), training=training)))
        crossed = x
        for cross in self.crosses:
            crossed = cross(x, crossed)
        return self.mlp_output(h) + self.cross_output(crossed)


class PopularityPrior(tf.keras.layers.Layer):
    """`ModelConfig.popularity_prior`: a scalar in (-1, 1) from a linear map of the input,
    appended to a unit vector of dim - 1 scaled by sqrt(1 - scalar^2) (the output keeps unit
    norm, so an inner-product index ranks user . story = sqrt((1 - a^2)(1 - b^2)) cos + a b).
    The user side's map starts with a bias of 0.5 (a around tanh(0.5), its kernel random), not
    0: with both scalars at 0 neither would get a gradient."""

    def __init__(self, bias_init: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.linear = tf.keras.layers.Dense(
            1, bias_initializer=tf.keras.initializers.Constant(bias_init), name="linear"
        )

    def call(self, x: tf.Tensor, unit: tf.Tensor) -> tf.Tensor:
        # 0.999: keeps sqrt(1 - s^2) away from 0 (its gradient is infinite there).
        scalar = 0.999 * tf.tanh(self.linear(x))
        return tf.concat([tf.sqrt(1.0 - tf.square(scalar)) * unit, scalar], axis=1)


def tower_output_dims(cfg: ModelConfig) -> int:
    """The representation's size: output_dim, less the prior's dimension when it is on."""
    return cfg.output_dim - 1 if cfg.popularity_prior else cfg.output_dim


class SharedEmbeddings(tf.keras.layers.Layer):
    """The id tables both towers use (see the module docstring).

    A Layer, not a plain object, so that each tower tracks (and exports) the tables.
    """

    def __init__(self, vocabularies: dict[str, list[str]], cfg: ModelConfig, **kwargs):
        super().__init__(name="shared_embeddings", **kwargs)
        self.story = IdEmbedding(vocabularies["story_id"], cfg.id_embedding_dim, name="story_id_embedding")
        self.creator = IdEmbedding(vocabularies["creator_id"], cfg.id_embedding_dim, name="creator_id_embedding")
        self.hashtag = IdEmbedding(vocabularies["hashtag"], cfg.small_embedding_dim * 2, name="hashtag_embedding")
        self.country = IdEmbedding(vocabularies["country"], cfg.small_embedding_dim, name="country_embedding")
        self.language = IdEmbedding(vocabularies["language"], cfg.small_embedding_dim, name="language_embedding")


class UserTower(tf.keras.Model):
    """user_id, country, language, age_bucket, user_stats, history_* -> [batch, output_dim]."""

    def __init__(
        self, vocabularies: dict[str, list[str]], shared: SharedEmbeddings, stats_dim: int, cfg: ModelConfig, **kwargs
    ):
        super().__init__(**kwargs)
        self.shared = shared
        self.user_id = IdEmbedding(vocabularies["user_id"], cfg.id_embedding_dim, name="user_id_embedding")
        self.age_bucket = IdEmbedding(vocabularies["age_bucket"], cfg.small_embedding_dim, name="age_bucket_embedding")
        self.stats_norm = tf.keras.layers.Normalization(axis=-1, name="user_stats_normalization")
        self.stats_norm.build((None, stats_dim))
        self.representation = Representation(cfg, tower_output_dims(cfg), name="user_representation")
        self.prior = PopularityPrior(0.5, name="user_popularity_prior") if cfg.popularity_prior else None
        self.history_encoder = (
            HistoryTransformer(cfg, name="history_transformer") if cfg.sequence_encoder == "transformer" else None
        )

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        s = self.shared
        story_ids, creator_ids = inputs["history_story_ids"], inputs["history_creator_ids"]
        if self.history_encoder is None:
            history = [masked_mean(s.story(story_ids), story_ids), masked_mean(s.creator(creator_ids), creator_ids)]
        else:  # a position is padding when its story is
            history = [
                self.history_encoder(
                    s.story(story_ids) + s.creator(creator_ids), tf.not_equal(story_ids, PAD), training=training
                )
            ]
        parts = [
            self.user_id(inputs["user_id"]),
            s.country(inputs["country"]),
            s.language(inputs["language"]),
            self.age_bucket(inputs["age_bucket"]),
            self.stats_norm(inputs["user_stats"]),
            *history,
            masked_mean(s.hashtag(inputs["history_hashtags"]), inputs["history_hashtags"]),
        ]
        x = tf.concat(parts, axis=1)
        unit = tf.math.l2_normalize(self.representation(x, training=training), axis=1)
        return unit if self.prior is None else self.prior(x, unit)


class StoryTower(tf.keras.Model):
    """story_id, creator_id, country, language, hashtags, content_embedding, story_stats.

    Id dropout (`cfg.id_dropout`, `cfg.creator_id_dropout`): in training, the story's own
    ids are sometimes looked up as out-of-vocabulary (see `drop_to_oov`); the user tower's
    history lookups of the same tables are never dropped.
    """

    def __init__(self, shared: SharedEmbeddings, stats_dim: int, content_dim: int, cfg: ModelConfig, **kwargs):
        super().__init__(**kwargs)
        self.shared = shared
        self.id_dropout = cfg.id_dropout
        self.creator_id_dropout = cfg.creator_id_dropout
        self.content_dim = content_dim
        self.stats_norm = tf.keras.layers.Normalization(axis=-1, name="story_stats_normalization")
        self.stats_norm.build((None, stats_dim))
        self.representation = Representation(cfg, tower_output_dims(cfg), name="story_representation")
        self.prior = PopularityPrior(name="story_popularity_prior") if cfg.popularity_prior else None

    def call(self, inputs: dict[str, tf.Tensor], training: bool = False) -> tf.Tensor:
        s = self.shared
        parts = [
            s.story.embedding(drop_to_oov(s.story.index(inputs["story_id"]), self.id_dropout, training)),
            s.creator.embedding(drop_to_oov(s.creator.index(inputs["creator_id"]), self.creator_id_dropout, training)),
            s.country(inputs["country"]),
            s.language(inputs["language"]),
            masked_mean(s.hashtag(inputs["hashtags"]), inputs["hashtags"]),
        ]
        stats = self.stats_norm(inputs["story_stats"])
        parts.append(stats)
        if self.content_dim:
            parts.append(tf.cast(inputs["content_embedding"], tf.float32))
        unit = tf.math.l2_normalize(self.representation(tf.concat(parts, axis=1), training=training), axis=1)
        # The story's prior reads its statistics only (counts, age): what a story's id or
        # content says about it is the representation's part.
        return unit if self.prior is None else self.prior(stats, unit)


def adapt_normalization(layer: tf.keras.layers.Normalization, values: np.ndarray) -> None:
    """Sets mean and variance from training statistics (no look at evaluation data)."""
    layer.adapt(values.astype(np.float32))
