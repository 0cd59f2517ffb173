"""Import torch and tensorflow in the one order that works in a single process.

With the PyPI torch build, triton's native module (pulled in by torchvision, timm, or a
lazily loaded torch submodule) segfaults when it is loaded after tensorflow. Everything
in this project that needs both frameworks calls `load()` first, so the torch side,
triton included, is always in memory before tensorflow arrives.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys

_TORCH_SIDE = ("torch", "triton", "torchvision", "timm")


class FrameworkOrderError(ImportError):
    pass


def _preload_torch_side() -> None:
    missing_after_tf = []
    for name in _TORCH_SIDE:
        if name in sys.modules:
            continue
        if importlib.util.find_spec(name) is None:
            continue  # e.g. a CPU torch build without triton: nothing native to guard
        if "tensorflow" in sys.modules and name != "torch":
            missing_after_tf.append(name)
            continue
        importlib.import_module(name)
    if missing_after_tf:
        raise FrameworkOrderError(
            "tensorflow was imported before " + ", ".join(missing_after_tf)
            + "; that crashes this process. Import converter (or torch, triton, timm) before tensorflow."
        )


def load():
    """Return (torch, tensorflow, keras), imported torch-side first."""
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _preload_torch_side()
    import torch
    import tensorflow as tf
    import keras

    return torch, tf, keras


def load_torch():
    _preload_torch_side()
    import torch

    return torch


def load_keras():
    """Keras for modules that only need the TensorFlow side, but must not break a later torch import."""
    return load()[2]
