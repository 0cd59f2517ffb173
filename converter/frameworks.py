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
    """Return (torch, tensorflow, keras), imported torch-side first, keras on tensorflow.

    The converter writes SavedModels and LiteRT files, so its keras runs on tensorflow whatever
    KERAS_BACKEND says in the user's shell (the converted artifacts then load on any backend)."""
    if "keras" in sys.modules:
        backend = sys.modules["keras"].backend.backend()
        if backend != "tensorflow":
            raise FrameworkOrderError(f"keras was imported with the {backend} backend; the converter needs "
                                      "tensorflow: set KERAS_BACKEND=tensorflow before importing keras")
    os.environ["KERAS_BACKEND"] = "tensorflow"
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

