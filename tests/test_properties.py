"""Property-based tests (case 8): generated official-format state dicts with keys dropped,
renamed, duplicated, reshaped, retyped or replaced. Whatever the damage, the converter's path
(unwrap -> config from the tensors -> name check -> mapping into a Keras model) either converts
exactly what the file holds or raises the project's own error, converter.errors.VMAEError;
never another exception. Tiny configurations keep each example to a few milliseconds."""
from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from conftest import TINY_FT, TINY_PT
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from converter.checkpoint import MAX_DEPTH, config_for, config_from_tensors, unwrap
from converter.engine import export_state_dict, load_into
from converter.errors import VMAEError
from converter.pipeline import check_official_keys
from converter.synthetic import synthetic_state_dict
from converter.videomae_rules import rules_for

BASE = {"ft": TINY_FT, "pt": TINY_PT}
READ = dict(num_heads=4, decoder_num_heads=2, num_frames=4, image_size=32)
SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

FLOAT_TYPES = [torch.float16, torch.bfloat16, torch.float64]
BAD_TYPES = [torch.int32, torch.int64, torch.uint8, torch.bool, torch.complex64]
NOT_TENSORS = [None, 3.0, "weights", [0.1, 0.2], {"nested": 1}, np.ones(3, np.float32)]
BAD_KEYS = [0, 7, b"head.weight", ("blocks", 0), None, 1.5]
SHAPING = ["patch_embed.proj.weight", "encoder.patch_embed.proj.weight", "mask_token", "head.weight",
           "fc_norm.weight", "encoder.norm.weight", "decoder.head.weight", "blocks.1.norm1.weight",
           "encoder.blocks.1.attn.qkv.weight", "decoder.blocks.1.norm1.weight"]


@functools.lru_cache(maxsize=None)
def base_state_dict(stage: str) -> dict:
    return synthetic_state_dict(BASE[stage], seed=0)


@functools.lru_cache(maxsize=None)
def keras_model(cfg):
    from tf_models import build_model

    return build_model(cfg)


# -- generated damage --------------------------------------------------------------------------

def _names(key: str):
    """New names for a key: look-alikes (another block, another leaf, another prefix) and noise."""
    parts = key.split(".")
    look_alikes = [key.upper(), key + "_", "module." + key, key.replace("weight", "bias"),
                   key.replace("blocks.0", "blocks.1"), key.replace("blocks.1", "blocks.0"),
                   key.replace("blocks.0", "blocks.7"), key.replace("blocks.1", "blocks.300"),
                   key.replace("norm1", "norm2"), key.replace("encoder.", ""), "encoder." + key,
                   key.replace("fc_norm", "norm"), ".".join(parts[:-1]), "decoder." + parts[-1]]
    return st.one_of(st.sampled_from(look_alikes),
                     st.text(alphabet="abcdefghijklmnopqrstuvwxyz._0123456789", max_size=24))


def _reshaped(t: torch.Tensor, how: str) -> torch.Tensor:
    if how == "flatten":
        return t.reshape(-1)
    if how == "unsqueeze":
        return t.unsqueeze(0)
    if how == "transpose":
        return t.t().contiguous() if t.ndim == 2 else t.flip(0)
    if how == "first_row":
        return t[:1].clone()
    if how == "empty":
        return t[:0].clone()
    if how == "scalar":
        return t.reshape(-1)[0].clone()
    return torch.cat([t, t[:1]])  # "one_more"


@st.composite
def damage(draw, key_list):
    """One change to a state dict: (kind, key, detail)."""
    kind = draw(st.sampled_from(["drop", "rename", "duplicate", "reshape", "retype", "bad_type", "non_finite",
                                 "not_a_tensor", "bad_key"]))
    # Half the time one of the tensors the architecture is read from: they break things differently.
    shaping = [k for k in SHAPING if k in key_list]
    key = draw(st.one_of(st.sampled_from(shaping), st.sampled_from(key_list)))
    detail = None
    if kind in ("rename", "duplicate"):
        detail = draw(_names(key))
    elif kind == "reshape":
        detail = draw(st.sampled_from(["flatten", "unsqueeze", "transpose", "first_row", "empty", "scalar",
                                       "one_more"]))
    elif kind == "retype":
        detail = draw(st.sampled_from(FLOAT_TYPES))
    elif kind == "bad_type":
        detail = draw(st.sampled_from(BAD_TYPES))
    elif kind == "non_finite":
        detail = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
    elif kind == "not_a_tensor":
        detail = draw(st.sampled_from(range(len(NOT_TENSORS))))
    elif kind == "bad_key":
        detail = draw(st.sampled_from(range(len(BAD_KEYS))))
    return kind, key, detail


def apply(sd: dict, change) -> bool:
    """Apply one change in place (tensors are replaced, never modified); True if it must be refused."""
    kind, key, detail = change
    if key not in sd:  # an earlier change removed it
        return False
    value = sd[key]
    if kind not in ("drop", "rename", "duplicate", "bad_key") and not (
            isinstance(value, torch.Tensor) and value.is_floating_point() and value.ndim and value.numel()):
        return False  # an earlier change left no float tensor to reshape, retype or poison
    if kind == "drop":
        del sd[key]
        return True
    if kind == "rename":
        if detail == key:
            return False
        sd[detail] = sd.pop(key)
        return True
    if kind == "duplicate":
        if detail == key:
            return False
        sd[detail] = value.clone() if isinstance(value, torch.Tensor) else value
        return True
    if kind == "reshape":
        sd[key] = _reshaped(value, detail)
        return tuple(sd[key].shape) != tuple(value.shape)
    if kind == "retype":
        sd[key] = value.to(detail)
        return False
    if kind == "bad_type":
        sd[key] = value.to(detail)
        return True
    if kind == "non_finite":
        bad = value.clone()
        bad.view(-1)[bad.numel() // 2] = detail
        sd[key] = bad
        return True
    if kind == "not_a_tensor":
        sd[key] = NOT_TENSORS[detail]
        return True
    sd[BAD_KEYS[detail]] = sd.pop(key)  # "bad_key"
    return True


def wrap(sd: dict, how: str):
    if how == "bare":
        return sd
    if how in ("module.", "backbone.", "encoder."):  # DDP / fine-tuning loader / lone encoder prefixes
        return {"model": {(how + k if isinstance(k, str) else k): v for k, v in sd.items()}}
    return {how: sd, "epoch": 3}


def make_case(stage, changes, container):
    sd = dict(base_state_dict(stage))
    must_fail = [apply(sd, change) for change in changes]
    return stage, wrap(sd, container), changes, must_fail, sd


@st.composite
def damaged_checkpoints(draw, max_changes=4):
    stage = draw(st.sampled_from(["ft", "pt"]))
    changes = draw(st.lists(damage(sorted(base_state_dict(stage))), min_size=1, max_size=max_changes))
    container = draw(st.sampled_from(["bare", "model", "module", "state_dict", "module.", "backbone.", "encoder."]))
    return make_case(stage, changes, container)


# Damage that once escaped as a plain exception, always tried besides the generated cases.
KNOWN = [
    ("ft", [("reshape", "patch_embed.proj.weight", "flatten")], "bare"),  # Conv3d transpose on 1-D
    ("pt", [("reshape", "mask_token", "scalar")], "model"),  # width read from a 0-d tensor
    ("ft", [("rename", "blocks.1.norm1.weight", "blocks.300.norm1.weight")], "bare"),  # 301 blocks
    ("ft", [("reshape", "patch_embed.proj.weight", "first_row")], "model"),  # width 1 for 4 heads
    ("pt", [("drop", "mask_token", None)], "model"),  # a decoder without width
    ("ft", [("bad_key", "head.bias", 0)], "module."),  # an int key under a prefix
]


# -- the converter's path on one in-memory checkpoint -------------------------------------------

def convert_inferring_config(obj):
    """Architecture read off the tensors (custom models): the converter's path up to the weights."""
    loaded = unwrap(obj, "<generated>")
    try:
        config_for(loaded.tensors, "S", "k400", "ft")  # the zoo path: a tiny file is never a ViT-S
        raise AssertionError("a tiny checkpoint passed as ViT-S")
    except VMAEError:
        pass
    cfg = config_from_tensors(loaded.tensors, **READ)
    # Its contract: a configuration that can be built, or a VMAEError.
    assert 1 <= cfg.depth <= MAX_DEPTH and cfg.embed_dim % cfg.num_heads == 0, cfg
    assert cfg.image_size % cfg.patch_size == 0 and cfg.num_frames % cfg.tubelet_size == 0, cfg
    if cfg.is_pretrain:
        assert cfg.decoder_embed_dim % cfg.decoder_num_heads == 0 and cfg.decoder_depth <= MAX_DEPTH, cfg
    check_official_keys(loaded.tensors, cfg)
    rules = rules_for("pt" if cfg.is_pretrain else "ft")
    model = keras_model(cfg)
    load_into(model, loaded.tensors, rules)
    return loaded, export_state_dict(model, rules)


def convert_with_given_config(obj, stage):
    """Architecture given (`convert(config=...)`): the Keras-side accounting alone, no name pre-check."""
    loaded = unwrap(obj, "<generated>")
    rules = rules_for(stage)
    model = keras_model(BASE[stage])
    load_into(model, loaded.tensors, rules)  # engine.plan's accounting is the only guard here
    return loaded, export_state_dict(model, rules)


def assert_holds_the_file(loaded, exported, file_sd):
    """Converted means: every tensor of the file, and nothing else, bit for bit in float32."""
    assert exported.keys() == loaded.tensors.keys()
    for key, value in exported.items():
        np.testing.assert_array_equal(value, loaded.tensors[key], err_msg=key)
    assert loaded.tensors.keys() == file_sd.keys()
    for key, value in loaded.tensors.items():
        np.testing.assert_array_equal(value, file_sd[key].to(torch.float32).numpy(), err_msg=key)


def outcome(convert, *args):
    try:
        return convert(*args)
    except VMAEError as err:
        assert str(err) and "\n" not in str(err), repr(err)
        return err


# -- properties --------------------------------------------------------------------------------

@pytest.mark.parametrize("stage", ["ft", "pt"])
def test_undamaged_checkpoints_convert_in_every_container(stage):
    for container in ["bare", "model", "module", "state_dict", "module.", "backbone.", "encoder."]:
        sd = dict(base_state_dict(stage))
        loaded, exported = convert_inferring_config(wrap(sd, container))
        assert_holds_the_file(loaded, exported, sd)


def _with_known(test):
    for stage, changes, container in KNOWN:
        test = example(case=make_case(stage, changes, container))(test)
    return test


@settings(max_examples=120, **SETTINGS)
@given(case=damaged_checkpoints())
@_with_known
def test_damaged_checkpoint_converts_exactly_or_raises_vmae_error(case):
    stage, obj, changes, must_fail, sd = case
    for convert, args in ((convert_inferring_config, (obj,)), (convert_with_given_config, (obj, stage))):
        result = outcome(convert, *args)
        if isinstance(result, VMAEError):
            continue
        loaded, exported = result
        assert_holds_the_file(loaded, exported, sd)


@settings(max_examples=80, **SETTINGS)
@given(case=damaged_checkpoints(max_changes=1))
@_with_known
def test_a_single_harmful_change_is_always_refused(case):
    stage, obj, changes, must_fail, sd = case
    for convert, args in ((convert_inferring_config, (obj,)), (convert_with_given_config, (obj, stage))):
        result = outcome(convert, *args)
        if must_fail[0]:
            assert isinstance(result, VMAEError), f"{changes} was converted"
        else:  # a float retype, a rename to itself, a same-shape transpose: converts, values intact
            assert not isinstance(result, VMAEError), f"{changes}: {result}"
            assert_holds_the_file(*result, sd)
