"""The architecture table, as the converter reads it, and the release zoo's naming.

The table itself lives beside the Keras model (`tf_models/config.py`, pure data). It is
loaded here by file, without running `tf_models/__init__`: that imports keras, hence
tensorflow (0.7 GB resident, 5 s), and the converter must load torch's native side first
and run the PyTorch forwards before tensorflow takes its memory (see `frameworks`).
`import tf_models` later finds this same module object, so there is one `ArchConfig` class.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path


def _load_config_module():
    name = "tf_models.config"
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("tf_models")  # a top-level find_spec imports nothing
    path = Path(package.submodule_search_locations[0]) / "config.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_config = _load_config_module()

ArchConfig = _config.ArchConfig
Variant, VARIANTS = _config.Variant, _config.VARIANTS
Dataset, DATASETS = _config.Dataset, _config.DATASETS
STAGES = _config.STAGES
arch_config, get_variant, get_dataset = _config.arch_config, _config.get_variant, _config.get_dataset
PATCH_SIZE, TUBELET_SIZE, NUM_FRAMES, IMAGE_SIZE, IN_CHANNELS = (
    _config.PATCH_SIZE, _config.TUBELET_SIZE, _config.NUM_FRAMES, _config.IMAGE_SIZE, _config.IN_CHANNELS)
LAYER_NORM_EPS = _config.LAYER_NORM_EPS


def variant_for_width(embed_dim: int) -> str | None:
    """The variant whose encoder has this width, used to tell users what a file really is."""
    for v in VARIANTS.values():
        if v.embed_dim == embed_dim:
            return v.name
    return None


def dataset_for_classes(num_classes: int) -> str | None:
    for d in DATASETS.values():
        if d.num_classes == num_classes:
            return d.key
    return None


def artifact_name(variant: str, dataset: str, stage: str, num_frames: int = NUM_FRAMES,
                  image_size: int = IMAGE_SIZE) -> str:
    """Release zoo naming: TFVideoMAE_{S|B|L|H}_{K400|SSv2|UCF}_{frames}x{size}_{PT|FT}."""
    v = get_variant(variant)
    d = get_dataset(dataset)
    return f"TFVideoMAE_{v.name}_{d.label}_{num_frames}x{image_size}_{stage.upper()}"
