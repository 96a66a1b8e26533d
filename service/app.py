"""The HTTP edge: `create_app` builds the FastAPI app; its lifespan opens and closes everything.

Embedded mode (a SQLite URL): the database is migrated on start. Postgres is migrated
by `opsd db upgrade`, never by the app; /readyz reports a database behind the code.
With `background=True` the orchestrator (and, when settings say so, an in-process
trainer worker) run for the app's lifetime, in a child process by default
(service.pipeline.process); tests that only exercise HTTP pass `background=False` so
that nothing trains.

    uvicorn --factory service.app:create_app     # OPSD_* settings, as `opsd serve`

Every way of starting the app refuses a public address without a token (`check_bind`),
and every request passes `service.api.edge.EdgeGuard` first. /docs and /redoc load
their scripts from this server (fastapi-offline ships them), so they work offline; so
does the dashboard at `/` (service.dashboard).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

from alembic.script import ScriptDirectory
from anyio import to_thread
from fastapi import FastAPI
from fastapi_offline import FastAPIOffline
from sqlalchemy.engine import make_url

from service import dashboard
from service.api.auth import check_bind, configured_token, document_bearer_auth
from service.api.deps import (
    BusDep,
    RepoDep,
    Services,
    ServicesDep,
    SettingsDep,
    get_bus,
    get_repo,
    get_services,
    get_settings,
)
from service.api.edge import EdgeGuard
from service.api.errors import install_error_handlers
from service.api.metrics import AppMetrics, MetricsMiddleware
from service.bus import make_bus
from service.environments.endpoints import router as environments_router
from service.health import router as health_router
from service.pipeline.process import PipelineProcess, lower_priority, start_pipeline
from service.runs.cache import CachedReads, ReadCache, Versions
from service.runs.endpoints import router as runs_router
from service.settings import Settings
from service.storage import Repository, make_engine, make_sessionmaker
from service.storage.db import normalize_url
from service.storage.migrate import alembic_config, upgrade

log = logging.getLogger(__name__)

DESCRIPTION = """On-policy self-distillation of language models from environment feedback.

Register environments, start runs, and follow them: metrics, trajectories with
per-token teacher-student log-ratios, checkpoints, and live events (SSE).
Errors are `{"error": {"code", "message", "details"}}`. When the server has an API
token, every call but /healthz, /readyz and the documentation needs
`Authorization: Bearer <token>` (a read token allows GET only).
"""
DOCS_ASSETS = "/static-offline-docs"  # where fastapi-offline mounts the docs' scripts
OPEN_PATHS = frozenset(
    {"/healthz", "/readyz", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"}
)


def is_sqlite(url: str) -> bool:
    return make_url(normalize_url(url)).get_backend_name() == "sqlite"


def schema_head(url: str) -> str | None:
    """The Alembic head revision of the migrations shipped with this code."""
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


@asynccontextmanager
async def open_services(settings: Settings, *, background: bool) -> AsyncIterator[Services]:
    """Open the database, the bus and (with `background`) the orchestrator and worker;
    close them in reverse order on exit, also when opening fails halfway."""
    url = settings.database_url
    async with AsyncExitStack() as stack:
        if is_sqlite(url):
            await to_thread.run_sync(upgrade, url)
        engine = make_engine(url)
        stack.callback(engine.dispose)
        bus = make_bus(settings.redis_url, settings.bus_prefix)
        stack.push_async_callback(bus.aclose)
        repo = Repository(make_sessionmaker(engine))
        services = Services(
            settings=settings,
            engine=engine,
            repo=repo,
            bus=bus,
            versions=Versions(repo.read_version, settings.read_freshness_s),
            schema_head=schema_head(url),
            reads=ReadCache(settings.read_cache_entries),
        )
        if background and settings.pipeline_process:  # in a child process (pipeline_process)
            services.pipeline = await stack.enter_async_context(PipelineProcess(settings, bus))
            yielded = lower_priority(settings)  # requests yield to the pipeline's work
            log.info("request handling runs at %s", yielded)
        elif background:
            services.orchestrator, services.worker = await start_pipeline(
                stack, services.repo, bus, settings
            )
        log.info("opsd API ready (database %s, background %s)", engine.url.drivername, background)
        yield services


def create_app(settings: Settings | None = None, *, background: bool = True) -> FastAPI:
    """The opsd API. `settings` default to the `OPSD_*` environment variables.
    InsecureBind if they name a public address and no token."""
    settings = settings or Settings()
    check_bind(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with open_services(settings, background=background) as services:
            app.state.services = services
            yield

    app = FastAPIOffline(
        title="opsd",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        static_url=DOCS_ASSETS,
        swagger_ui_parameters={"validatorUrl": None},  # no call to an outside validator
    )
    app.state.metrics = AppMetrics()
    app.add_middleware(CachedReads)  # innermost: after the edge's checks, before routing
    app.add_middleware(
        EdgeGuard,
        settings=settings,
        open_paths=OPEN_PATHS | dashboard.OPEN_PATHS,
        open_prefixes=(DOCS_ASSETS + "/", *dashboard.OPEN_PREFIXES),
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: counts refusals
    install_error_handlers(app)
    routers = [health_router, environments_router, runs_router]
    for router in routers:
        app.include_router(router)
    # The flat route table, for the `Allow` header of a 405 (see service.api.errors).
    app.state.api_routes = [route for router in routers for route in router.routes]
    app.include_router(dashboard.router)  # the pages at `/`, after the API's routes
    dashboard.install_assets(app)
    if configured_token(settings) is not None:
        document_bearer_auth(app, OPEN_PATHS)
    return app


__all__ = [
    "BusDep",
    "RepoDep",
    "Services",
    "ServicesDep",
    "SettingsDep",
    "create_app",
    "get_bus",
    "get_repo",
    "get_services",
    "get_settings",
]
