"""The package's house plan: each folder is a layer that imports only the layers below it, and no
two modules share a name."""

from __future__ import annotations

import ast
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import ROOT

SERVICE = ROOT / "service"
# Lowest first. A module may import its own layer and the layers before it; `api` and `worker`
# share a rank and never import each other. The entry points (the package's `__init__`,
# `__main__` and the status command) sit on top.
LAYERS = {
    # The HTTP client stands apart: it imports nothing of the service and nothing imports it
    # (test_the_client_stands_alone), so it can be copied into another project as it is.
    "client": 0,
    "config": 0,
    "net": 1,
    "jobs": 2,
    "telemetry": 3,
    "store": 4,
    "history": 5,
    "api": 6,
    "worker": 6,
    "dev": 7,
}
ENTRY = 8


def layer_of(module: str) -> str | None:
    """`service.store.scripts` -> "store"; None for the entry modules."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in LAYERS:
        return parts[1]
    return None


def rank(module: str) -> int:
    layer = layer_of(module)
    return ENTRY if layer is None else LAYERS[layer]


def imports_of(path: Path) -> set[str]:
    """Every service module `path` imports, at any depth (functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("service")}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("service"):
            assert node.module is not None
            for alias in node.names:  # `from service.store import lua` names a module
                child = f"{node.module}.{alias.name}"
                found.add(child if module_path(child).exists() else node.module)
    return found


def module_path(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts)


MODULES = sorted(path for path in SERVICE.rglob("*.py"))


def test_every_folder_is_a_known_layer_with_a_docstring() -> None:
    folders = {path.parent for path in MODULES if path.parent != SERVICE}
    assert {folder.name for folder in folders} == set(LAYERS)
    for folder in folders:
        assert ast.get_docstring(ast.parse((folder / "__init__.py").read_text())), folder


@pytest.mark.parametrize("path", MODULES, ids=lambda path: module_name(path))
def test_a_module_imports_only_its_layer_and_those_below(path: Path) -> None:
    name = module_name(path)
    own = rank(name)
    wrong = []
    for imported in imports_of(path):
        if imported in ("service", "service.__init__") or layer_of(imported) is None:
            if own != ENTRY and imported != "service":
                wrong.append(imported)  # an entry module, from inside a layer
            continue
        higher = rank(imported) > own
        sideways = rank(imported) == own and layer_of(imported) != layer_of(name)
        if own != ENTRY and (higher or sideways):
            wrong.append(imported)
    assert not wrong, f"{name} imports {sorted(wrong)}, from a layer above its own or beside it"


def test_no_layer_imports_the_package_root() -> None:
    """`from service import job` is for handler modules; inside the package it would be a
    circle through service/__init__.py."""
    offenders = [
        module_name(path)
        for path in MODULES
        if layer_of(module_name(path)) and "service" in imports_of(path)
    ]
    assert not offenders


def test_no_two_modules_share_a_name() -> None:
    names = Counter(path.stem for path in MODULES if path.stem not in ("__init__", "__main__"))
    assert [name for name, count in names.items() if count > 1] == []


def test_the_registry_imports_no_handlers() -> None:
    """The demo job types are registered by dev mode, the tests and the benchmarks, through
    HANDLER_MODULES; a production registry holds only the application's types."""
    registry = imports_of(SERVICE / "jobs" / "registry.py")
    assert "service.dev.demo" not in registry
    assert "service.dev.demo" not in (SERVICE / "jobs" / "registry.py").read_text()


def test_the_client_stands_alone() -> None:
    """service.client imports only itself (its own modules, httpx2 and the standard library),
    and no other part of the package imports it."""
    for path in MODULES:
        name = module_name(path)
        inside = layer_of(name) == "client" or name == "service.client"
        imported = {module for module in imports_of(path) if module != "service"}
        clients = {module for module in imported if module.startswith("service.client")}
        if inside:
            assert imported == clients, f"{name} imports {sorted(imported - clients)}"
        else:
            assert not clients, f"{name} imports the client"
