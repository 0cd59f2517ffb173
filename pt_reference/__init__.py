"""PyTorch reference VideoMAE: official state-dict keys, official forward."""
from converter import frameworks as _frameworks

_frameworks.load_torch()

from .videomae import (  # noqa: E402
    VideoMAEClassifier,
    VideoMAEPretrain,
    build_reference,
    float64_compute,
    load_reference,
    sinusoid_table,
)

__all__ = ["VideoMAEClassifier", "VideoMAEPretrain", "build_reference", "float64_compute", "load_reference",
           "sinusoid_table"]
