"""The folder tree tells the architecture: every service has the same shape and imports no other service."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from driftloop.ops.stack import SERVICES

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


# --- the layers of libs/driftloop and the import graph ---------------------------------------------------------

LIBS_DIR = SERVICES_DIR.parent / "libs" / "driftloop"
# What each layer may import from driftloop (besides itself and the exception tree ``driftloop.errors``).
LAYERS: dict[str, tuple[str, ...]] = {
    "contracts": (),
    "clients": ("contracts",),
    "runtime": ("contracts", "clients"),
    "client": ("contracts", "clients"),
    "ops": ("contracts", "clients", "runtime", "client"),
}
# The public Python client is for users and the operator tooling: nothing else of driftloop builds on it.
CLIENT_USERS = ("client", "ops")
# Contracts are definitions: no network, database, broker, cluster or web framework.
IO_LIBRARIES = (
    "sqlalchemy",
    "alembic",
    "confluent_kafka",
    "aiokafka",
    "faust",
    "httpx",
    "requests",
    "minio",
    "redis",
    "pyspark",
    "ray",
    "fastapi",
    "starlette",
    "uvicorn",
    "socket",
    "subprocess",
    "urllib",
)


def _module_name(path: Path) -> str:
    if path.is_relative_to(SERVICES_DIR):
        parts = ["driftloop", "services", *path.relative_to(SERVICES_DIR).with_suffix("").parts]
    else:
        parts = ["driftloop", *path.relative_to(LIBS_DIR).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[str]:
    """Every module ``path`` imports (at any depth of the file), relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: list[str] = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            found.append(target)
            found.extend(f"{target}.{a.name}" for a in node.names)
    return found


def _source_files() -> list[Path]:
    files = [p for p in LIBS_DIR.rglob("*.py") if "migrations" not in p.parts]
    return files + list(SERVICES_DIR.rglob("*.py"))


def _known_modules() -> set[str]:
    return {_module_name(p) for p in _source_files()}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_each_layer_imports_only_the_layers_below(layer: str) -> None:
    allowed = {"errors", layer, *LAYERS[layer]}
    for path in (LIBS_DIR / layer).rglob("*.py"):
        if "migrations" in path.parts:
            continue
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] != "driftloop" or len(parts) < 2:
                continue
            assert parts[1] in allowed, f"{path} imports {name}: {layer} may import only {sorted(allowed)}"


def test_only_the_operator_tooling_imports_the_public_client() -> None:
    for path in _source_files():
        layer = _module_name(path).split(".")[1] if "." in _module_name(path) else ""
        if layer in CLIENT_USERS:
            continue
        for name in _imports(path):
            assert not (name == "driftloop.client" or name.startswith("driftloop.client.")), (
                f"{path} imports {name}: driftloop.client is the users' (and the CLI's) client; "
                "services and libraries call each other through driftloop.clients.http"
            )


def test_contracts_do_no_io() -> None:
    for path in (LIBS_DIR / "contracts").rglob("*.py"):
        for name in _imports(path):
            root = name.split(".")[0]
            assert root not in IO_LIBRARIES, f"{path} imports {name}: contracts are definitions, without I/O"


@pytest.mark.parametrize("service", ALL_SERVICES)
def test_services_never_import_the_operator_tooling(service: str) -> None:
    for path in (SERVICES_DIR / service).rglob("*.py"):
        for name in _imports(path):
            assert not name.startswith("driftloop.ops"), f"{path} imports {name}: ops is the operators' tooling"


def test_no_import_circles() -> None:
    """Module-level or inside a function: no module reaches itself again through its imports."""
    known = _known_modules()

    def resolve(name: str) -> str | None:
        while name and name not in known:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for path in _source_files():
        module = _module_name(path)
        targets = {resolve(n) for n in _imports(path) if n.startswith("driftloop")}
        # A package's __init__ re-exporting its own modules is not a circle of theirs.
        graph[module] = {t for t in targets if t and t != module and not module.startswith(t + ".")}
    visiting: list[str] = []
    done: set[str] = set()

    def visit(module: str) -> None:
        if module in done:
            return
        assert module not in visiting, "import circle: " + " -> ".join([*visiting[visiting.index(module) :], module])
        visiting.append(module)
        for target in sorted(graph.get(module, ())):
            visit(target)
        visiting.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
