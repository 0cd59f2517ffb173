"""The fine-tuning API, through the public tf_models functions: regularisation acts only in
training, and the pooled backbone is the token backbone's mean."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_FT, TINY_PT

import tf_models

CFG = TINY_FT.with_(depth=4)


def _video(cfg, batch=4, seed=0):
    return np.random.default_rng(seed).standard_normal(
        (batch, cfg.num_frames, cfg.image_size, cfg.image_size, 3)).astype("float32")


def _twin(reference, **kwargs):
    model = tf_models.build_classifier(CFG, **kwargs)
    model.set_weights(reference.get_weights())
    return model


@pytest.mark.parametrize("kwargs", [dict(drop_path_rate=0.5), dict(dropout=0.5), dict(head_dropout=0.5)])
def test_regularisation_acts_in_training_only(kwargs):
    plain = tf_models.build_classifier(CFG)
    regularised = _twin(plain, **kwargs)
    x = _video(CFG)
    expected = plain(x, training=False).numpy()
    np.testing.assert_array_equal(regularised(x, training=False).numpy(), expected)
    a, b = regularised(x, training=True).numpy(), regularised(x, training=True).numpy()
    assert not np.allclose(a, expected, atol=1e-4) and not np.allclose(a, b, atol=1e-4)
    np.testing.assert_array_equal(plain(x, training=True).numpy(), expected)  # nothing to drop: same


def test_drop_path_drops_whole_samples_with_a_rate_rising_over_depth():
    plain = tf_models.build_classifier(CFG)
    model = _twin(plain, drop_path_rate=0.3)
    rates = [model.get_layer(f"blocks_{i}").drop_path.rate for i in range(CFG.depth)]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)
    x = _video(CFG, batch=1)
    draws = np.stack([model(x, training=True).numpy() for _ in range(64)])
    assert len({d.tobytes() for d in draws}) > 1
    # a sample's branch is kept whole (scaled by 1/keep) or dropped whole: never element by element
    drop = model.get_layer(f"blocks_{CFG.depth - 1}").drop_path
    out = drop(np.ones((256, 8, 16), "float32"), training=True).numpy()
    per_sample = out.reshape(256, -1)
    assert (per_sample == per_sample[:, :1]).all()
    values = np.unique(per_sample)
    assert values.size == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7, rel=1e-6)


def test_pooled_backbone_is_the_mean_of_the_token_backbone():
    tokens = tf_models.build_backbone(TINY_PT)
    pooled = tf_models.build_backbone(TINY_PT, pooled=True)
    pooled.set_weights(tokens.get_weights())
    x = _video(TINY_PT, batch=2)
    t, p = tokens(x, training=False).numpy(), pooled(x, training=False).numpy()
    assert t.shape == (2, TINY_PT.num_patches, TINY_PT.embed_dim) and p.shape == (2, TINY_PT.embed_dim)
    np.testing.assert_allclose(p, t.mean(axis=1), rtol=1e-6, atol=1e-6)


def test_backbone_fine_tunes_with_a_head_on_top():
    import keras

    backbone = tf_models.build_backbone(TINY_PT, pooled=True, drop_path_rate=0.1, dropout=0.1)
    x = keras.Input(backbone.input_shape[1:])
    model = keras.Model(x, keras.layers.Dense(3)(backbone(x)))
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    before = [w.copy() for w in backbone.get_weights()]
    loss = model.train_on_batch(_video(TINY_PT, batch=2), np.array([0, 2]))
    assert np.isfinite(loss)
    assert any(not np.array_equal(a, b) for a, b in zip(before, backbone.get_weights()))
