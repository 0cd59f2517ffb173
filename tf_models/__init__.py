"""Keras 3 VideoMAE: `import tf_models` loads keras and its backend, nothing else.

No torch, no converter: this is what users import after a conversion, on any backend
(`KERAS_BACKEND=jax`, `torch` or `tensorflow`). Importing it registers the custom layers, so
`keras.saving.load_model("<name>.keras")` works afterwards.

Mixing with PyTorch in one process: with PyPI's torch (which brings triton), import torch,
torchvision and timm *before* tensorflow; the other order can crash the interpreter when
triton loads. `converter` does that for you; your own scripts must do it themselves.
"""
from . import config, labels  # also bound when the converter loaded them by file first
from .config import DATASETS, V2_VARIANTS, VARIANTS, ArchConfig, arch_config
from .layers import exact_gelu, sinusoid_table
from .videomae import (Float64Compute, build_backbone, build_classifier, build_model, build_pretrain,
                       build_zoo_model, float64_compute, hidden_state_model)
from .export import export_saved_model  # tensorflow is imported when it is called, not before


__all__ = ["ArchConfig", "DATASETS", "Float64Compute", "V2_VARIANTS", "VARIANTS", "arch_config", "build_backbone",
           "build_classifier", "build_model", "build_pretrain", "build_zoo_model", "exact_gelu",
           "export_saved_model", "float64_compute", "hidden_state_model", "sinusoid_table"]
