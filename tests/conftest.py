"""Shared fixtures. Importing converter.frameworks first loads torch (and triton) before
anything can pull in tensorflow: the reverse order crashes the interpreter."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from converter import frameworks

frameworks.load()

from converter.variants import ArchConfig  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

# Tiny but complete: 2 blocks, 4 heads, 4 frames of 32x32 -> 8 tokens; every rule still applies.
TINY_FT = ArchConfig(embed_dim=64, depth=2, num_heads=4, num_frames=4, image_size=32, num_classes=7)
# The optional official forms: first-token head with `norm`, layer scale, learnable position table.
TINY_FT_OPTIONAL = TINY_FT.with_(use_mean_pooling=False, layer_scale=True, learnable_pos_embed=True)
TINY_PT = TINY_FT.with_(num_classes=0, decoder_embed_dim=32, decoder_depth=2, decoder_num_heads=2)
TINY_PT_OPTIONAL = TINY_PT.with_(layer_scale=True)
TINY = {"ft": TINY_FT, "ft_optional": TINY_FT_OPTIONAL, "pt": TINY_PT, "pt_optional": TINY_PT_OPTIONAL}


@pytest.fixture(params=list(TINY))
def tiny_cfg(request):
    return TINY[request.param]


def run_cli(*args, cwd=None, timeout=900, env=None):
    """The CLI in a fresh interpreter, as a user runs it."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    return subprocess.run([sys.executable, "-m", "converter.cli", *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)
