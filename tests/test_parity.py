"""The parity pipeline on tiny models: the three checks, float64, localisation, the report."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY_FT, TINY_PT, swap_qv_biases

from converter import engine
from converter.pipeline import convert
from converter.videomae_rules import FINETUNED


def _convert(tmp_path, cfg, **kw):
    stage = "pt" if cfg.is_pretrain else "ft"
    return convert(config=cfg, stage=stage, synthetic=True, output_dir=tmp_path, name=kw.pop("name", "tiny"),
                   batch=2, **kw)


def test_finetuned_conversion_passes_every_check_and_publishes(tmp_path):
    report = _convert(tmp_path, TINY_FT)
    assert report["passed"]
    for gate in ("tf_vs_pt", "weights_h5", "keras", "saved_model", "saved_model_xla"):
        assert report["checks"][gate]["passed"], gate
        assert report["checks"][gate]["max_abs"] < 1e-5
    assert report["checks"]["weights_h5"]["weights_identical"]
    assert report["checks"]["weights_h5"]["predictions_identical"]
    assert report["checks"]["float64"]["max_abs"] < 1e-10  # exact mapping, no float32 noise
    assert report["output_shape"] == [2, TINY_FT.num_classes]
    assert report["output_std"] > 0.1  # non-trivial weights give non-trivial logits
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["tiny", "tiny.weights.h5", "tiny.keras", "tiny.zip", "tiny.parity.json",
                            "synthetic_tiny_seed0.pth"])
    on_disk = json.loads((tmp_path / "tiny.parity.json").read_text())
    assert on_disk["checks"] == json.loads(json.dumps(report["checks"]))
    for filename in ("tiny.weights.h5", "tiny.keras", "tiny.zip"):
        from converter.export import sha256_file
        assert on_disk["artifacts"][filename]["sha256"] == sha256_file(tmp_path / filename)


def test_pretrained_conversion_reconstructs_masked_tokens(tmp_path):
    report = _convert(tmp_path, TINY_PT)
    assert report["passed"], report["checks"]
    assert report["output_shape"] == [2, TINY_PT.num_masked, TINY_PT.patch_pixels]


def test_encoder_only_backbone_matches_pytorch_encoder(tmp_path):
    report = _convert(tmp_path, TINY_PT, encoder_only=True, name="enc")
    assert report["passed"], report["checks"]
    assert report["output_shape"] == [2, TINY_PT.num_patches, TINY_PT.embed_dim]
    assert report["tensors_dropped"] > 0  # the decoder is left behind on purpose
    pooled = _convert(tmp_path, TINY_PT, encoder_only=True, pooled=True, name="enc_pooled")
    assert pooled["passed"] and pooled["output_shape"] == [2, TINY_PT.embed_dim]


def test_saved_model_serves_and_reloads_in_plain_tensorflow(tmp_path):
    import tensorflow as tf

    _convert(tmp_path, TINY_FT)
    loaded = tf.saved_model.load(str(tmp_path / "tiny"))
    spec = loaded.serve.concrete_functions[0].structured_input_signature[0][0]
    assert spec.shape.as_list() == [None, TINY_FT.num_frames, 32, 32, 3]
    out = loaded.serve(tf.zeros([3, 4, 32, 32, 3]))
    assert out.shape == (3, TINY_FT.num_classes)


def test_wrong_mapping_fails_with_localised_block_and_publishes_nothing(tmp_path, monkeypatch):
    """Swap q/v biases in block 1 only: the report must point at blocks.1, exit non-zero."""
    swap_qv_biases(monkeypatch, block=1)
    report = _convert(tmp_path, TINY_FT)
    assert not report["passed"]
    assert report["localisation"]["first_divergent"] == "blocks.1"
    assert "first divergence at blocks.1" in report["checks"]["tf_vs_pt"]["detail"]
    assert report["checks"]["saved_model"].get("skipped")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synthetic_tiny_seed0.pth", "tiny.parity.json"]


def test_check_true_raises_parity_error(tmp_path, monkeypatch):
    from converter.errors import ParityError

    monkeypatch.setattr("converter.families.official.rules_for", lambda *a, **k: [
        engine.Rule(r.source, r.target, engine.SAME) if r.source == "blocks.{i}.attn.proj.weight" else r
        for r in FINETUNED])
    with pytest.raises(ParityError, match="tf_vs_pt"):
        _convert(tmp_path, TINY_FT, check=True)


def test_float64_check_is_exact_for_pretrained(tmp_path):
    report = _convert(tmp_path, TINY_PT)
    assert report["checks"]["float64"]["max_abs"] < 1e-10
    assert report["checks"]["float64"]["gate"] is False


def test_report_records_seed_versions_and_timings(tmp_path):
    report = _convert(tmp_path, TINY_FT, seed=5)
    assert report["seed"] == 5 and report["batch"] == 2
    assert {"torch", "keras", "numpy"} <= set(report["versions"])
    assert {"map weights", "pytorch forward", "keras forward", "export savedmodel"} <= set(report["timings"])
    assert report["checkpoint"]["synthetic"] and len(report["checkpoint"]["sha256"]) == 64
    other = _convert(tmp_path, TINY_FT, seed=6, name="tiny6")
    assert other["checkpoint"]["sha256"] != report["checkpoint"]["sha256"]
    assert not np.isclose(other["output_std"], report["output_std"])


def test_saved_model_stores_each_weight_once(tmp_path):
    """The SavedModel's variables are no bigger than the weights themselves (Keras' track()
    would store every weight twice)."""
    report = _convert(tmp_path, TINY_FT.with_(embed_dim=128), float64=False, xla=False)
    weights = sum(f.stat().st_size for f in (tmp_path / "tiny" / "variables").iterdir())
    params_bytes = TINY_FT.with_(embed_dim=128).num_params * 4
    assert report["passed"] and params_bytes <= weights < 1.2 * params_bytes
