"""The folder tree tells the architecture: every service has the same shape and imports no other service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from driftloop.stack import SERVICES

SERVICES_DIR = Path(__file__).resolve().parents[2] / "services"
ALL_SERVICES = sorted(p.name for p in SERVICES_DIR.iterdir() if (p / "__init__.py").is_file())


def test_the_stack_runs_every_service_folder() -> None:
    assert sorted(("schemaregistry", *SERVICES)) == ALL_SERVICES


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_every_service_has_the_same_shape(service: str) -> None:
    folder = SERVICES_DIR / service
    for name in ("__init__.py", "__main__.py", "service.py", "api.py"):
        assert (folder / name).is_file(), f"services/{service}/{name} is missing"
    if service != "schemaregistry":  # the registry consumes no events
        assert (folder / "handlers.py").is_file(), f"services/{service}/handlers.py is missing"
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text()))
    assert doc, f"services/{service}/__init__.py needs a docstring saying what it does"
    main = (folder / "__main__.py").read_text()
    assert f'run("{service}", build' in main
    tree = ast.parse((folder / "service.py").read_text())
    assert any(isinstance(n, ast.FunctionDef) and n.name == "build" for n in tree.body)


def test_libs_never_import_a_service() -> None:
    libs = SERVICES_DIR.parent / "libs" / "driftloop"
    for path in libs.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                assert not name.startswith("driftloop.services"), (
                    f"{path} imports {name}: libs are the services' contracts; run a service's task as a process"
                )


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_services_never_import_each_other(service: str) -> None:
    for path in (SERVICES_DIR / service).rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                if name.startswith("driftloop.services."):
                    owner = name.split(".")[2]
                    assert owner == service, f"{path} imports {name}: talk to {owner} through events or its API"
