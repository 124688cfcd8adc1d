"""Getting model files: the Hugging Face hub's local cache first, a download only when the host
answers, and a one-line error saying how to get the files otherwise (never a long hang offline)."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from ..errors import ModelNotAvailableError

HUB_FILES = ["config.json", "*.safetensors", "*.json", "*.txt", "*.model"]


def hub_snapshot(repo_id: str, patterns: list[str] | None = None, howto: str | None = None) -> Path:
    """The local directory of a hub model: from the cache, else downloaded; fails fast offline."""
    from huggingface_hub import snapshot_download

    patterns = HUB_FILES if patterns is None else patterns
    howto = howto or (
        f"download it where there is internet (`hf download {repo_id} --local-dir DIR`) "
        f"and pass --model DIR, or fill the Hugging Face cache"
    )
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, local_files_only=True))
    except Exception:
        pass
    offline = hub_offline()
    if offline or not hub_reachable():
        why = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        raise ModelNotAvailableError(f"model {repo_id!r} is not in the local cache and {why}: {howto}")
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns))
    except Exception as exc:
        raise ModelNotAvailableError(
            f"could not download {repo_id!r} ({str(exc).splitlines()[0]}): check the id, or {howto}"
        ) from None


def hub_offline() -> bool:
    """Whether the user switched the hub off (``HF_HUB_OFFLINE``)."""
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def hub_reachable(timeout: float = 3.0, url: str | None = None) -> bool:
    """Whether the Hugging Face hub (or ``url``'s host) answers a TCP connection within ``timeout``."""
    endpoint = urlparse(url or os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    port = endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((endpoint.hostname, port), timeout=timeout):
            return True
    except OSError:
        return False
