"""The record: SQLAlchemy models, Alembic migrations (service/migrations) and the repository.

from service.storage import Repository, make_engine, make_sessionmaker, upgrade
upgrade(settings.database_url)
repo = Repository(make_sessionmaker(make_engine(settings.database_url)))
"""

from service.storage.db import make_engine, make_sessionmaker
from service.storage.leases import Lease
from service.storage.models import RunStatus
from service.storage.repository import (
    AlreadyExists,
    Conflict,
    InvalidCursor,
    LeaseLost,
    NotFound,
    Repository,
    StorageError,
)

__all__ = [
    "AlreadyExists",
    "Conflict",
    "InvalidCursor",
    "Lease",
    "LeaseLost",
    "NotFound",
    "Repository",
    "RunStatus",
    "StorageError",
    "make_engine",
    "make_sessionmaker",
]
