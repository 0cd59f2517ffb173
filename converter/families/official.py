"""The official MCG-NJU family: `.pth` state dicts as the training scripts save them.

Its rule table reads one official key per line: this tensor, in this transform, becomes this
Keras weight. LayerNorm weight/bias are Keras gamma/beta; Linear and Conv3d weights are
transposed (engine.LINEAR, engine.CONV3D). The q/v biases stay two weights because upstream
trains no k bias: folding them into one qkv bias would make a k bias trainable in TensorFlow.
The architecture comes from the tensor shapes and the variant table (heads are not in the
weights); the PyTorch reference is `pt_reference`, a copy of the official forward.
"""
from __future__ import annotations

from pathlib import Path

from ..engine import CONV3D, LINEAR, SAME, Rule

NAME = "official"
GENERATION = "v1"  # the architecture comes from shapes + this generation's variant table


def block_rules(src: str, dst: str) -> list[Rule]:
    """One transformer block; `src`/`dst` carry the {i} index, e.g. 'blocks.{i}' / 'blocks_{i}'."""
    return [
        Rule(f"{src}.norm1.weight",      f"{dst}/norm1/gamma",         SAME),
        Rule(f"{src}.norm1.bias",        f"{dst}/norm1/beta",          SAME),
        Rule(f"{src}.attn.qkv.weight",   f"{dst}/attn/qkv/kernel",     LINEAR),
        Rule(f"{src}.attn.q_bias",       f"{dst}/attn/q_bias",         SAME),
        Rule(f"{src}.attn.v_bias",       f"{dst}/attn/v_bias",         SAME),
        Rule(f"{src}.attn.proj.weight",  f"{dst}/attn/proj/kernel",    LINEAR),
        Rule(f"{src}.attn.proj.bias",    f"{dst}/attn/proj/bias",      SAME),
        Rule(f"{src}.norm2.weight",      f"{dst}/norm2/gamma",         SAME),
        Rule(f"{src}.norm2.bias",        f"{dst}/norm2/beta",          SAME),
        Rule(f"{src}.mlp.fc1.weight",    f"{dst}/mlp/fc1/kernel",      LINEAR),
        Rule(f"{src}.mlp.fc1.bias",      f"{dst}/mlp/fc1/bias",        SAME),
        Rule(f"{src}.mlp.fc2.weight",    f"{dst}/mlp/fc2/kernel",      LINEAR),
        Rule(f"{src}.mlp.fc2.bias",      f"{dst}/mlp/fc2/bias",        SAME),
        Rule(f"{src}.gamma_1",           f"{dst}/gamma_1",             SAME),  # layer scale
        Rule(f"{src}.gamma_2",           f"{dst}/gamma_2",             SAME),
    ]


def embedding_rules(src: str, dst: str) -> list[Rule]:
    return [
        Rule(f"{src}patch_embed.proj.weight", f"{dst}patch_embed/proj/kernel",  CONV3D),
        Rule(f"{src}patch_embed.proj.bias",   f"{dst}patch_embed/proj/bias",    SAME),
        Rule(f"{src}pos_embed",               f"{dst}pos_embed/pos_embed",      SAME),  # learnable only
    ]


FINETUNED: list[Rule] = [
    *embedding_rules("", ""),
    *block_rules("blocks.{i}", "blocks_{i}"),
    Rule("norm.weight",     "norm/gamma",      SAME),  # use_mean_pooling=False
    Rule("norm.bias",       "norm/beta",       SAME),
    Rule("fc_norm.weight",  "fc_norm/gamma",   SAME),  # use_mean_pooling=True (official default)
    Rule("fc_norm.bias",    "fc_norm/beta",    SAME),
    Rule("head.weight",     "head/kernel",     LINEAR),
    Rule("head.bias",       "head/bias",       SAME),
]

PRETRAINED: list[Rule] = [
    *embedding_rules("encoder.", "encoder_"),
    *block_rules("encoder.blocks.{i}", "encoder_blocks_{i}"),
    Rule("encoder.norm.weight",        "encoder_norm/gamma",           SAME),
    Rule("encoder.norm.bias",          "encoder_norm/beta",            SAME),
    Rule("encoder_to_decoder.weight",  "encoder_to_decoder/kernel",    LINEAR),
    Rule("mask_token",                 "decoder_input/mask_token",     SAME),
    *block_rules("decoder.blocks.{i}", "decoder_blocks_{i}"),
    Rule("decoder.norm.weight",        "decoder_norm/gamma",           SAME),
    Rule("decoder.norm.bias",          "decoder_norm/beta",            SAME),
    Rule("decoder.head.weight",        "decoder_head/kernel",          LINEAR),
    Rule("decoder.head.bias",          "decoder_head/bias",            SAME),
]

# Headless backbone from a pre-trained checkpoint: the encoder under classifier names.
# The decoder tensors are deliberately left behind (see ENCODER_ONLY_DROPPED).
ENCODER_ONLY: list[Rule] = [
    *embedding_rules("encoder.", ""),
    *block_rules("encoder.blocks.{i}", "blocks_{i}"),
    Rule("encoder.norm.weight", "norm/gamma", SAME),
    Rule("encoder.norm.bias",   "norm/beta",  SAME),
]
ENCODER_ONLY_DROPPED = ("encoder_to_decoder.", "mask_token", "decoder.")


def rules_for(stage: str, encoder_only: bool = False) -> list[Rule]:
    if encoder_only:
        return ENCODER_ONLY
    return PRETRAINED if stage == "pt" else FINETUNED


def rules(cfg, encoder_only: bool = False, architecture: str | None = None) -> list[Rule]:
    return rules_for("pt" if cfg.is_pretrain else "ft", encoder_only)


def dropped(tensors: dict, encoder_only: bool) -> list[str]:
    """Tensors a conversion leaves behind on purpose: the decoder of an encoder-only export."""
    return [k for k in tensors if k.startswith(ENCODER_ONLY_DROPPED)] if encoder_only else []


def claims(path: Path, config: Path | None) -> bool:
    """Any single file without a config.json: torch.save output, checked when read."""
    return config is None and not path.is_dir() and path.suffix != ".safetensors"


def write(tensors: dict, dest: Path, cfg=None, labels=None, architecture=None) -> list[Path]:
    """torch.save({'model': state_dict}) as the official training scripts do, via a temporary name."""
    from .. import frameworks

    torch = frameworks.load_torch()
    dest = Path(dest)
    tmp = dest.with_name(dest.name + ".tmp")
    torch.save({"model": {k: torch.from_numpy(v) for k, v in tensors.items()}}, tmp)
    tmp.replace(dest)
    return [dest]


def reference(cfg, tensors: dict, details: dict, choice: str = "auto"):
    """pt_reference, the official forward, holding the checkpoint's own tensors (no copy)."""
    from .. import frameworks
    from pt_reference import load_reference

    torch = frameworks.load_torch()
    details["reference"] = "pt_reference (the official forward)"
    return load_reference(cfg, {k: torch.from_numpy(v) for k, v in tensors.items()})


def report_fields(cfg, details: dict) -> dict:
    return {"family": NAME, "generation": "VideoMAE", "reference": details.get("reference")}
