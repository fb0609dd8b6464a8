"""Find checkpoint files: local paths and folders, ``file://`` and ``hf://owner/repo[/path]`` references, and
Hugging Face repos (through ``huggingface_hub``, so its cache and ``HF_HUB_OFFLINE`` apply)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError

MIMI_NAME = "tokenizer-e351c8d8-checkpoint125.safetensors"
DEFAULT_REPO = "kyutai/moshiko-pytorch-bf16"


class HubUnreachable(CheckpointError):
    """A file is not in the local Hugging Face cache and the hub could not be reached."""


def hf_download(repo: str, filename: str, try_network: bool = True) -> Path:
    """Path of ``filename`` from the Hugging Face repo ``owner/name``.

    The local cache is used first, without contacting the hub (released checkpoints do not change, and an
    offline machine should not wait on retries); otherwise the file is downloaded into the cache.
    """
    try:
        from huggingface_hub import hf_hub_download
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as e:  # pragma: no cover - huggingface_hub is a core dependency
        raise CheckpointError(f"huggingface_hub is needed to fetch {repo}/{filename}: pip install huggingface_hub") from e
    # LocalEntryNotFoundError derives from EntryNotFoundError in recent huggingface_hub: catch it first.
    try:
        return Path(hf_hub_download(repo, filename, local_files_only=True))
    except (LocalEntryNotFoundError, EntryNotFoundError):
        pass
    unreachable = HubUnreachable(
        f"{repo}/{filename} is not in the local Hugging Face cache and could not be downloaded "
        "(offline?). Download it on a connected machine, or pass a local file path instead."
    )
    if not try_network:
        raise unreachable
    try:
        return Path(hf_hub_download(repo, filename))
    except LocalEntryNotFoundError:
        raise unreachable from None
    except EntryNotFoundError:
        raise CheckpointError(f"the Hugging Face repo {repo} has no file {filename!r}") from None
    except RepositoryNotFoundError:
        raise CheckpointError(f"Hugging Face repo {repo!r} not found (check the name, or log in for a private repo)") from None
    except OSError as e:
        raise CheckpointError(f"could not fetch {repo}/{filename}: {e}") from None


def repo_config(repo: str) -> tuple[dict | None, bool]:
    """(the repo's parsed ``config.json``, or None when it has none; whether the hub is worth trying for further
    files). Repos without a ``config.json`` (moshiko, J-Moshi) use the defaults."""
    try:
        config_path = hf_download(repo, "config.json")
    except HubUnreachable:
        return None, False
    except CheckpointError:
        return None, True
    return read_config_json(config_path), True


def read_config_json(path: Path) -> dict:
    """A moshi-style ``config.json`` as a dict; CheckpointError naming the file when it is unreadable or not a JSON
    object."""
    try:
        config = json.loads(Path(path).read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"could not read {path}: {e}") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path}: not a moshi config.json (expected a JSON object)")
    return config


def named_model(spec: str | Path, option: str = "--model") -> tuple[Path | None, str | None, dict]:
    """A whole model named in one word: a folder holding its files (``config.json`` naming them, as released;
    ``file://`` accepted) or a Hugging Face repo (``OWNER/NAME`` or ``hf://OWNER/NAME``). Returns (the folder or
    None, the repo or None, the folder's ``config.json`` or {}: a repo's is read with :func:`repo_config`).
    :func:`model_file` names the folder's LM, Mimi and tokenizer files."""
    folder = Path(str(spec).removeprefix("file://")).expanduser()
    if folder.is_dir():
        return folder, None, read_config_json(folder / "config.json") if (folder / "config.json").is_file() else {}
    repo = str(spec).removeprefix("hf://").strip("/")
    if len(repo.split("/")) != 2 or not all(repo.split("/")):
        raise CheckpointError(f"{option} {spec}: no such folder, and not a Hugging Face repo (OWNER/NAME)")
    return None, repo, {}


def model_file(folder: Path, config: dict, key: str, default: str) -> Path:
    """A file of a model folder: the name its ``config.json`` gives under ``key`` (``mimi_name``,
    ``tokenizer_name``), else ``default``."""
    return folder / (config.get(key) or default)


def repo_file_name(repo: str, key: str, default: str) -> tuple[str, bool]:
    """(the file name a repo's ``config.json`` gives under ``key``, e.g. ``mimi_name``, else ``default``;
    whether the hub is worth trying for further files)."""
    config, reachable = repo_config(repo)
    return (config or {}).get(key) or default, reachable


def resolve_file(spec: str | Path, default_name: str, config_key: str | None = None) -> Path:
    """Turn a user reference into a local file.

    - a local file path, or ``file://path``;
    - a local folder: ``folder/default_name``;
    - ``hf://owner/repo/path/in/repo``: that file; ``hf://owner/repo``: the repo's own file (its ``config.json``
      under ``config_key``, else ``default_name``).
    """
    text = str(spec)
    if text.startswith("hf://"):
        parts = text[len("hf://") :].strip("/").split("/")
        if len(parts) < 2 or not all(parts[:2]):
            raise CheckpointError(f"{text!r}: expected hf://OWNER/REPO or hf://OWNER/REPO/FILE")
        repo = "/".join(parts[:2])
        if len(parts) > 2:
            return hf_download(repo, "/".join(parts[2:]))
        name, reachable = repo_file_name(repo, config_key, default_name) if config_key else (default_name, True)
        return hf_download(repo, name, try_network=reachable)
    if text.startswith("file://"):
        text = text[len("file://") :]
    path = Path(text).expanduser()
    if path.is_dir():
        candidate = path / default_name
        if candidate.is_file():
            return candidate
        raise CheckpointError(f"folder {path} has no {default_name}; pass the file itself")
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    return path
