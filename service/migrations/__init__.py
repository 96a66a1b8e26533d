"""Alembic migrations of the storage schema (run them with service.storage.migrate)."""
