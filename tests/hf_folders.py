"""Hub-style folders written the way their owners write them, for tests (no downloads).

`save_transformers`: transformers' own `save_pretrained` (model.safetensors; transformers 5.24
maps its `query.bias`/`value.bias` back to the hub's `q_bias`/`v_bias` as it saves).
`save_module_keys`: the module's own state dict in model.safetensors (`query.bias`/`value.bias`,
what transformers 5 releases without that renaming wrote). `save_hub_style`: what the MCG-NJU hub
repos hold, written by transformers 4.x: pytorch_model.bin with `q_bias`/`v_bias`, and a
config.json saying `qkv_bias`.
Every tensor is random and non-zero at trained-like scales, so each one moves the output.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from converter.families import hf

TINY_HF = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=256, patch_size=16,
               tubelet_size=2, num_frames=4, image_size=32, num_channels=3, layer_norm_eps=1e-12,
               qkv_bias=True, hidden_act="gelu", decoder_hidden_size=32, decoder_num_hidden_layers=2,
               decoder_num_attention_heads=2, decoder_intermediate_size=128)
LABELS = ["abseiling", "air drumming", "answering questions", "applauding", "applying cream", "archery",
          "arm wrestling"]


def _fill(name: str, shape, rng) -> torch.Tensor:
    noise = rng.standard_normal(shape).astype(np.float32)
    if "norm" in name and name.endswith("weight"):
        values = 1.0 + 0.1 * noise
    elif name.endswith(("query.weight", "key.weight")) or name.endswith("head.weight") or "classifier" in name:
        values = noise / np.sqrt(shape[-1])  # attention logits of order 1: a wrong split shows
    elif name.endswith("weight") and len(shape) == 2:
        values = 0.5 * noise / np.sqrt(shape[1])
    elif name.endswith(("query.bias", "value.bias")):
        values = 0.1 * noise
    else:
        values = (0.05 if name.endswith("bias") else 0.02) * noise
    values[np.abs(values) < 1e-6] = 1e-3
    return torch.from_numpy(values)


def transformers_model(architecture: str, seed: int = 0, **overrides):
    import transformers

    fields = {**TINY_HF, **overrides}
    if architecture == hf.CLASSIFIER:
        fields.setdefault("use_mean_pooling", True)
        fields.setdefault("id2label", dict(enumerate(LABELS)))
        fields.setdefault("label2id", {n: i for i, n in fields["id2label"].items()})
    else:
        fields.setdefault("use_mean_pooling", False)
    config = transformers.VideoMAEConfig(**fields)
    model = getattr(transformers, architecture)(config).eval()
    rng = np.random.default_rng(seed)
    model.load_state_dict({k: _fill(k, tuple(v.shape), rng) for k, v in model.state_dict().items()})
    return model


def save_transformers(folder: Path, architecture: str, seed: int = 0, **overrides) -> Path:
    transformers_model(architecture, seed, **overrides).save_pretrained(folder)
    return Path(folder)


def save_module_keys(folder: Path, architecture: str, seed: int = 0, **overrides) -> Path:
    from safetensors.torch import save_file

    model = transformers_model(architecture, seed, **overrides)
    model.config.save_pretrained(folder)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, Path(folder) / "model.safetensors",
              metadata={"format": "pt"})
    return Path(folder)


def save_hub_style(folder: Path, architecture: str, seed: int = 0, **overrides) -> Path:
    """As on the hub: q_bias/v_bias names in a pickled pytorch_model.bin, a 4.x config.json."""
    model = transformers_model(architecture, seed, **overrides)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in model.state_dict().items():
        key = key.replace("attention.attention.query.bias", "attention.attention.q_bias")
        key = key.replace("attention.attention.value.bias", "attention.attention.v_bias")
        state[key] = value.clone()
    torch.save(state, folder / "pytorch_model.bin")
    config = model.config.to_dict()
    config.pop("qv_bias", None)
    config.update(qkv_bias=True, transformers_version="4.22.0.dev0", architectures=[architecture])
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    return folder
