"""Keras 3 VideoMAE (channels-last video [batch, frames, height, width, 3]).

Importing this package goes through converter.frameworks so that, where torch is also
installed, its native side is loaded before tensorflow (the other order crashes).
"""
from converter import frameworks as _frameworks

_frameworks.load_keras()

from .videomae import (  # noqa: E402
    Float64Compute,
    build_backbone,
    build_classifier,
    build_model,
    build_pretrain,
    build_zoo_model,
    export_saved_model,
    float64_compute,
    hidden_state_model,
)

__all__ = ["Float64Compute", "build_backbone", "build_classifier", "build_model", "build_pretrain", "build_zoo_model",
           "export_saved_model", "float64_compute", "hidden_state_model"]
