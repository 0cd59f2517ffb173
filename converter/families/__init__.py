"""Checkpoint families: each one a module that says how its files map onto the one Keras model.

A family module has
  NAME                       its name in reports and on the command line (`--to NAME`)
  claims(path, config)       whether a file or folder on disk is in its format
  load(opts)                 tensors, the architecture they state, details for the report (the
                             official family keeps the pipeline's read_checkpoint + config_for path)
  rules(cfg, encoder_only, architecture)  its rule table: key -> Keras weight path -> transform
  dropped(tensors, encoder_only)          tensors an encoder-only export leaves behind
  reference(cfg, tensors, details, choice)  the PyTorch model parity is proven against
  write(tensors, dest, cfg, labels, architecture)  its files back out, under its own keys
  report_fields(cfg, details)  what the parity report says about the source
The engine (accounting both ways), parity, export and the zoo stay shared.

  official  MCG-NJU `.pth` (families/official.py): shapes + variant table, pt_reference
  hf        transformers folders (families/hf.py): config.json, transformers' own VideoMAE
  v2        VideoMAE V2 `.pth` (families/v2.py): the official keys, V2's variant table
"""
from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError
from . import hf, official, v2

FAMILIES = {official.NAME: official, hf.NAME: hf, v2.NAME: v2}


def get(name: str):
    if name not in FAMILIES:
        raise CheckpointError(f"unknown checkpoint family {name!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[name]


def detect(path, config=None):
    """The family whose format this is, judged by what is on disk (a folder with config.json, a
    .safetensors file, a file given with --config, or else an official .pth)."""
    path = Path(path)
    config = Path(config) if config else None
    for family in (hf, official):
        if family.claims(path, config):
            return family
    raise CheckpointError(f"{path} is a folder without config.json: not a Hugging Face model folder; "
                          "pass the folder that holds config.json, or a checkpoint file")
