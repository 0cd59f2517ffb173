"""Tube masking, the Keras token order it drives, and the synthetic official checkpoints."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import TINY_FT, TINY_PT

from converter.checkpoint import read_checkpoint
from converter.masking import check_mask, tube_mask
from converter.synthetic import synthetic_state_dict, write_synthetic_checkpoint
from converter.variants import arch_config
from tf_models.layers import MaskedTokenOrder


@pytest.mark.parametrize("dataset,hidden_per_frame", [("k400", 176), ("ssv2", 176), ("ucf101", 147)])
def test_tube_mask_hides_the_official_count_and_repeats_over_time(dataset, hidden_per_frame):
    cfg = arch_config("S", dataset, "pt")
    mask = tube_mask(cfg, batch=3, seed=7)
    assert mask.shape == (3, 1568) and mask.dtype == bool
    assert (mask.sum(1) == 8 * hidden_per_frame).all() and cfg.num_masked == 8 * hidden_per_frame
    frames = mask.reshape(3, 8, 196)
    assert (frames == frames[:, :1]).all()  # the same spatial mask at every time step
    assert not (frames[0, 0] == frames[1, 0]).all()  # but different per sample
    np.testing.assert_array_equal(mask, tube_mask(cfg, batch=3, seed=7))
    check_mask(mask, cfg)
    with pytest.raises(ValueError, match="exactly"):
        check_mask(~mask, cfg)


def test_keras_token_order_equals_boolean_indexing_order():
    """Visible tokens first, then masked ones, each in original order: what x[~mask] and
    x[mask] give in the official PyTorch forward."""
    mask = tube_mask(TINY_PT.with_(num_frames=8, image_size=64), batch=4, seed=3)
    order = np.asarray(MaskedTokenOrder(mask.shape[1])(mask))
    tokens = np.arange(mask.shape[1])
    for row, m in zip(order, mask):
        np.testing.assert_array_equal(row, np.concatenate([tokens[~m], tokens[m]]))


def test_synthetic_checkpoint_has_official_keys_and_no_zero_tensor(tmp_path):
    path = write_synthetic_checkpoint(TINY_FT, tmp_path / "ft.pth", seed=0)
    raw = torch.load(path, weights_only=True)
    assert list(raw) == ["model"]  # the official training script's container
    sd = raw["model"]
    # The official key set of one fine-tuned block, written out from the official model code.
    block = {"norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
             "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
             "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"}
    expected = {"patch_embed.proj.weight", "patch_embed.proj.bias", "fc_norm.weight", "fc_norm.bias",
                "head.weight", "head.bias"} | {f"blocks.{i}.{k}" for i in range(2) for k in block}
    assert set(sd) == expected
    assert tuple(sd["patch_embed.proj.weight"].shape) == (64, 3, 2, 16, 16)
    assert tuple(sd["blocks.0.attn.qkv.weight"].shape) == (192, 64)
    for key, t in sd.items():
        assert t.dtype == torch.float32 and (t != 0).all(), key
    assert abs(float(sd["blocks.0.norm1.weight"].mean()) - 1.0) < 0.1
    assert read_checkpoint(path).container == "model"


def test_synthetic_pretrained_keys_follow_the_official_layout():
    sd = synthetic_state_dict(TINY_PT)
    top = {k.split(".")[0] for k in sd}
    assert top == {"encoder", "decoder", "encoder_to_decoder", "mask_token"}
    assert tuple(sd["mask_token"].shape) == (1, 1, 32)
    assert tuple(sd["encoder_to_decoder.weight"].shape) == (32, 64)
    assert tuple(sd["decoder.head.weight"].shape) == (1536, 32)
    assert "encoder_to_decoder.bias" not in sd and "encoder.head.weight" not in sd


def test_synthetic_weights_are_seeded():
    a, b, c = (synthetic_state_dict(TINY_FT, s) for s in (1, 1, 2))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


@pytest.mark.parametrize("variant", ["S", "B", "L", "H"])
@pytest.mark.parametrize("stage", ["ft", "pt"])
def test_parameter_count_formula_matches_the_reference_model(variant, stage):
    """num_params drives memory planning; count the reference's parameters to check it."""
    from pt_reference import build_reference

    cfg = arch_config(variant, "k400", stage)
    with torch.device("meta"):
        model = build_reference(cfg)
    assert cfg.num_params == sum(p.numel() for p in model.parameters())


def test_num_classes_is_read_from_a_custom_head_but_a_zoo_head_must_match_the_dataset():
    from converter.checkpoint import config_for
    from converter.errors import VariantMismatchError

    shapes = synthetic_state_dict(arch_config("S", "k400", "ft", num_classes=10, depth=12), seed=0)
    tensors = {k: v.numpy() for k, v in shapes.items()}
    assert config_for(tensors, "S", "k400", "ft").num_classes == 10  # the user's own 10 classes
    ssv2 = dict(tensors, **{"head.weight": np.ones((174, 384), np.float32),
                            "head.bias": np.ones(174, np.float32)})
    with pytest.raises(VariantMismatchError, match="looks like a ssv2 model, pass --dataset ssv2"):
        config_for(ssv2, "S", "k400", "ft")
    with pytest.raises(VariantMismatchError, match="--num-classes is 12"):
        config_for(tensors, "S", "k400", "ft", num_classes=12)
