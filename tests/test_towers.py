"""The towers' options on inputs small enough to read: vocabularies, id dropout, export."""

import numpy as np
import pytest
import tensorflow as tf

from config import load_config
from models.export import export_towers
from models.features import story_stat_names, user_stat_names
from models.tower_runner import TowerRunner
from models.towers import OOV_INDEX, IdEmbedding, mean_over_valid
from models.two_tower import TwoTowerModel

HISTORY = 4  # features.history_length
SMALL = [
    "features.history_length=4",
    "features.hashtag_history_stories=2",
    "features.story_hashtags=2",
    "model.output_dim=8",
    "model.id_embedding_dim=8",
    "model.small_embedding_dim=4",
    "model.mlp_width=16",
    "model.resnet_blocks=1",
    "model.cross_layers=1",
    "model.cross_projection_dim=4",
    "model.dropout=0.0",
]
VOCABULARIES = {
    "user_id": ["u0", "u1", "u2"],
    "story_id": ["s0", "s1", "s2", "s3", "s4"],
    "creator_id": ["c0", "c1"],
    "hashtag": ["#cats", "#food"],
    "country": ["DE", "US"],
    "language": ["de", "en"],
    "age_bucket": ["18-24", "25-34"],
}
CONTENT_DIM = 3


def config(tmp_path, *overrides):
    return load_config(overrides=[f"root=file://{tmp_path}", *SMALL, *overrides], environ={})


def build_model(cfg, vocabularies=VOCABULARIES):
    f = cfg.features
    return TwoTowerModel(vocabularies, len(user_stat_names(f)), len(story_stat_names(f)), CONTENT_DIM, cfg.model)


def user_inputs(cfg, history_story_ids):
    """Three users; `history_story_ids` is a [3, HISTORY] list of lists ("" = padding)."""
    f = cfg.features
    stories = np.array(history_story_ids, dtype=object)
    creators = np.where(stories == "", "", "c0").astype(object)
    tags = np.full((3, f.hashtag_history_stories * f.story_hashtags), "#cats", dtype=object)
    tags[2] = ""
    return {
        "user_id": np.array(["u0", "u1", "never-seen"], dtype=object),
        "country": np.array(["DE", "US", "DE"], dtype=object),
        "language": np.array(["de", "en", "de"], dtype=object),
        "age_bucket": np.array(["18-24", "25-34", "18-24"], dtype=object),
        "user_stats": np.linspace(0, 1, 3 * len(user_stat_names(f)), dtype=np.float32).reshape(3, -1),
        "history_story_ids": stories,
        "history_creator_ids": creators,
        "history_hashtags": tags,
    }


HISTORIES = [["s1", "s2", "", ""], ["s3", "s4", "s0", "s1"], ["", "", "", ""]]


def story_inputs(cfg, story_ids=("s0", "s1", "never-seen")):
    f = cfg.features
    n = len(story_ids)
    return {
        "story_id": np.array(story_ids, dtype=object),
        "creator_id": np.array(["c0", "c1", "c9"][:n] * (n // 3 + 1), dtype=object)[:n],
        "country": np.array(["DE"] * n, dtype=object),
        "language": np.array(["en"] * n, dtype=object),
        "hashtags": np.array([["#food", ""]] * n, dtype=object),
        "content_embedding": np.linspace(-1, 1, n * CONTENT_DIM, dtype=np.float32).reshape(n, CONTENT_DIM),
        "story_stats": np.linspace(0, 2, n * len(story_stat_names(f)), dtype=np.float32).reshape(n, -1),
    }


def export_and_reload(model, cfg, vocabularies, dest):
    """(user, story) embeddings of the reloaded SavedModels, and of the model itself."""
    export_dir = export_towers(model, vocabularies, cfg, CONTENT_DIM, {}, dest)
    users, stories = user_inputs(cfg, HISTORIES), story_inputs(cfg)
    direct = (model.user_tower(users, training=False).numpy(), model.story_tower(stories, training=False).numpy())
    reloaded = (TowerRunner(export_dir / "user_tower")(users), TowerRunner(export_dir / "story_tower")(stories))
    return direct, reloaded


# Empty vocabularies ------------------------------------------------------------------------


def test_an_empty_vocabulary_maps_every_id_to_the_oov_row():
    layer = IdEmbedding([], 4)
    index = layer.index(tf.constant([["#a", ""], ["", "#b"]])).numpy()
    np.testing.assert_array_equal(index, [[OOV_INDEX, 0], [0, OOV_INDEX]])
    assert layer(tf.constant(["#a"])).shape == (1, 4)


def test_a_dataset_without_hashtags_trains_and_exports(tmp_path):
    cfg = config(tmp_path)
    vocabularies = {**VOCABULARIES, "hashtag": []}
    model = build_model(cfg, vocabularies)
    users = user_inputs(cfg, HISTORIES)
    batch = {
        "user": users,
        "story": story_inputs(cfg),
        "log_q": np.log(np.full(3, 1 / 3, np.float32)),
        "weight": np.ones(3, np.float32),
    }
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    hashtags = model.user_tower.shared.hashtag.embedding.embeddings
    assert hashtags.shape[0] == 2  # the padding and OOV rows only
    gradient = tf.convert_to_tensor(tape.gradient(loss, hashtags)).numpy()
    assert np.isfinite(float(loss))
    assert np.abs(gradient[OOV_INDEX]).sum() > 0 and np.abs(gradient[0]).sum() == 0  # padding never contributes
    (direct_users, direct_stories), (users_out, stories_out) = export_and_reload(
        model, cfg, vocabularies, tmp_path / "export"
    )
    np.testing.assert_allclose(users_out, direct_users, atol=1e-5)
    np.testing.assert_allclose(stories_out, direct_stories, atol=1e-5)


# Id dropout --------------------------------------------------------------------------------


def story_id_gradient(model, stories, training):
    """Gradient of the story tower's output w.r.t. the story id table, [rows, dim]."""
    model.story_tower(stories)  # builds the tables
    table = model.story_tower.shared.story.embedding.embeddings
    with tf.GradientTape() as tape:
        out = model.story_tower(stories, training=training)
        # A fixed projection, so no row's gradient cancels by symmetry.
        loss = tf.reduce_sum(out * tf.linspace(1.0, 2.0, out.shape[1])[tf.newaxis, :])
    return tf.convert_to_tensor(tape.gradient(loss, table)).numpy()


def test_id_dropout_one_sends_every_story_lookup_to_the_oov_row_in_training_only(tmp_path):
    cfg = config(tmp_path, "model.id_dropout=1.0", "model.creator_id_dropout=1.0")
    model = build_model(cfg)
    known = story_inputs(cfg, ("s0", "s1", "s2"))
    grad = story_id_gradient(model, known, training=True)
    touched = set(np.flatnonzero(np.abs(grad).sum(axis=1)))
    assert touched == {OOV_INDEX}  # every lookup hit the OOV row, and it is trained
    # ... so in training the stories look like stories nobody has seen (dropout is 0 here).
    unseen = {
        **known,
        "story_id": np.array(["x", "y", "z"], dtype=object),
        "creator_id": np.array(["cx"] * 3, dtype=object),
    }
    np.testing.assert_allclose(
        model.story_tower(known, training=True), model.story_tower(unseen, training=False), atol=1e-6
    )

    grad = story_id_gradient(model, known, training=False)
    touched = set(np.flatnonzero(np.abs(grad).sum(axis=1)))
    assert touched == {2, 3, 4}  # s0, s1, s2's own rows; no lookup went to OOV
    assert not np.allclose(model.story_tower(known, training=False), model.story_tower(unseen, training=False))


def test_id_dropout_is_not_in_the_exported_story_tower(tmp_path):
    cfg = config(tmp_path, "model.id_dropout=1.0")
    model = build_model(cfg)
    (_, direct_stories), (_, reloaded) = export_and_reload(model, cfg, VOCABULARIES, tmp_path / "export")
    np.testing.assert_allclose(reloaded, direct_stories, atol=1e-5)
    oov = story_inputs(cfg, ("never-seen-1", "never-seen-2", "never-seen-3"))
    assert not np.allclose(reloaded[:2], TowerRunner(tmp_path / "export" / "story_tower")(oov)[:2], atol=1e-3)


# The Transformer history encoder -----------------------------------------------------------


def transformer(tmp_path, *overrides):
    from models.towers import HistoryTransformer

    cfg = config(tmp_path, "model.sequence_encoder=transformer", "model.transformer_dropout=0.0", *overrides)
    return HistoryTransformer(cfg.model)


TOKENS = tf.random.stateless_normal((3, HISTORY, 8), seed=(1, 2))
VALID = tf.constant([[True, True, False, False], [True, True, True, True], [False, False, False, False]])


def test_padding_positions_never_change_the_encoding(tmp_path):
    encode = transformer(tmp_path)
    before = encode(TOKENS, VALID).numpy()
    # Anything at a padding position, even inf: the real positions' outputs are the same.
    garbage = tf.where(VALID[:, :, tf.newaxis], TOKENS, 1e4 * tf.random.stateless_normal(TOKENS.shape, seed=(3, 4)))
    np.testing.assert_allclose(encode(garbage, VALID).numpy(), before, atol=1e-6)
    np.testing.assert_array_equal(before[2], np.zeros(8))  # all padding: zeros, not NaN
    assert np.isfinite(before).all() and np.abs(before[:2]).sum(axis=1).min() > 0
    # A real position does count (with a change LayerNorm does not remove: not a constant shift).
    changed = tf.tensor_scatter_nd_add(TOKENS, [[0, 1]], tf.linspace(-1.0, 1.0, 8)[tf.newaxis, :])
    assert not np.allclose(encode(changed, VALID).numpy()[0], before[0], atol=1e-4)


def test_order_matters_with_position_embeddings_and_not_without(tmp_path):
    swapped = tf.gather(TOKENS, [1, 0, 2, 3], axis=1)  # rows 0 and 1: two real positions swapped
    with_positions = transformer(tmp_path)
    with_positions(TOKENS, VALID)
    with_positions.positions.assign(tf.random.stateless_normal(with_positions.positions.shape, seed=(5, 6)))
    assert not np.allclose(
        with_positions(swapped, VALID).numpy()[:2], with_positions(TOKENS, VALID).numpy()[:2], atol=1e-4
    )
    order_blind = transformer(tmp_path, "model.transformer_positions=false")
    np.testing.assert_allclose(order_blind(swapped, VALID).numpy(), order_blind(TOKENS, VALID).numpy(), atol=1e-5)


def test_with_rezero_and_no_output_norm_the_encoder_starts_as_mean_pooling_and_learns_away(tmp_path):
    encode = transformer(tmp_path, "model.transformer_rezero=true", "model.transformer_output_norm=false")
    first = encode(TOKENS, VALID).numpy()
    expected = mean_over_valid(TOKENS + encode.positions[tf.newaxis, :, :], VALID).numpy()
    np.testing.assert_allclose(first, expected, atol=1e-6)  # the gates start at 0
    np.testing.assert_array_equal(first[2], np.zeros(8))  # all padding: zeros
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(encode(TOKENS, VALID) * tf.linspace(-1.0, 1.0, 8))
    gates = tape.gradient(loss, encode.gates)
    assert all(float(tf.reduce_sum(tf.abs(g))) > 0 for g in gates)  # training moves them off 0
    for gate in encode.gates:
        gate.assign([0.5, 0.5])
    assert not np.allclose(encode(TOKENS, VALID).numpy()[:2], first[:2], atol=1e-4)  # attention now counts
    garbage = tf.where(VALID[:, :, tf.newaxis], TOKENS, 1e4 * tf.random.stateless_normal(TOKENS.shape, seed=(3, 4)))
    np.testing.assert_allclose(encode(garbage, VALID).numpy(), encode(TOKENS, VALID).numpy(), atol=1e-5)


def test_the_transformer_user_tower_ignores_padding_ids_and_exports(tmp_path):
    cfg = config(tmp_path, "model.sequence_encoder=transformer", "model.transformer_heads=4")
    model = build_model(cfg)
    users = user_inputs(cfg, HISTORIES)
    before = model.user_tower(users, training=False).numpy()
    assert np.isfinite(before).all()  # user 2's history is all padding
    # A creator id where the story is padding, and new padding rows in the shared tables.
    users["history_creator_ids"][0, 3] = "c1"
    for table in (model.user_tower.shared.story, model.user_tower.shared.creator):
        table.embedding.embeddings[0].assign(tf.fill(table.embedding.embeddings.shape[1:], 7.0))
    np.testing.assert_allclose(model.user_tower(users, training=False).numpy(), before, atol=1e-6)

    batch = {
        "user": users,
        "story": story_inputs(cfg),
        "log_q": np.log(np.full(3, 1 / 3, np.float32)),
        "weight": np.ones(3, np.float32),
    }
    with tf.GradientTape() as tape:
        loss = model.compute_loss(batch, training=True)
    encoder_variables = model.user_tower.history_encoder.trainable_variables
    assert all(g is not None for g in tape.gradient(loss, encoder_variables))
    (direct_users, direct_stories), (users_out, stories_out) = export_and_reload(
        model, cfg, VOCABULARIES, tmp_path / "export"
    )
    np.testing.assert_allclose(users_out, direct_users, atol=1e-5)
    np.testing.assert_allclose(stories_out, direct_stories, atol=1e-5)


# Mixed negatives and logQ strength through the model ---------------------------------------


def in_batch(cfg, log_q=(0.5, 0.25, 0.25)):
    return {
        "user": user_inputs(cfg, HISTORIES),
        "story": story_inputs(cfg, ("s0", "s1", "s2")),
        "log_q": np.log(np.array(log_q, np.float32)),
        "weight": np.ones(3, np.float32),
    }


def with_corpus(batch, cfg):
    corpus = story_inputs(cfg, ("s0", "s3"))  # s0 is user 0's positive: masked in row 0
    return {
        **batch,
        "corpus_story": corpus,
        "corpus_log_q": np.log(np.full(2, 1 / 5, np.float32)),
        "corpus_unigram_log_q": np.log(np.array([0.5, 0.01], np.float32)),
    }


def test_compute_loss_uses_the_corpus_negatives_with_the_mixed_log_q(tmp_path):
    from models.loss import in_batch_loss, mixed_log_q

    cfg = config(tmp_path, "model.corpus_negatives=2", "model.id_dropout=0")
    model = build_model(cfg)
    batch = with_corpus(in_batch(cfg), cfg)
    got = float(model.compute_loss(batch, training=False))
    users = model.user_tower(batch["user"])
    stories, corpus = model.story_tower(batch["story"]), model.story_tower(batch["corpus_story"])
    log_q, corpus_log_q = mixed_log_q(batch["log_q"], batch["corpus_log_q"], batch["corpus_unigram_log_q"])
    expected = in_batch_loss(
        users,
        stories,
        batch["story"]["story_id"],
        temperature=cfg.model.temperature,
        loss=cfg.model.loss,
        candidate_log_q=log_q,
        sample_weight=batch["weight"],
        extra_candidate_embeddings=corpus,
        extra_candidate_ids=batch["corpus_story"]["story_id"],
        extra_candidate_log_q=corpus_log_q,
    )
    assert got == pytest.approx(float(expected), abs=1e-6)
    with pytest.raises(KeyError, match="no 'corpus_story'"):
        model.compute_loss(in_batch(cfg), training=False)
    # Without logQ, softmax over more (unmasked) negatives is a strictly larger loss.
    model.cfg = cfg.model.model_copy(update={"corpus_negatives": 0, "logq_strength": 0.0})
    assert float(model.compute_loss(batch, training=False)) > float(model.compute_loss(in_batch(cfg), training=False))


def test_logq_strength_zero_is_no_correction(tmp_path):
    cfg = config(tmp_path, "model.logq_strength=0")
    model = build_model(cfg)
    skewed = float(model.compute_loss(in_batch(cfg, log_q=(0.9, 0.01, 0.09)), training=False))
    flat = float(model.compute_loss(in_batch(cfg, log_q=(1.0, 1.0, 1.0)), training=False))  # log q = 0
    assert skewed == pytest.approx(flat, abs=1e-6)
    model.cfg = cfg.model.model_copy(update={"logq_strength": 1.0})
    assert float(model.compute_loss(in_batch(cfg, log_q=(0.9, 0.01, 0.09)), training=False)) != pytest.approx(
        flat, abs=1e-4
    )


def test_corpus_negatives_are_refused_with_impression_negatives(tmp_path):
    from config import ConfigError

    with pytest.raises(ConfigError, match="corpus_negatives = 8 adds negatives to the in-batch loss"):
        config(tmp_path, "model.corpus_negatives=8", "model.negatives=impressions")


# Popularity prior --------------------------------------------------------------------------


def test_the_popularity_prior_keeps_unit_norm_reads_the_story_stats_and_exports(tmp_path):
    cfg = config(tmp_path, "model.popularity_prior=true")
    model = build_model(cfg)
    users, stories = user_inputs(cfg, HISTORIES), story_inputs(cfg)
    u, s = model.user_tower(users, training=False).numpy(), model.story_tower(stories, training=False).numpy()
    assert u.shape == s.shape == (3, cfg.model.output_dim)  # the prior lives inside output_dim
    np.testing.assert_allclose(np.linalg.norm(u, axis=1), 1.0, atol=1e-5)  # what the index requires
    np.testing.assert_allclose(np.linalg.norm(s, axis=1), 1.0, atol=1e-5)
    # The last dimension is the story's prior: a function of its statistics alone.
    more = {**stories, "story_stats": stories["story_stats"] + 1.0}
    changed = model.story_tower(more, training=False).numpy()
    assert not np.allclose(changed[:, -1], s[:, -1])
    same_stats = {**more, "story_id": np.array(["s1", "s0", "s2"], dtype=object)}
    np.testing.assert_allclose(model.story_tower(same_stats, training=False).numpy()[:, -1], changed[:, -1], atol=1e-6)
    # The user side's map starts with a bias of 0.5, not 0, so the story prior gets a
    # gradient from the first step (with both scalars at 0, neither would).
    with tf.GradientTape() as tape:
        scores = tf.reduce_sum(model.user_tower(users, training=False) * model.story_tower(stories, training=False))
    gradients = tape.gradient(scores, model.story_tower.prior.linear.trainable_variables)
    assert all(g is not None and np.any(g.numpy() != 0) for g in gradients)
    (direct_users, direct_stories), (users_out, stories_out) = export_and_reload(
        model, cfg, VOCABULARIES, tmp_path / "export"
    )
    np.testing.assert_allclose(users_out, direct_users, atol=1e-5)
    np.testing.assert_allclose(stories_out, direct_stories, atol=1e-5)
