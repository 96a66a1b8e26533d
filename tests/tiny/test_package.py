"""The tiny package's place in the tree: its modules import one another without a cycle,
and the trainer loads the shipped models without importing any of it."""

import ast
from pathlib import Path

from trainer.model_names import ALIASES, resolve_model

ROOT = Path(__file__).resolve().parents[2]


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def package_modules(package: str) -> dict[str, Path]:
    return {
        ".".join(p.relative_to(ROOT).with_suffix("").parts): p
        for p in (ROOT / package).rglob("*.py")
    }


def test_the_tiny_modules_import_one_another_without_a_cycle():
    modules = package_modules("tiny")
    edges = {name: imported_modules(path) & set(modules) for name, path in modules.items()}

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for nxt in edges[start] - seen:
            if nxt == target or reaches(nxt, target, seen | {nxt}):
                return True
        return False

    assert edges["tiny.tools"] == {"tiny.pretrain"}  # the shared pieces, not the arithmetic corpus
    assert [name for name in modules if reaches(name, name, set())] == []


def test_the_trainer_never_imports_the_tiny_package():
    importers = [
        name
        for name, path in package_modules("trainer").items()
        if any(m == "tiny" or m.startswith("tiny.") for m in imported_modules(path))
    ]
    assert importers == []


def test_the_aliases_name_the_tiny_packages_model_folders():
    models = ROOT / "tiny" / "models"
    assert {"tiny": models / "tiny", "tiny-tools": models / "tiny-tools"} == ALIASES
    for alias in ALIASES:
        assert (Path(resolve_model(alias)) / "model.safetensors").is_file()
