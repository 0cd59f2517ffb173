"""torch-side before tensorflow, by construction: each case in a fresh interpreter.

The guard lives in `converter/__init__`: any converter import loads torch's native side first.
`tf_models` has no guard (it imports no torch); `pt_reference` goes through converter."""
from __future__ import annotations

import subprocess
import sys

import pytest

ENV = {"TF_CPP_MIN_LOG_LEVEL": "3", "PATH": "/usr/bin:/bin"}


def _run(code: str):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=ENV)


@pytest.mark.parametrize("code", [
    "import converter.pipeline; import tf_models; import torchvision; print('ok')",
    "import converter; import tensorflow; import pt_reference; import timm; print('ok')",
    "import pt_reference; import tf_models; import timm; print('ok')",
    "from converter import frameworks; frameworks.load(); import timm; print('ok')",
])
def test_project_imports_in_any_order_do_not_crash(code):
    result = _run(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("ok")


@pytest.mark.parametrize("first", ["import tensorflow", "import tf_models"])
@pytest.mark.parametrize("then", ["import converter", "import pt_reference", "from converter.pipeline import convert"])
def test_tensorflow_first_is_refused_with_a_clear_error_not_a_segfault(first, then):
    result = _run(f"{first}\ntry:\n    {then}\nexcept ImportError as e:\n    print('refused:', e)\n")
    assert result.returncode == 0, result.stderr[-2000:]  # a segfault would be -11
    assert "refused: tensorflow was imported before" in result.stdout
