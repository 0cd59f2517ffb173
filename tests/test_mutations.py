"""Break one mapping rule at a time: parity must catch every single one.

A passing parity check is only evidence if a wrong mapping makes it fail. For every rule
used by the official forms we drop its transpose / permute its axes / misplace its values,
and for the pairs that are easiest to confuse we swap targets (q/v bias, norm1/norm2,
LayerNorm weight/bias). Each mutant must either be refused by the accounting (shape) or
disagree with the PyTorch reference beyond the 1e-5 tolerance.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from conftest import TINY, TINY_V2

from converter.checkpoint import unwrap
from converter.engine import CONV3D, LINEAR, SAME, Transform, load_into
from converter.errors import MappingError
from converter.masking import tube_mask
from converter.parity import compare, keras_inputs, make_video, run_reference
from converter.synthetic import synthetic_state_dict
from converter.videomae_rules import rules_for
from pt_reference import build_reference
from tf_models import build_model

TOL = dict(rtol=1e-5, atol=1e-5)
# The official forms, and VideoMAE V2's ViT-g shape (patch 14, MLP ratio 48/11): V2 reuses the table
CASES = {**TINY, **TINY_V2}

BROKEN = {
    LINEAR.name: Transform("transpose dropped", lambda a: a, lambda a: a),
    CONV3D.name: Transform("height/width swapped", lambda a: a.transpose(2, 4, 3, 1, 0), lambda a: a),
    SAME.name: Transform("values misplaced", lambda a: np.flip(a, axis=-1), lambda a: a),
}

SWAPS = [  # (official key a, official key b): map each to the other's Keras weight
    ("attn.q_bias", "attn.v_bias"),
    ("norm1.weight", "norm2.weight"),
    ("norm1.weight", "norm1.bias"),
    ("attn.proj.weight", "attn.qkv.weight"),
    ("mlp.fc1.bias", "mlp.fc2.bias"),
]


class Case:
    """One tiny model with its reference output, shared by all mutants of its rules."""

    cache: dict = {}

    @classmethod
    def get(cls, name):
        if name not in cls.cache:
            cfg = CASES[name]
            tensors = unwrap({"model": synthetic_state_dict(cfg, seed=1)}).tensors
            reference = build_reference(cfg)
            import torch

            reference.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
            video = make_video(cfg, 2, seed=1)
            mask = tube_mask(cfg, 2, seed=1) if cfg.is_pretrain else None
            cls.cache[name] = (cfg, tensors, build_model(cfg), video, mask, run_reference(reference, video, mask))
        return cls.cache[name]


def _outcome(name, rules):
    cfg, tensors, model, video, mask, expected = Case.get(name)
    try:
        load_into(model, tensors, rules)
    except MappingError as err:
        return "refused", str(err)
    got = np.asarray(model(keras_inputs(video, mask), training=False))
    return ("passes" if compare(got, expected, **TOL)["passed"] else "caught"), None


def _used_rules(name):
    cfg, tensors, *_ = Case.get(name)
    rules = rules_for("pt" if cfg.is_pretrain else "ft")
    return [r for r in rules if any(r.match_source(k) is not None for k in tensors)]


def _all_rule_mutants():
    for name in CASES:
        cfg = CASES[name]
        for rule in rules_for("pt" if cfg.is_pretrain else "ft"):
            yield pytest.param(name, rule.source, id=f"{name}:{rule.source}")


@pytest.mark.parametrize("name", list(CASES))
def test_unmutated_table_passes(name):
    assert _outcome(name, rules_for("pt" if CASES[name].is_pretrain else "ft"))[0] == "passes"


@pytest.mark.parametrize("name,source", list(_all_rule_mutants()))
def test_breaking_one_rule_fails_parity(name, source):
    used = _used_rules(name)
    rule = next((r for r in used if r.source == source), None)
    if rule is None:
        pytest.skip("this official form has no such tensor; another form covers the rule")
    broken = dataclasses.replace(rule, transform=BROKEN[rule.transform.name])
    rules = [broken if r is rule else r for r in rules_for("pt" if CASES[name].is_pretrain else "ft")]
    outcome, _ = _outcome(name, rules)
    assert outcome in ("caught", "refused"), f"{source}: {broken.transform.name} went unnoticed"


@pytest.mark.parametrize("a,b", SWAPS, ids=[f"{a}<->{b}" for a, b in SWAPS])
@pytest.mark.parametrize("name", ["ft", "pt"])
def test_swapping_look_alike_tensors_fails_parity(name, a, b):
    rules = rules_for("pt" if TINY[name].is_pretrain else "ft")
    by_suffix = {r.source.split("{i}.")[-1]: r for r in rules if "{i}." in r.source}
    ra, rb = by_suffix[a], by_suffix[b]
    swapped = [dataclasses.replace(ra, target=rb.target, transform=rb.transform) if r is ra else
               dataclasses.replace(rb, target=ra.target, transform=ra.transform) if r is rb else r
               for r in rules]
    outcome, _ = _outcome(name, swapped)
    assert outcome in ("caught", "refused")


def test_wrong_head_count_converts_cleanly_but_fails_parity():
    """Heads cannot be read from shapes: only the variant table and parity protect them."""
    cfg, tensors, _, video, mask, expected = Case.get("ft")
    model = build_model(cfg.with_(num_heads=2))
    load_into(model, tensors, rules_for("ft"))  # no shape error
    got = np.asarray(model(keras_inputs(video, mask), training=False))
    assert not compare(got, expected, **TOL)["passed"]
