"""Loading `transformers` weights from a hub id or a local directory, failing fast without the hub.

Shared by the model fields (hubert, whisper): a local directory loads without the network; a hub
id is tried online only when one quick TCP probe reaches the hub (the hub client alone retries an
unreachable host for about 20 s per file), else from the local cache only.
"""
from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, TypeVar

from features.errors import ModelUnavailable

HUB_PROBE_TIMEOUT_S = 3.0  # one connection attempt to the hub; no retries


def offline_requested() -> bool:
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


@lru_cache(maxsize=4)
def hub_reachable(endpoint: str | None = None, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """One TCP connection to the hub (name lookup included), bounded by `timeout` seconds.

    The hub client retries an unreachable host for about 20 s per file; this probe costs at most
    `timeout` once per process, so a machine without the hub fails at once.
    """
    import socket
    import threading
    from urllib.parse import urlparse

    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    url = urlparse(endpoint)
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    result = [False]

    def connect() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout):
                result[0] = True
        except OSError:
            pass

    thread = threading.Thread(target=connect, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout)
    return result[0]


def looks_local(model: str) -> bool:
    """Whether `model` names a path (absolute, ./, ~) rather than a hub id."""
    return Path(model).expanduser().is_absolute() or model.startswith((".", "~"))


def pretrained_kwargs(model: str, fail: Callable[[str], Exception]) -> dict:
    """from_pretrained options: local files only for a directory, offline mode or no hub;
    `fail(why)` is raised for a path that is not a model directory."""
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise fail(f"the directory {path} holds no config.json")
        return {"local_files_only": True}
    if model.startswith((".", "/", "~")) or path.exists():
        raise fail(f"{path} is not a directory")
    if offline_requested() or not hub_reachable():
        return {"local_files_only": True}  # a copy in the local hub cache still loads
    return {}


def failure_reason(model: str, kwargs: dict, exc: Exception) -> str:
    """Why from_pretrained failed, in words: no hub and no cached copy, or the loader's error."""
    if kwargs and not Path(model).expanduser().is_dir():
        return ("the hub is not reachable from here ("
                f"{'offline mode is set' if offline_requested() else 'one connection attempt failed'}) "
                "and the local cache has no copy")
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"


E = TypeVar("E", bound=ModelUnavailable)
T = TypeVar("T")


def load_error(error: type[E], kind: str, model: str, why: str, flag: str, default: str) -> E:
    """The failure to raise: which weights, why, and how to get them (`flag` DIR)."""
    hub_id = model if not looks_local(model) else default
    return error(
        f"cannot load {kind} weights {model!r}: {why}. Download them where the hub is reachable "
        f"(huggingface-cli download {hub_id} --local-dir DIR) and pass {flag} DIR to "
        "pipelines/extract.py, a local directory holding config.json and the weights.")


def load_pretrained(load: Callable[[dict], T], model: str, fail: Callable[[str], ModelUnavailable],
                    failed: dict[str, ModelUnavailable]) -> tuple[T, dict]:
    """(load(from_pretrained kwargs), the kwargs): a failure is raised as `fail(why)` at once and
    kept in `failed`, so every later call in this process raises it again without retrying."""
    if model in failed:
        raise failed[model]
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    kwargs: dict = {}
    try:
        kwargs = pretrained_kwargs(model, fail)
        return load(kwargs), kwargs
    except ModelUnavailable as exc:
        failed[model] = exc
        raise
    except Exception as exc:
        failed[model] = fail(failure_reason(model, kwargs, exc))
        raise failed[model] from exc
