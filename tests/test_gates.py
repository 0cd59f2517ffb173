"""The gates themselves: `compare` at its exact edge, localisation of a middle block, and the
float64 check leaving nothing of itself in what is published."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_FT, TINY_PT

from converter.engine import load_into
from converter.masking import tube_mask
from converter.parity import DIVERGENCE, compare, describe_localisation, localise, make_video
from converter.pipeline import convert
from converter.synthetic import synthetic_state_dict
from converter.videomae_rules import rules_for
from pt_reference import load_reference

# --- compare(): np.testing.assert_allclose semantics, element by element ----------------------------
# Powers of two, so that "exactly at the bound" is exact in float64 too.
ATOL, RTOL = 2.0**-16, 2.0**-17


def test_compare_passes_exactly_at_the_bound_and_fails_just_past_it():
    bound = ATOL + RTOL * 2.0  # = 2**-15 for |pt| = 2
    assert compare([2.0 + bound], [2.0], RTOL, ATOL)["passed"]
    assert compare([2.0 - bound], [2.0], RTOL, ATOL)["passed"]
    assert not compare([2.0 + bound + 2.0**-40], [2.0], RTOL, ATOL)["passed"]
    assert not compare([2.0 - bound - 2.0**-40], [2.0], RTOL, ATOL)["passed"]


def test_compare_at_the_default_tolerance_2e5_off_fails():
    assert compare([1e-5], [0.0], 1e-5, 1e-5)["passed"]  # |pt| = 0: atol alone
    assert not compare([2e-5], [0.0], 1e-5, 1e-5)["passed"]
    assert not compare([1.0 + 2.1e-5], [1.0], 1e-5, 1e-5)["passed"]  # bound 2e-5 at |pt| = 1
    assert compare([1.0 + 1.9e-5], [1.0], 1e-5, 1e-5)["passed"]


def test_compare_scales_rtol_with_each_elements_own_magnitude():
    assert compare([1000.0 + 0.0099], [1000.0], 1e-5, 1e-5)["passed"]  # bound 1e-5 + 1e-2
    assert not compare([1000.0 + 0.0101], [1000.0], 1e-5, 1e-5)["passed"]
    # the small element gets its own bound (1e-5 + 1e-5 * 0), not one from the largest |pt|
    assert not compare([1000.0, 0.005], [1000.0, 0.0], 1e-5, 1e-5)["passed"]
    # one bad element among many fails the whole comparison, however small the mean error
    actual = np.zeros(100_000)
    actual[12345] = 3e-5
    result = compare(actual, np.zeros(100_000), 1e-5, 1e-5)
    assert not result["passed"] and result["max_abs"] == pytest.approx(3e-5)


def test_compare_agrees_with_assert_allclose_around_the_bound():
    rng = np.random.default_rng(0)
    desired = rng.standard_normal(4000) * 10.0 ** rng.integers(-6, 4, 4000)
    for scale in (0.5, 0.99, 1.01, 2.0):
        offset = scale * (1e-5 + 1e-5 * np.abs(desired)) * rng.choice([-1, 1], desired.size)
        for i in range(0, desired.size, 400):
            a, d = desired[i:i + 400] + offset[i:i + 400], desired[i:i + 400]
            try:
                np.testing.assert_allclose(a, d, rtol=1e-5, atol=1e-5)
                expected = True
            except AssertionError:
                expected = False
            assert compare(a, d, 1e-5, 1e-5)["passed"] is expected, (scale, i)


@pytest.mark.parametrize("actual, desired", [
    ([np.nan], [1.0]), ([1.0], [np.nan]), ([np.inf], [1.0]), ([np.inf], [np.inf]), ([np.nan], [np.nan]),
])
def test_compare_fails_on_non_finite_values(actual, desired):
    assert not compare(actual, desired, 1e-5, 1e-5)["passed"]


def test_compare_fails_on_a_shape_mismatch_even_when_broadcastable():
    result = compare(np.zeros((1, 4)), np.zeros((4,)), 1e-5, 1e-5)
    assert not result["passed"] and "shape [1, 4] vs reference [4]" in result["detail"]


# --- localisation: the first divergent stage, in a deeper model -------------------------------------

def _corrupted(cfg, corrupt):
    """The reference with the official tensors, and a Keras model loaded from a corrupted copy."""
    from tf_models import build_model

    official = synthetic_state_dict(cfg, 0)
    reference = load_reference(cfg, dict(official))
    tensors = {k: v.numpy().copy() for k, v in official.items()}
    corrupt(tensors)
    model = build_model(cfg)
    load_into(model, tensors, rules_for("pt" if cfg.is_pretrain else "ft"))
    video = make_video(cfg, 1, 0)
    mask = tube_mask(cfg, 1, 0) if cfg.is_pretrain else None
    return localise(reference, model, video, mask)


def _swap_q_v_bias(prefix):
    def corrupt(t):
        t[f"{prefix}.attn.q_bias"], t[f"{prefix}.attn.v_bias"] = t[f"{prefix}.attn.v_bias"], t[f"{prefix}.attn.q_bias"]
    return corrupt


def _add(key, amount=1.0):
    def corrupt(t):
        t[key] = t[key] + amount
    return corrupt


DEEP_FT = TINY_FT.with_(depth=6)
DEEP_PT = TINY_PT.with_(depth=5, decoder_depth=4)

CASES = {
    # corrupted tensor -> the first stage that must be named, and the last stage that also diverges
    "ft middle block": (DEEP_FT, _swap_q_v_bias("blocks.2"), "blocks.2", "blocks.5"),
    "ft first block": (DEEP_FT, _swap_q_v_bias("blocks.0"), "blocks.0", "blocks.5"),
    "pt encoder middle block": (DEEP_PT, _swap_q_v_bias("encoder.blocks.2"), "encoder.blocks.2", "decoder.blocks.3"),
    "pt decoder input": (DEEP_PT, _add("mask_token"), "decoder input", "decoder.blocks.3"),
    "pt decoder middle block": (DEEP_PT, _swap_q_v_bias("decoder.blocks.1"), "decoder.blocks.1", "decoder.blocks.3"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_localisation_names_the_first_divergent_stage_not_the_last(case):
    cfg, corrupt, first, last = CASES[case]
    loc = _corrupted(cfg, corrupt)
    assert loc["first_divergent"] == first
    divergent = [s["stage"] for s in loc["stages"] if s["relative"] > DIVERGENCE]
    # a localiser naming the last divergent stage, or always the last stage, would say `last`
    assert divergent[0] == first and divergent[-1] == last != first
    assert loc["stages"][-1]["stage"] == last
    names = [s["stage"] for s in loc["stages"]]
    assert all(s["relative"] < 1e-5 for s in loc["stages"][:names.index(first)])
    assert describe_localisation(loc).startswith(f"first divergence at {first}")


@pytest.mark.parametrize("cfg, key", [(DEEP_FT, "head.bias"), (DEEP_FT, "fc_norm.weight"),
                                      (DEEP_PT, "decoder.head.bias"), (DEEP_PT, "decoder.norm.bias")])
def test_localisation_says_the_head_when_every_hidden_state_agrees(cfg, key):
    loc = _corrupted(cfg, _add(key))
    assert loc["first_divergent"] is None
    assert all(s["relative"] < 1e-5 for s in loc["stages"])
    assert "divergence is in the head" in describe_localisation(loc)


def test_pipeline_report_names_a_middle_block(tmp_path, monkeypatch):
    import converter.pipeline as pipeline

    real = pipeline.load_into

    def corrupt(model, tensors, rules, **options):
        tensors = dict(tensors)
        _swap_q_v_bias("blocks.3")(tensors)
        return real(model, tensors, rules, **options)

    monkeypatch.setattr(pipeline, "load_into", corrupt)
    report = convert(config=DEEP_FT, synthetic=True, output_dir=tmp_path, name="deep", xla=False)
    assert not report["passed"] and report["localisation"]["first_divergent"] == "blocks.3"
    assert report["checks"]["tf_vs_pt"]["detail"] == "first divergence at blocks.3; embedding..blocks.2 agree"


# --- float64: a check on the side, never in what is published ---------------------------------------

def _policies(model):
    return [(layer.name, layer.dtype_policy.name) for layer in model._flatten_layers()]


@pytest.mark.parametrize("cfg", [TINY_FT, TINY_PT], ids=["ft", "pt"])
def test_float64_compute_restores_every_layers_policy(cfg):
    import keras

    from tf_models import build_model, float64_compute

    model = build_model(cfg)
    before = _policies(model)
    assert {p for _, p in before} == {"float32"}
    with float64_compute(model):
        assert {p for _, p in _policies(model)} != {"float32"}
    assert _policies(model) == before
    video = np.zeros((1, cfg.num_frames, cfg.image_size, cfg.image_size, 3), "float32")
    args = video if not cfg.is_pretrain else [video, tube_mask(cfg, 1, 0)]
    assert keras.ops.convert_to_numpy(model(args)).dtype == np.float32


@pytest.mark.parametrize("cfg", [TINY_FT, TINY_PT], ids=["ft", "pt"])
def test_saved_model_after_the_float64_check_serves_float32(tmp_path, cfg):
    """The float64 check runs on the very model that is then exported: the endpoint must take and
    give float32, and give what the float32 model gave."""
    import tensorflow as tf

    stage = "pt" if cfg.is_pretrain else "ft"
    report = convert(config=cfg, stage=stage, synthetic=True, output_dir=tmp_path, name="t", xla=False,
                     float64=True)
    assert report["passed"] and report["checks"]["float64"]["max_abs"] < 1e-10
    loaded = tf.saved_model.load(str(tmp_path / "t"))
    fn = loaded.signatures["serving_default"] if "serving_default" in loaded.signatures else None
    concrete = loaded.serve.concrete_functions[0]
    inputs = concrete.structured_input_signature[0]
    assert inputs[0].dtype == tf.float32
    if cfg.is_pretrain:
        assert inputs[1].dtype == tf.bool
    assert concrete.structured_outputs.dtype == tf.float32
    if fn is not None:
        assert all(t.dtype == tf.float32 for t in fn.structured_outputs.values())
    video = make_video(cfg, 2, 0).transpose(0, 2, 3, 4, 1).copy()
    args = [video] + ([tube_mask(cfg, 2, 0)] if cfg.is_pretrain else [])
    out = loaded.serve(*args)
    assert out.dtype == tf.float32
    assert list(out.shape) == [2, *report["output_shape"][1:]]
    # the same synthetic weights converted without the float64 check: bit for bit the same answers
    assert convert(config=cfg, stage=stage, synthetic=True, output_dir=tmp_path / "again", name="t",
                   xla=False, float64=False)["passed"]
    other = tf.saved_model.load(str(tmp_path / "again" / "t"))  # kept: it owns the variables
    again = other.serve(*args).numpy()
    np.testing.assert_array_equal(out.numpy(), again)


def test_failed_rerun_keeps_the_passing_report_of_the_published_files(tmp_path):
    def run(**kw):
        return convert(config=TINY_FT, synthetic=True, output_dir=tmp_path, name="t", xla=False, float64=False, **kw)

    assert run()["passed"]
    published = (tmp_path / "t.parity.json").read_bytes()
    assert not run(atol=0.0, rtol=0.0)["passed"]
    assert (tmp_path / "t.parity.json").read_bytes() == published  # still vouches for t.weights.h5, t/, t.zip
    failed = tmp_path / "t.failed.parity.json"
    assert json.loads(failed.read_text())["passed"] is False
    assert run()["passed"] and not failed.exists()  # a passing run clears the stale failure


def test_too_tight_tolerance_is_called_float32_rounding_not_a_head_bug(tmp_path):
    report = convert(config=TINY_PT, stage="pt", synthetic=True, output_dir=tmp_path, name="t", xla=False,
                     atol=0.0, rtol=0.0)
    assert not report["passed"] and report["checks"]["float64"]["passed"]
    assert report["localisation"]["first_divergent"] is None
    detail = report["checks"]["tf_vs_pt"]["detail"]
    assert detail.startswith("float32 rounding, not a mapping error: in float64 the two agree to ")
    assert "head" not in detail


def test_a_real_mapping_error_is_never_called_rounding(tmp_path, monkeypatch):
    import converter.pipeline as pipeline

    real = pipeline.load_into

    def corrupt(model, tensors, rules, **options):
        tensors = dict(tensors)
        tensors["head.bias"] = tensors["head.bias"] + 1.0  # in the head: no hidden state diverges
        return real(model, tensors, rules, **options)

    monkeypatch.setattr(pipeline, "load_into", corrupt)
    report = convert(config=TINY_FT, synthetic=True, output_dir=tmp_path, name="t", xla=False)
    assert not report["checks"]["float64"]["passed"]
    assert report["checks"]["tf_vs_pt"]["detail"].startswith("all hidden states agree: the divergence is in the head")
