"""What /v1/environments does, without HTTP: list, describe, register, try and probe
environments.

An environment name is either a bare kind (every available implementation, with its
default configuration) or a registered instance: a kind plus a stored configuration.
`try_environment` is the one sample-and-score routine behind `POST
/v1/environments/{name}/try` and `opsd envs try`; `trainer.probe.probe` the one behind
`POST /v1/environments/{name}/probe` and `opsd probe`. Model loading imports torch, so it is
imported lazily: the HTTP edge starts fast.
"""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from envs.base import Environment as EnvironmentImpl
from envs.base import Operator, Split
from envs.registry import (
    InvalidEnvConfig,
    UnknownEnvironment,
    available,
    env_class,
    make_env,
    validate_config,
)
from service.environments.errors import ModelUnavailable
from service.environments.schemas import (
    Environment,
    EnvironmentCreate,
    ProbeRequest,
    TryRequest,
)
from service.settings import Settings
from service.storage import AlreadyExists, NotFound, Repository
from service.storage import models as orm
from trainer.model_names import UNRESTRICTED, ModelAccess, ModelNotFound, resolve_model

if TYPE_CHECKING:
    import torch

    from trainer.probe import ProbeReport

log = logging.getLogger(__name__)


def describe_kind(kind: str) -> Environment:
    """A bare kind: its name is the kind, its config the defaults ({})."""
    cls = env_class(kind)
    return Environment(
        name=kind,
        kind=kind,
        description=first_line(cls.__doc__),
        config={},
        config_schema=cls.Config.model_json_schema(),
        registered=False,
    )


def describe_row(row: orm.Environment) -> Environment:
    described = describe_kind(row.kind)
    return described.model_copy(
        update={
            "name": row.name,
            "config": row.config,
            "registered": True,
            "created_at": row.created_at,
        }
    )


def first_line(doc: str | None) -> str:
    lines = [line.strip() for line in (doc or "").strip().splitlines()]
    return lines[0] if lines else ""


def list_environments(repo: Repository) -> list[Environment]:
    """Every available kind, then every registered instance (an instance named like a kind
    replaces it). A kind that fails to import is left out and logged, not a failed listing."""
    found: dict[str, Environment] = {}
    for kind in available():
        try:
            found[kind] = describe_kind(kind)
        except Exception:
            log.warning("environment %r cannot be loaded", kind, exc_info=True)
    for row in repo.list_environments():
        try:
            found[row.name] = describe_row(row)
        except Exception:
            log.warning("registered environment %r cannot be loaded", row.name, exc_info=True)
    return list(found.values())


def get_environment(repo: Repository, name: str) -> Environment:
    """A registered instance, else an available kind; NotFound otherwise."""
    try:
        return describe_row(repo.get_environment(name))
    except NotFound:
        pass
    if name in available():
        return describe_kind(name)
    raise NotFound(f"environment {name!r} not found")


def operator(settings: Settings) -> Operator:
    """What the service's operator allows the environments its clients configure."""
    return Operator(sandbox=settings.sandbox, data_dir=settings.env_data_dir)


def validated_config(
    kind: str, config: dict[str, Any], allowed: Operator | None = None
) -> dict[str, Any]:
    """The kind's configuration with every default filled in; InvalidEnvConfig if it does
    not fit (or asks for more than `allowed`), UnknownEnvironment for an unknown kind."""
    validated = validate_config(kind, config, operator=allowed).model_dump(mode="json")
    if not all_finite(validated):
        raise InvalidEnvConfig(f"config for environment {kind!r} holds a NaN or infinite number")
    return validated


def register_environment(
    repo: Repository, body: EnvironmentCreate, settings: Settings
) -> Environment:
    """Store a configured instance, checked against what the operator allows (sandbox,
    data files). The full configuration is stored, defaults included, so a run's
    environment means the same thing after defaults change."""
    if body.name != body.kind and body.name in available():
        raise AlreadyExists(f"{body.name!r} is the name of an environment kind")
    config = validated_config(body.kind, body.config, operator(settings))
    return describe_row(repo.create_environment(body.name, body.kind, config))


def resolve_for_run(repo: Repository, name: str) -> tuple[orm.Environment | None, str, dict]:
    """(registered row or None, kind, config) of the environment a run names: a registered
    instance, or a bare kind with its default configuration. UnknownEnvironment otherwise."""
    try:
        row = repo.get_environment(name)
        return row, row.kind, row.config
    except NotFound:
        pass
    if name not in available():
        raise UnknownEnvironment(f"unknown environment {name!r}; known: {known_names(repo)}")
    return None, name, validated_config(name, {})


def register_kind(repo: Repository, kind: str, config: dict[str, Any]) -> orm.Environment:
    """Register a bare kind under its own name, so that a run on it has an environment row."""
    try:
        return repo.create_environment(kind, kind, config)
    except AlreadyExists:  # registered by a concurrent request
        return repo.get_environment(kind)


def known_names(repo: Repository) -> str:
    return ", ".join(sorted(set(available()) | {r.name for r in repo.list_environments()}))


def check_model(name: str, access: ModelAccess = UNRESTRICTED) -> str:
    """The model's path or hub name; ModelUnavailable when `access` does not allow it or
    there is no such model."""
    try:
        return resolve_model(name, access)
    except ModelNotFound as exc:
        raise ModelUnavailable(str(exc)) from exc
    except (OSError, ValueError) as exc:  # a name no file system accepts (a NUL byte, ...)
        raise ModelUnavailable(f"invalid model name {name!r}: {exc}") from exc


class PolicyCache:
    """Policies loaded for `try`, by model name: the last `size` used stay in memory.

    Loading happens in worker threads; one lock per name makes concurrent requests for
    the same model load it once.
    """

    def __init__(self, size: int = 2) -> None:
        self.size = size
        self._loaded: OrderedDict[str, tuple[Any, Any]] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._mutex = threading.Lock()

    def get(
        self, name: str, device: str | None = None, access: ModelAccess = UNRESTRICTED
    ) -> tuple[Any, Any]:
        """(policy, tokenizer) for `name` on `device`, loading it on first use; the name is
        checked against `access` on every call, loaded or not."""
        check_model(name, access)
        with self._mutex:
            lock = self._locks.setdefault(name, threading.Lock())
        with lock:
            with self._mutex:
                if name in self._loaded:
                    self._loaded.move_to_end(name)
                    return self._loaded[name]
            loaded = load(name, device, access)
            with self._mutex:
                self._loaded[name] = loaded
                while len(self._loaded) > self.size:
                    self._loaded.popitem(last=False)
            return loaded


def load(name: str, device: str | None, access: ModelAccess = UNRESTRICTED) -> tuple[Any, Any]:
    from trainer.model import load_policy, pick_device

    try:
        return load_policy(name, device=pick_device(device), access=access)
    except ModelNotFound as exc:
        raise ModelUnavailable(str(exc)) from exc


@dataclass(frozen=True)
class TriedResponse:
    """One response sampled by `try_environment` and how the environment judged it."""

    task_id: str
    prompt: str
    response: str
    reward: float
    verdict: str
    feedback: str | None


def try_environment(
    env: EnvironmentImpl,
    policy: torch.nn.Module,
    tokenizer: Any,
    *,
    tasks: int = 2,
    samples_per_prompt: int = 2,
    max_new_tokens: int = 64,
    split: Split = "train",
) -> list[TriedResponse]:
    """Sample `samples_per_prompt` responses to the first `tasks` tasks of `split` and score them.

    Synchronous (sampling is torch, scoring runs its own event loop): call it from a
    worker thread in async code. The environment is closed afterwards.
    """
    from trainer.config import ContextConfig, SamplingConfig
    from trainer.context import TeacherContextBuilder
    from trainer.rollout import run_async, score_all
    from trainer.sampler import TransformersSampler

    async def score_then_close(chosen, texts):
        try:
            return await score_all(env, chosen, texts)
        finally:
            await close_env(env)

    try:
        chosen = list(env.dataset(split)[:tasks])
        if not chosen:
            run_async(close_env(env))
            return []
        builder = TeacherContextBuilder(tokenizer, ContextConfig())
        prompts = [builder.student_prompt_ids(t.prompt) for t in chosen]
        groups = TransformersSampler(policy, tokenizer).sample(
            prompts, samples_per_prompt, SamplingConfig(max_new_tokens=max_new_tokens)
        )
    except BaseException:
        run_async(close_env(env))
        raise
    flat_tasks = [t for t in chosen for _ in range(samples_per_prompt)]
    texts = [tokenizer.decode(c.token_ids, skip_special_tokens=True) for g in groups for c in g]
    scores = run_async(score_then_close(flat_tasks, texts))
    return [
        TriedResponse(t.id, t.prompt, text, s.reward, str(s.verdict), s.feedback)
        for t, text, s in zip(flat_tasks, texts, scores, strict=True)
    ]


async def close_env(env: EnvironmentImpl) -> None:
    """Release what the environment holds (a sandbox)."""
    await env.aclose()


def try_named(
    repo: Repository,
    policies: PolicyCache,
    name: str,
    request: TryRequest,
    settings: Settings,
) -> list[TriedResponse]:
    """`try_environment` on a registered instance or kind, with a cached policy (blocking):
    the model as clients may name them, the service's sandbox and environment data."""
    described = get_environment(repo, name)
    policy, tokenizer = policies.get(request.model, settings.device, settings.model_access())
    env = make_env(
        described.kind,
        described.config,
        sandbox=settings.sandbox,
        data_dir=settings.env_data_dir,
    )
    return try_environment(
        env,
        policy,
        tokenizer,
        tasks=request.tasks,
        samples_per_prompt=request.samples_per_prompt,
        max_new_tokens=request.max_new_tokens,
        split=request.split,
    )


def probe_named(
    repo: Repository, name: str, request: ProbeRequest, settings: Settings
) -> ProbeReport:
    """`trainer.probe.probe` on a registered instance or kind (blocking): the sdpo preset
    with the request's model, group shape, token budget and seed; the model as clients may
    name them, the service's sandbox and environment data."""
    from trainer.presets import preset
    from trainer.probe import probe

    described = get_environment(repo, name)
    check_model(request.model, settings.model_access())
    cfg = preset(
        "sdpo",
        {
            "env": described.kind,
            "env_config": described.config,
            "model": request.model,
            "seed": request.seed,
            "samples_per_prompt": request.samples_per_prompt,
            "sampling": {"max_new_tokens": request.max_new_tokens},
        },
    )
    return probe(
        cfg,
        request.groups,
        device=settings.device,
        sandbox=settings.sandbox,
        data_dir=settings.env_data_dir,
        model_access=settings.model_access(),
    )


def all_finite(value: Any) -> bool:
    """No NaN or infinity anywhere in a JSON-like value (JSON, and Postgres, have none)."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, list | tuple):
        return all(all_finite(v) for v in value)
    return True
