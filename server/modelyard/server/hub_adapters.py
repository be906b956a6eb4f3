"""Hub ids as adapter paths, as vLLM takes them: a ``lora_path`` that is no existing path but a hub id
(``org/name``) is downloaded into the server's hub cache (``$HF_HOME/hub``), at ``revision`` when given.

The download lands where the server chose, never where the caller pointed, so the result needs no
``--allowed-lora-paths`` check. ``HF_HUB_OFFLINE=1`` keeps it to what the cache already holds; ``HF_TOKEN``
reaches private repos. huggingface_hub reads both itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from modelyard.server.errors import LoraAdapterError

_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")
# An adapter is its config and its weights; nothing else of the repo is fetched.
_ADAPTER_FILES = ["adapter_config.json", "*.safetensors"]


def is_hub_id(path: str) -> bool:
    """``org/name`` (or ``name``) that names no file or directory here."""
    return bool(_HUB_ID.match(path)) and ".." not in path and not Path(path).exists()


def fetch(repo_id: str, revision: str | None) -> str:
    """The local snapshot directory of ``repo_id``, downloaded if the cache lacks it (blocking)."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"{repo_id}@{revision}" if revision else repo_id
    try:
        return str(snapshot_download(repo_id, revision=revision, allow_patterns=_ADAPTER_FILES))
    except (RepositoryNotFoundError, GatedRepoError) as exc:
        message = f"The hub adapter {where} does not exist or is not readable with this server's token."
        raise LoraAdapterError(message, param="lora_path") from exc
    except RevisionNotFoundError as exc:
        raise LoraAdapterError(f"The hub adapter {where}: no such revision.", param="lora_path") from exc
    except LocalEntryNotFoundError as exc:
        # Offline (HF_HUB_OFFLINE) or the hub unreachable, and not in the cache.
        raise LoraAdapterError(
            f"The hub adapter {where} is not in the hub cache and the hub cannot be reached "
            f"(HF_HUB_OFFLINE or no network): {exc}",
            param="lora_path",
        ) from exc
    except OSError as exc:
        raise LoraAdapterError(
            f"The hub adapter {where} cannot be downloaded: {exc}", param="lora_path"
        ) from exc
