"""vmae-convert: official PyTorch VideoMAE checkpoints -> Keras 3 / TensorFlow, proven equal.

Importing this package loads torch's native side (torch, triton, torchvision, timm) before
anything else can: with PyPI's torch, triton loaded after tensorflow crashes the process, and
the converter needs both. This is the one place that guard lives, so every converter entry
point (the CLI, `converter.pipeline.convert`, `pt_reference`) is safe by construction, whatever
the caller imports next. tensorflow itself loads later, only when a conversion reaches it
(`converter.frameworks.load`), so the PyTorch forwards run before it takes its memory.
`tf_models`, the Keras model users import after a conversion, imports no torch at all.
"""
from . import frameworks as _frameworks

__version__ = "0.1.0"

_frameworks.load_torch()
