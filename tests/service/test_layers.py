"""The service's layers: domain code raises its own errors and leaves SQL to the repository;
only the HTTP layer (service/api, the endpoints) knows about HTTP."""

import ast
from pathlib import Path

import pytest

from service.api.errors import TYPED_ERRORS
from service.environments.errors import ModelUnavailable
from service.runs.errors import InvalidRunConfig

SERVICE = Path(__file__).resolve().parents[2] / "service"
DOMAIN_MODULES = sorted(
    p
    for package in ("environments", "runs")
    for p in (SERVICE / package).glob("*.py")
    if p.name != "endpoints.py"
)


def imported_modules(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


@pytest.mark.parametrize("path", DOMAIN_MODULES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_domain_modules_do_not_import_the_http_layer(path):
    assert {m for m in imported_modules(path) if m.startswith("service.api")} == set()


@pytest.mark.parametrize("package", ["environments", "runs"])
def test_domain_services_leave_sql_to_the_repository(package):
    imported = imported_modules(SERVICE / package / "service.py")
    assert {m for m in imported if m.split(".")[0] == "sqlalchemy"} == set()


def test_the_domain_errors_are_mapped_to_http():
    mapped = {cls: (status, code) for cls, status, code in TYPED_ERRORS}
    assert mapped[InvalidRunConfig] == (422, "invalid_run_config")
    assert mapped[ModelUnavailable] == (422, "model_not_found")
