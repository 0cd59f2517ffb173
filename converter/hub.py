"""`hf://owner/repo[@revision]`: a Hugging Face hub repo, downloaded with huggingface_hub into
its own cache (HF_HUB_CACHE; HF_ENDPOINT picks the server), then converted like a local folder.

Only what a conversion reads is fetched: config.json and one weight file, model.safetensors
where the repo has it, else pytorch_model.bin (several MCG-NJU repos hold only that).
"""
from __future__ import annotations

import re
from pathlib import Path

from .errors import DownloadError

SCHEME = "hf://"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*")


def is_hub(spec) -> bool:
    return isinstance(spec, str) and spec.startswith(SCHEME)


def parse(spec: str) -> tuple[str, str | None]:
    repo, _, revision = spec[len(SCHEME):].partition("@")
    if not REPO.fullmatch(repo) or (revision == "" and spec.endswith("@")):
        raise DownloadError(f"{spec!r} is not a hub address: use hf://owner/repo or hf://owner/repo@revision")
    return repo, revision or None


def artifact_name(spec: str) -> str:
    return "TFVideoMAE_hf_" + parse(spec)[0].split("/")[1]


def fetch(spec: str) -> Path:
    """The local folder holding config.json and the weights of `spec`."""
    repo, revision = parse(spec)
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise DownloadError(f"{spec}: downloading from the hub needs huggingface_hub (pip install '.[hf]')") from None
    try:
        config = Path(hf_hub_download(repo, "config.json", revision=revision))
        for name in WEIGHT_FILES:
            try:
                hf_hub_download(repo, name, revision=revision)
                return config.parent
            except LocalEntryNotFoundError:
                raise
            except EntryNotFoundError:
                continue
    except LocalEntryNotFoundError as err:  # no connection, nothing cached
        raise DownloadError(f"cannot download {spec}: the hub is unreachable and nothing is cached "
                            f"({str(err).splitlines()[0][:160]})") from None
    except (HfHubHTTPError, EntryNotFoundError, OSError, ValueError) as err:
        raise DownloadError(f"cannot download {spec}: {type(err).__name__}: "
                            f"{(str(err).splitlines() or [''])[0][:200]}") from None
    raise DownloadError(f"{spec} holds neither {' nor '.join(WEIGHT_FILES)}: not a VideoMAE weights repo")


def fetch_entry(entry) -> Path:
    """The local folder of a registry entry with an hf source, its weight file checked against
    the entry's sha256 when the registry knows one (a moved branch shows here, not as other weights)."""
    folder = fetch(str(entry.source))
    if entry.sha256:
        from .export import sha256_file
        from .families.hf import locate

        weights = locate(folder)[0]
        actual = sha256_file(weights)
        if actual != entry.sha256:
            raise DownloadError(f"{entry.source}: {weights.name} has sha256 {actual} but the registry expects "
                                f"{entry.sha256} for {entry.name}; the revision moved: pin source.revision to "
                                "the commit that was verified, or clear sha256 to take the new files")
    return folder
