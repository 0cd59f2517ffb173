"""The project's own error types: each one carries a single line a user can act on.

The CLI prints `error: <message>` and exits non-zero for any `VMAEError`; a traceback is
shown only with --debug. Anything else escaping is a bug in this project.
"""
from __future__ import annotations


def first_line(err: BaseException, limit: int = 160) -> str:
    """The first line of a foreign exception's message, cut to `limit`, for quoting in ours."""
    text = str(err).strip()
    return text.splitlines()[0][:limit] if text else type(err).__name__


class VMAEError(Exception):
    """Base class; str(err) is the one-line message shown to users."""

    exit_code = 2


class CheckpointError(VMAEError):
    """The checkpoint file cannot be read safely: corrupt, truncated, not a torch file, pickled code."""


class MappingError(VMAEError):
    """The state dict does not fit the Keras model: missing, unexpected or mis-shaped tensors."""

    def __init__(self, message: str, missing=(), unexpected=(), mismatched=()):
        super().__init__(message)
        self.missing = list(missing)
        self.unexpected = list(unexpected)
        self.mismatched = list(mismatched)


class VariantMismatchError(VMAEError):
    """The checkpoint is a different model than the one requested (variant, dataset, stage)."""


class ParityError(VMAEError):
    """A parity check failed: the converted model does not reproduce the reference."""

    exit_code = 3


class RegistryError(VMAEError):
    """checkpoints.yaml has an invalid entry, or the requested entry does not exist."""


class DownloadError(VMAEError):
    """The official file could not be fetched or failed its checksum."""


class ExportError(VMAEError):
    """An artifact could not be written (permissions, disk full)."""
