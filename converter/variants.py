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


def _load_by_file(name: str, relative: str):
    if name in sys.modules:
        return sys.modules[name]
    package = importlib.util.find_spec("tf_models")  # a top-level find_spec imports nothing
    path = Path(package.submodule_search_locations[0]) / relative
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_config = _load_by_file("tf_models.config", "config.py")
# The class-name lists and K710 remaps, pure data too; `import tf_models.labels` later finds this module.
labels = _load_by_file("tf_models.labels", "labels/__init__.py")

ArchConfig = _config.ArchConfig
Variant, VARIANTS, V2_VARIANTS = _config.Variant, _config.VARIANTS, _config.V2_VARIANTS
Generation, GENERATIONS = _config.Generation, _config.GENERATIONS
get_generation, generation_for = _config.get_generation, _config.generation_for
Dataset, DATASETS = _config.Dataset, _config.DATASETS
STAGES = _config.STAGES
arch_config, get_variant, get_dataset = _config.arch_config, _config.get_variant, _config.get_dataset
PATCH_SIZE, TUBELET_SIZE, NUM_FRAMES, IMAGE_SIZE, IN_CHANNELS = (
    _config.PATCH_SIZE, _config.TUBELET_SIZE, _config.NUM_FRAMES, _config.IMAGE_SIZE, _config.IN_CHANNELS)
LAYER_NORM_EPS = _config.LAYER_NORM_EPS


def variant_for_width(embed_dim: int, generation: str = "v1") -> str | None:
    """The variant whose encoder has this width, used to tell users what a file really is
    (the asked generation's table first; ViT-g exists in V2 only)."""
    tables = [GENERATIONS[generation]] + [g for g in GENERATIONS.values() if g.key != generation]
    for g in tables:
        for v in g.variants.values():
            if v.embed_dim == embed_dim:
                return v.name
    return None


def dataset_for_classes(num_classes: int) -> str | None:
    for d in DATASETS.values():
        if d.num_classes == num_classes:
            return d.key
    return None


def artifact_name(variant: str, dataset: str, stage: str, num_frames: int = NUM_FRAMES,
                  image_size: int = IMAGE_SIZE, generation: str = "v1") -> str:
    """Release zoo naming: TFVideoMAE_{S|B|L|H}_{K400|SSv2|UCF}_{frames}x{size}_{PT|FT};
    VideoMAE V2 as TFVideoMAE2_{S|B|L|H|G}_{K710|...|Hybrid}_..., so the two never share a name."""
    g = get_generation(generation)
    v = get_variant(variant, generation)
    d = get_dataset(dataset)
    return f"{g.artifact_prefix}_{v.name}_{d.label}_{num_frames}x{image_size}_{stage.upper()}"


def file_generation(info: dict) -> tuple[str | None, str]:
    """The generation a checkpoint's shapes prove (checkpoint.describe's info), with the evidence;
    None where v1 and V2 files look alike (their S/B/L encoders are the same)."""
    if info.get("patch_size") == 14 or info.get("embed_dim") == V2_VARIANTS["G"].embed_dim:
        return "v2", f"patch {info.get('patch_size')}, width {info.get('embed_dim')}: ViT-g/14 exists in VideoMAE V2 only"
    if info.get("stage") == "pt" and info.get("embed_dim") == VARIANTS["H"].embed_dim:
        width = info.get("decoder_embed_dim")
        if width == V2_VARIANTS["H"].decoder_embed_dim:
            return "v2", f"a ViT-H decoder {width} wide is VideoMAE V2's (v1's is {VARIANTS['H'].decoder_embed_dim})"
        if width == VARIANTS["H"].decoder_embed_dim:
            return "v1", f"a ViT-H decoder {width} wide is VideoMAE v1's (V2's is {V2_VARIANTS['H'].decoder_embed_dim})"
    return None, ""
