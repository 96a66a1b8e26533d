"""Which model a name means, and whether it may be loaded: one resolver, one `ModelAccess`.

`resolve_model(name, access)` turns a model name into what transformers loads (a local
directory or a hub name). The default access is the operator's own (`opsd train`): an
alias, any local directory, any hub name. The service builds a narrower one from its
settings for the names HTTP clients send (`Settings.model_access`): the aliases, the
subdirectories of a models directory, an allow-list, and hub names only when enabled.

A hub name is checked before anything downloads: offline (HF_HUB_OFFLINE) or with no
hub reachable, it resolves to its cached copy or fails at once with ModelNotFound,
instead of retrying a network that is not there. No torch here: the HTTP edge uses it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field

log = logging.getLogger(__name__)

# The shipped tiny models: the data folder of the sibling `tiny` package (its builders are
# not imported: the trainer does not depend on them).
TINY_MODELS_DIR = Path(__file__).parents[1] / "tiny" / "models"
TINY_MODEL_DIR = TINY_MODELS_DIR / "tiny"
TINY_TOOLS_MODEL_DIR = TINY_MODELS_DIR / "tiny-tools"
ALIASES = {"tiny": TINY_MODEL_DIR, "tiny-tools": TINY_TOOLS_MODEL_DIR}
HUB_CHECK_TIMEOUT_S = 3.0
HUB_CHECK_TTL_S = 60.0  # how long one reachability answer is trusted


class ModelNotFound(FileNotFoundError):
    """The model name is neither an alias, a local directory, nor loadable from a hub, or
    the access rules do not allow it."""


class ModelAccess(BaseModel):
    """Which model names may be loaded. `ModelAccess()` allows everything (the operator);
    `ModelAccess.restricted(...)` is what a public service allows its clients."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    local_paths: bool = Field(True, description="any local model directory may be named")
    hub: bool = Field(True, description="any hub name may be named (the server downloads it)")
    models_dir: Path | None = Field(
        None, description="a relative name is looked up among this directory's subdirectories"
    )
    allowed: tuple[str, ...] = Field(
        (), description="names allowed besides the aliases: directories or hub names"
    )

    @classmethod
    def restricted(
        cls, *, models_dir: Path | None = None, allowed: tuple[str, ...] = (), hub: bool = False
    ) -> ModelAccess:
        """No local path unless it is in `models_dir` or `allowed`; hub names only with `hub`."""
        return cls(local_paths=False, hub=hub, models_dir=models_dir, allowed=allowed)


UNRESTRICTED = ModelAccess()


def resolve_model(name: str, access: ModelAccess = UNRESTRICTED) -> str:
    """The directory or hub name transformers should load for `name`; ModelNotFound if
    there is none or `access` does not allow it. The checks, in order: an alias, an
    allowed name, a subdirectory of the models directory, a local directory, a hub name."""
    if name in ALIASES:
        return alias_dir(name)
    if name in access.allowed:
        return resolve_model(name, UNRESTRICTED)
    if access.models_dir is not None and (found := in_models_dir(access.models_dir, name)):
        return found
    if access.local_paths and looks_local(name):
        path = Path(name).expanduser()
        if not (path / "config.json").exists():
            raise ModelNotFound(
                f"no Hugging Face model directory at {name!r} (config.json missing)"
            )
        return str(path)
    if not access.hub:
        raise ModelNotFound(refusal(name, access))
    return hub_model(name)


def alias_dir(name: str) -> str:
    path = ALIASES[name]
    if not (path / "config.json").exists():
        build = "opsd tiny-model build" + (" --task tools" if name == "tiny-tools" else "")
        raise ModelNotFound(f"{name!r} is not built yet: run `{build}`")
    return str(path)


def looks_local(name: str) -> bool:
    return name.startswith(("/", "./", "../", "~")) or Path(name).expanduser().exists()


def in_models_dir(models_dir: Path, name: str) -> str | None:
    """The model directory `models_dir/name`, when `name` is a relative path that stays
    inside `models_dir` (no `..`, no symlink out of it) and holds a config.json."""
    relative = Path(name)
    if relative.is_absolute() or ".." in relative.parts or "\0" in name:
        return None
    root = models_dir.resolve()
    candidate = (root / relative).resolve()
    if not candidate.is_relative_to(root) or not (candidate / "config.json").is_file():
        return None
    return str(candidate)


def refusal(name: str, access: ModelAccess) -> str:
    """Why a client may not load `name`: the same words whether or not such a path exists."""
    choices = [*ALIASES, *access.allowed]
    where = ", or the name of a model in the server's models directory" if access.models_dir else ""
    return (
        f"model {name!r} is not available on this server; use one of: {', '.join(choices)}{where}"
    )


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().upper()
    return constants.HF_HUB_OFFLINE or flag in {"1", "ON", "YES", "TRUE"}


_reachable: dict[str, tuple[float, bool]] = {}  # endpoint -> (when checked, reachable)
_reachable_lock = threading.Lock()


def hub_reachable() -> bool:
    """Does the hub answer at all (any HTTP status)? One quick request, remembered a while."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    with _reachable_lock:
        checked = _reachable.get(endpoint)
        if checked is not None and time.monotonic() - checked[0] < HUB_CHECK_TTL_S:
            return checked[1]
        try:
            httpx.head(endpoint, timeout=HUB_CHECK_TIMEOUT_S)
            reachable = True
        except httpx.HTTPError as exc:
            log.info("model hub %s is not reachable: %s", endpoint, exc)
            reachable = False
        _reachable[endpoint] = (time.monotonic(), reachable)
        return reachable


def hub_model(name: str) -> str:
    """`name` itself when the hub can be asked for it; else the directory of its cached
    copy; else ModelNotFound at once (no download retries against a missing network)."""
    from huggingface_hub import try_to_load_from_cache

    offline = hub_offline()
    if not offline and hub_reachable():
        return name
    try:
        cached = try_to_load_from_cache(name, "config.json")
    except ValueError as exc:  # not a valid repository id
        raise ModelNotFound(
            f"model {name!r} is neither an alias, a local model directory nor a hub name"
        ) from exc
    if isinstance(cached, str):
        return str(Path(cached).parent)
    why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the model hub is not reachable"
    raise ModelNotFound(
        f"model {name!r} is neither an alias nor a local model directory, and {why} "
        "with no cached copy of it"
    )
