"""/v1/environments: what can be trained on, registering configured instances, trying one."""

from __future__ import annotations

from typing import Annotated

from anyio import to_thread
from fastapi import APIRouter, Path

from service.api.deps import RepoDep, ServicesDep, SettingsDep
from service.api.errors import error_responses
from service.environments import service
from service.environments.schemas import (
    Environment,
    EnvironmentCreate,
    EnvironmentList,
    ProbeRequest,
    ProbeResult,
    TryItem,
    TryRequest,
    TryResult,
)

router = APIRouter(prefix="/v1/environments", tags=["environments"])

EnvName = Annotated[
    str,
    Path(
        max_length=128,
        description="a registered instance or an environment kind",
        examples=["arithmetic"],
    ),
]


@router.get("", response_model=EnvironmentList)
def list_environments(repo: RepoDep) -> EnvironmentList:
    """Every available kind (with its default configuration) and every registered instance."""
    return EnvironmentList(items=service.list_environments(repo))


@router.post(
    "",
    status_code=201,
    response_model=Environment,
    responses=error_responses(400, 401, 409, 422),
)
def register_environment(
    body: EnvironmentCreate, repo: RepoDep, settings: SettingsDep
) -> Environment:
    """Register a configured instance of a kind under a new name (the config is validated).

    409 if the name is taken, or is the name of a different kind. 422 if the config does
    not fit the kind, asks for more than the server's sandbox allows (another backend, a
    higher limit) or names a data file outside the server's environment data directory.
    """
    return service.register_environment(repo, body, settings)


@router.get("/{name}", response_model=Environment, responses=error_responses(404, 422))
def get_environment(name: EnvName, repo: RepoDep) -> Environment:
    """A registered instance, or else an available kind."""
    return service.get_environment(repo, name)


@router.post(
    "/{name}/try",
    response_model=TryResult,
    responses=error_responses(400, 401, 404, 422),
)
async def try_environment(name: EnvName, body: TryRequest, services: ServicesDep) -> TryResult:
    """Sample a few responses with a policy and show how the environment scores them.

    Nothing is stored and nothing is trained. The first call for a model loads it.
    """
    tried = await to_thread.run_sync(
        service.try_named,
        services.repo,
        services.policies,
        name,
        body,
        services.settings,
    )
    return TryResult(items=[TryItem.model_validate(t) for t in tried])


@router.post(
    "/{name}/probe",
    response_model=ProbeResult,
    responses=error_responses(400, 401, 404, 422),
)
async def probe_environment(
    name: EnvName, body: ProbeRequest, services: ServicesDep
) -> ProbeResult:
    """Measure whether self-distillation has anything to teach here, before training: a
    few groups sampled with the model and scored, their teacher contexts built, and the
    teacher-student gap, the share of samples with a teacher signal and the base reward.

    Nothing is stored and nothing is trained. Every call loads the model.
    """
    report = await to_thread.run_sync(
        service.probe_named, services.repo, name, body, services.settings
    )
    return ProbeResult.model_validate(report)
