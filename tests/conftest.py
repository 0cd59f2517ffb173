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
# VideoMAE V2's ViT-g in small: patch 14, MLP ratio 48/11 (44 * 48/11 = 192 exactly, as 1408 gives
# 6144; 24 * 48/11 = 104.7 truncates, as 512 gives 2234), head width 22 (not a power of two, as 88).
TINY_V2_FT = ArchConfig(embed_dim=44, depth=2, num_heads=2, patch_size=14, mlp_ratio=48 / 11, num_frames=4,
                        image_size=28, num_classes=7)
TINY_V2_PT = TINY_V2_FT.with_(num_classes=0, decoder_embed_dim=24, decoder_depth=2, decoder_num_heads=2)
TINY_V2 = {"v2_ft": TINY_V2_FT, "v2_pt": TINY_V2_PT}
# vmae-convert's test hook ($VMAE_TEST_ARCH_OVERRIDES) shrinking the V2 ViT-g table to that size
TINY_G_OVERRIDES = {"embed_dim": 44, "depth": 2, "num_heads": 2, "num_frames": 4, "image_size": 28,
                    "decoder_embed_dim": 24, "decoder_depth": 2, "decoder_num_heads": 2}


@pytest.fixture(params=list(TINY))
def tiny_cfg(request):
    return TINY[request.param]


# What tensorflow prints on an Intel AVX-512/AMX CPU as it loads, whatever TF_CPP_MIN_LOG_LEVEL
# says: written by its C++ side straight to file descriptor 2. Every CLI test process writes it
# the same way when tensorflow finishes importing, so the tests that read stderr prove the
# one-line promise on every CPU, not only on the one CI happens to get.
NATIVE_NOISE = (
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    "I0000 00:00:1764000000.000000    4242 port.cc:153] oneDNN custom operations are on. You may see "
    "slightly different numerical results due to floating-point round-off errors from different "
    "computation orders. To turn them off, set the environment variable `TF_ENABLE_ONEDNN_OPTS=0`.\n"
)
NOISY_TENSORFLOW = f"""
import importlib.abc, importlib.machinery, os, sys

class _NoisyTensorflow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name != "tensorflow":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            for _ in range(2):
                os.write(2, {NATIVE_NOISE!r}.encode())

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _NoisyTensorflow())
"""


def run_cli(*args, cwd=None, timeout=900, env=None, module="converter.cli"):
    """The CLI in a fresh interpreter, as a user runs it (tensorflow's native noise included)."""
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})}
    code = NOISY_TENSORFLOW + f"\nimport runpy\nrunpy.run_module({module!r}, run_name='__main__')\n"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd or REPO,
                          capture_output=True, text=True, timeout=timeout, env=full_env)


# A complete tiny conversion in a fresh interpreter, with the CLI's own failure handling
# (`converter.cli.guarded`: signals, one error line, exit codes); the CLI itself always builds
# a full-size zoo model. argv: config JSON, checkpoint, output dir, artifact name, and optionally
# a phase and a byte count: when that phase starts, files may no longer grow past it (ulimit -f).
TINY_CONVERSION = r"""
import json, resource, sys
from converter.cli import guarded
from converter.pipeline import convert
from converter.variants import ArchConfig

def progress(message):
    if len(sys.argv) > 6 and message == sys.argv[5] + " ...":
        resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[6]), int(sys.argv[6])))

def run():
    convert(config=ArchConfig(**json.loads(sys.argv[1])), checkpoint=sys.argv[2], output_dir=sys.argv[3],
            name=sys.argv[4], xla=False, float64=False, progress=progress)
    return 0

guarded(run)
"""


def start_tiny_conversion(cfg, checkpoint, output_dir, name, preexec_fn=None, file_size_limit=None):
    """Popen of TINY_CONVERSION (stdout/stderr piped, text); file_size_limit=(phase, bytes)."""
    import json

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    limit = [file_size_limit[0], str(file_size_limit[1])] if file_size_limit else []
    return subprocess.Popen([sys.executable, "-c", NOISY_TENSORFLOW + TINY_CONVERSION, json.dumps(cfg.to_dict()),
                             str(checkpoint),
                             str(output_dir), name, *limit], cwd=REPO, env=env, preexec_fn=preexec_fn,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def swap_qv_biases(monkeypatch, block: int = 1, prefix: str = "blocks") -> None:
    """A mapping bug in one place: the pipeline loads block `block`'s q and v biases swapped."""
    from converter import engine

    real = engine.load_into

    def corrupt(model, tensors, rules, **options):
        tensors = dict(tensors)
        q, v = f"{prefix}.{block}.attn.q_bias", f"{prefix}.{block}.attn.v_bias"
        tensors[q], tensors[v] = tensors[v], tensors[q]
        return real(model, tensors, rules, **options)

    monkeypatch.setattr("converter.pipeline.load_into", corrupt)
