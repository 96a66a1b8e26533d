"""`opsd serve`, `opsd worker`, `opsd db upgrade`: the service's own processes.

All three read `Settings` from the `OPSD_*` environment variables (the flags only
override them), so the same commands run on a laptop and in `compose.yaml`.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
from collections.abc import Coroutine
from datetime import timedelta
from functools import partial
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from service.cli import launch
from service.cli.common import console, fail, quiet_libraries
from service.settings import Settings

# The processes of a worker other than the main one wait for its next call as long as
# the service is idle.
FOLLOWER_PATIENCE = timedelta(days=365)

db_app = typer.Typer(help="The database: migrations.", no_args_is_help=True)


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with the given flags on top; bad values fail cleanly."""
    try:
        return Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValidationError as exc:
        problems = "; ".join(
            f"OPSD_{'_'.join(str(p) for p in e['loc']).upper()}: {e['msg']}" for e in exc.errors()
        )
        raise fail(f"invalid settings: {problems}") from exc


def redacted(url: str) -> str:
    """A database or Redis URL without its password, for messages."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not an SQLAlchemy URL (redis://...): hide userinfo
        scheme, sep, rest = url.partition("://")
        return f"{scheme}{sep}***@{rest.split('@', 1)[1]}" if "@" in rest else url


def configure_logging(level: str) -> None:
    """opsd's own loggers at `level` on stderr (uvicorn configures its own); no
    per-file progress bars from transformers in a server's log."""
    logging.basicConfig(
        level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    quiet_libraries()


def serve(
    host: Annotated[
        str | None, typer.Option(help="address to listen on [default: OPSD_HOST or 127.0.0.1]")
    ] = None,
    port: Annotated[int | None, typer.Option(help="port [default: OPSD_PORT or 8000]")] = None,
    log_level: Annotated[str, typer.Option(help="uvicorn log level")] = "info",
    access_log: Annotated[bool, typer.Option(help="log every request")] = False,
) -> None:
    """Run the API server (embedded mode trains in this process; see OPSD_REDIS_URL)."""
    settings = load_settings(host=host, port=port)
    from service.api.auth import InsecureBind, check_bind

    try:
        check_bind(settings)
    except InsecureBind as exc:
        raise fail(str(exc)) from exc
    check_port(settings.host, settings.port)  # before migrations and the trainer start

    import uvicorn

    from service.app import create_app

    configure_logging(log_level)

    mode = "trains in this process" if settings.trains_in_process else "`opsd worker`s train"
    console.print(
        f"[bold]opsd serve[/bold] on http://{settings.host}:{settings.port} ({mode}); "
        f"database {redacted(settings.database_url)}",
        soft_wrap=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=log_level,
        access_log=access_log,
    )


def check_port(host: str, port: int) -> None:
    """Fail at once when `host:port` cannot be listened on (another server holds it),
    binding a socket as uvicorn will."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = exc.strerror or str(exc)
            raise fail(
                f"cannot listen on {host}:{port}: {reason.lower()} (another `opsd serve`?); "
                "choose another with --port or OPSD_PORT"
            ) from exc


def worker(
    worker_id: Annotated[
        str | None, typer.Option("--id", help="worker name on the bus [default: generated]")
    ] = None,
    nproc_per_node: launch.NprocOption = None,
) -> None:
    """Run a trainer worker: reads batches from the Redis bus and trains until stopped;
    in several processes (`--nproc-per-node`, or started by torchrun), one worker whose
    main process reads the bus and records, and whose every process trains."""
    settings = load_settings()
    if settings.redis_url is None:
        raise fail(
            "opsd worker needs the Redis bus: set OPSD_REDIS_URL (and OPSD_DATABASE_URL). "
            "Without Redis, `opsd serve` trains in its own process and needs no worker."
        )
    if nproc_per_node is not None:
        launch.relaunch(nproc_per_node)
        return
    from service.bus import make_bus
    from service.pipeline.worker import TrainerWorker
    from service.storage import Repository, make_engine, make_sessionmaker
    from trainer.distributed import join_world, leave_world
    from trainer.worker_processes import LeadingTrainer, follow, stop_followers

    configure_logging("info")
    if settings.torch_threads:
        from service.pipeline.process import limit_torch_threads

        limit_torch_threads(settings.torch_threads)
    world = join_world(timeout=FOLLOWER_PATIENCE)
    if not world.is_main:  # trains what the main process announces, until it stops
        for signum in (signal.SIGTERM, signal.SIGINT):  # the main process finishes its step
            signal.signal(signum, signal.SIG_IGN)  # first, then tells this one to stop
        follow(world, settings.model_access())
        leave_world()
        return
    open_trainer = (
        partial(LeadingTrainer, world, model_access=settings.model_access())
        if world.sharded
        else None
    )
    engine = make_engine(settings.database_url)
    bus = make_bus(settings.redis_url, settings.bus_prefix)
    repo = Repository(make_sessionmaker(engine))
    where = f"database {redacted(settings.database_url)}, bus {redacted(settings.redis_url)}"

    async def main() -> None:
        try:
            if not await bus.ping():
                raise fail(f"Redis at {redacted(settings.redis_url or '')} does not answer")
            name = f" {worker_id}" if worker_id else ""
            console.print(
                f"[bold]opsd worker[/bold]{name}: {where}; Ctrl-C or SIGTERM stops it",
                soft_wrap=True,
            )
            trainer_worker = TrainerWorker(
                repo, bus, settings, worker_id=worker_id, open_trainer=open_trainer
            )
            await run_until_signalled(trainer_worker.run())
        finally:
            await bus.aclose()

    try:
        asyncio.run(main())
    finally:
        engine.dispose()
        stop_followers(world)
        leave_world()
    console.print("worker stopped")


async def run_until_signalled(main: Coroutine[Any, Any, None]) -> None:
    """Run `main` until it returns or SIGTERM/SIGINT cancels it.

    The first signal cancels `main` (again every second until it ends: a library may
    swallow one cancellation, runtime.cancel_and_wait); a training step already running
    in a thread still finishes before the process exits, and a batch not yet acknowledged
    is delivered again to another worker (trained once, docs/architecture.md
    "What survives which failure"). A second signal acts as usual (SIGINT raises
    KeyboardInterrupt, SIGTERM kills).
    """
    from service.pipeline.runtime import cancel_and_wait

    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(main)
    signals = (signal.SIGINT, signal.SIGTERM)
    received: list[int] = []
    stopping: list[asyncio.Task] = []

    def on_signal(signum: int) -> None:
        received.append(signum)
        console.print(f"{signal.Signals(signum).name}: stopping (send it again to force)")
        for sig in signals:
            loop.remove_signal_handler(sig)
        stopping.append(asyncio.ensure_future(cancel_and_wait(task)))

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        await task
    except asyncio.CancelledError:
        if not received:  # cancelled from outside, not by a signal
            raise
    finally:
        for sig in signals:
            loop.remove_signal_handler(sig)
        for stopper in stopping:
            await stopper


@db_app.command("upgrade")
def db_upgrade(
    url: Annotated[
        str | None,
        typer.Option(help="database URL [default: OPSD_DATABASE_URL or <OPSD_DATA_DIR>/opsd.db]"),
    ] = None,
) -> None:
    """Bring the database to the latest schema (Alembic migrations) and print its revision."""
    from sqlalchemy.exc import SQLAlchemyError

    from service.storage.migrate import upgrade

    database_url = url or load_settings().database_url
    try:
        before = current_revision(database_url)
        upgrade(database_url)
        after = current_revision(database_url)
    except SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise fail(f"cannot migrate {redacted(database_url)}: {reason}") from exc
    change = "already at" if before == after else f"upgraded {before or 'empty'} ->"
    console.print(f"database {redacted(database_url)} {change} revision {after}", soft_wrap=True)


def current_revision(database_url: str) -> str | None:
    """The Alembic revision the database is at (None: never migrated)."""
    from alembic.runtime.migration import MigrationContext
    from sqlalchemy import pool

    from service.storage import make_engine

    engine = make_engine(database_url, poolclass=pool.NullPool)
    try:
        with engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()
    finally:
        engine.dispose()
