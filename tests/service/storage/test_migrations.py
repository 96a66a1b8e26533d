"""Alembic migrations build the schema from empty on both backends and match the models."""

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service.settings import Settings
from service.storage import make_engine
from service.storage.migrate import downgrade, upgrade
from service.storage.models import Base

TABLES = {
    "environments",
    "runs",
    "steps",
    "trajectories",
    "token_scores",
    "checkpoints",
    "events",
    "batches",
    "evaluations",
    "run_leases",
}


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_creates_every_table_on_an_empty_database(database_url):
    assert table_names(database_url) == set()
    upgrade(database_url)
    assert table_names(database_url) == TABLES


def test_upgrade_twice_is_a_no_op(database_url):
    upgrade(database_url)
    upgrade(database_url)
    assert table_names(database_url) == TABLES


def test_downgrade_to_base_drops_every_table_and_upgrade_restores_them(database_url):
    upgrade(database_url)
    downgrade(database_url)
    assert table_names(database_url) == set()
    upgrade(database_url)
    assert table_names(database_url) == TABLES


def test_migrated_schema_matches_the_models(database_url):
    upgrade(database_url)
    engine = make_engine(database_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_default_settings_migrate_a_sqlite_file_under_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("OPSD_DATA_DIR", str(tmp_path / "not-yet"))
    monkeypatch.delenv("OPSD_DATABASE_URL", raising=False)
    settings = Settings()
    assert settings.database_url == f"sqlite:///{tmp_path / 'not-yet' / 'opsd.db'}"
    upgrade(settings.database_url)
    assert (tmp_path / "not-yet" / "opsd.db").is_file()
    assert table_names(settings.database_url) == TABLES
