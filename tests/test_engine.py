"""The mapping engine's accounting, both ways, on the official key layout."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY, TINY_FT, TINY_PT

from converter.checkpoint import unwrap
from converter.engine import CONV3D, LINEAR, Rule, SAME, export_state_dict, load_into, plan
from converter.errors import MappingError
from converter.synthetic import synthetic_state_dict
from converter.videomae_rules import ENCODER_ONLY, FINETUNED, PRETRAINED, rules_for
from tf_models import build_backbone, build_model


def _tensors(cfg, seed=0):
    return unwrap({"model": synthetic_state_dict(cfg, seed)}).tensors


def test_round_trip_is_bit_exact(tiny_cfg):
    """official -> Keras -> official returns every tensor unchanged, under its own name."""
    tensors = _tensors(tiny_cfg)
    model = build_model(tiny_cfg)
    rules = rules_for("pt" if tiny_cfg.is_pretrain else "ft")
    assignments = load_into(model, tensors, rules)
    assert len(assignments) == len(tensors) == len(model.weights)
    back = export_state_dict(model, rules)
    assert set(back) == set(tensors)
    for key, value in tensors.items():
        np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_transforms_match_framework_layouts():
    """Linear [out, in] -> Dense [in, out]; Conv3d [O, I, T, H, W] -> Conv3D [T, H, W, I, O]."""
    w = np.arange(6.0).reshape(2, 3)
    assert LINEAR.forward(w)[2, 1] == w[1, 2]
    c = np.random.default_rng(0).standard_normal((5, 3, 2, 4, 4))
    k = CONV3D.forward(c)
    assert k.shape == (2, 4, 4, 3, 5)
    assert k[1, 2, 3, 0, 4] == c[4, 0, 1, 2, 3]
    np.testing.assert_array_equal(CONV3D.inverse(k), c)


def _error(tensors, cfg, rules=None):
    with pytest.raises(MappingError) as info:
        load_into(build_model(cfg), tensors, rules or rules_for("pt" if cfg.is_pretrain else "ft"))
    return info.value


def test_missing_tensor_is_named_by_official_key():
    tensors = _tensors(TINY_FT)
    del tensors["blocks.1.attn.v_bias"]
    err = _error(tensors, TINY_FT)
    assert err.missing == ["blocks.1.attn.v_bias"]
    assert "1 missing (blocks.1.attn.v_bias)" in str(err)


def test_unexpected_and_misshaped_are_listed_with_counts():
    tensors = _tensors(TINY_FT)
    tensors["blocks.0.attn.k_bias"] = np.ones(64, np.float32)
    tensors["blocks.7.norm1.weight"] = np.ones(64, np.float32)  # a block the model does not have
    tensors["head.weight"] = np.ones((9, 64), np.float32)
    err = _error(tensors, TINY_FT)
    assert sorted(err.unexpected) == ["blocks.0.attn.k_bias", "blocks.7.norm1.weight"]
    assert err.mismatched == ["head.weight [9, 64] -> head/kernel expects [64, 7]"]
    assert "2 unexpected" in str(err) and "1 mis-shaped" in str(err)
    assert "\n" not in str(err)


def test_long_lists_are_cut_with_a_count():
    tensors = {k: v for k, v in _tensors(TINY_FT).items() if not k.startswith("blocks.1.")}
    err = _error(tensors, TINY_FT)
    assert len(err.missing) == 13
    assert "13 missing (" in str(err) and "9 more" in str(err)


def test_two_rules_claiming_one_weight_is_refused():
    rules = FINETUNED + [Rule("blocks.{i}.attn.q_bias_copy", "blocks_{i}/attn/q_bias", SAME)]
    tensors = _tensors(TINY_FT)
    tensors["blocks.0.attn.q_bias_copy"] = tensors["blocks.0.attn.q_bias"]
    err = _error(tensors, TINY_FT, rules)
    assert "claimed twice" in str(err)


def test_plan_checks_shapes_without_data():
    rules = [Rule("w", "d/kernel", LINEAR)]
    assert plan({"w": (3, 2)}, {"d/kernel": (2, 3)}, rules)[0].target == "d/kernel"
    with pytest.raises(MappingError, match="mis-shaped"):
        plan({"w": (3, 2)}, {"d/kernel": (3, 2)}, rules)


def test_every_rule_is_exercised_by_some_official_form():
    """No dead rows: each rule of each table maps at least one tensor of the official forms."""
    used = set()
    for cfg in TINY.values():
        rules = rules_for("pt" if cfg.is_pretrain else "ft")
        for a in load_into(build_model(cfg), _tensors(cfg), rules):
            used.add(_rule_of(a.source, rules))
    for rules in (FINETUNED, PRETRAINED):
        for r in rules:
            if r.source.startswith(("encoder.pos_embed",)):
                continue  # the pre-training encoder never has a learnable table upstream
            assert r in used, r


def _rule_of(key, rules):
    hits = [r for r in rules if r.match_source(key) is not None]
    assert len(hits) == 1
    return hits[0]


def test_encoder_only_rules_map_the_encoder_under_backbone_names():
    tensors = {k: v for k, v in _tensors(TINY_PT).items() if k.startswith("encoder.")}
    model = build_backbone(TINY_PT)
    assignments = load_into(model, tensors, ENCODER_ONLY)
    assert len(assignments) == len(model.weights) == len(tensors)
    assert {a.target.split("/")[0] for a in assignments} >= {"patch_embed", "blocks_0", "blocks_1", "norm"}
