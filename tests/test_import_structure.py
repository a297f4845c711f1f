"""Each package in its own room (issue 10), read from the source with ``ast``.

- ``mpai/cache/`` is a generic Django cache backend: it imports nothing of mpai outside
  itself (README, "The layered cache").
- ``mpai/providers/`` knows nothing of chat code, models or the ORM.
- Inside ``mpai/cache/`` the arrows run one way: backend → stampede → stack → locks,
  with no cycles, and only the backend touches ``LayeredCache._stack``.

Every import counts: module level, inside functions, under ``TYPE_CHECKING``, relative,
and ``import_module``/``import_string``/``__import__`` of a string literal.
"""

from __future__ import annotations

import ast
import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

import mpai

PACKAGE = Path(mpai.__file__).resolve().parent
TESTS = Path(__file__).resolve().parent

#: What providers must not import: chat code, interfaces, models and the ORM.
PROVIDERS_FORBIDDEN = (
    "mpai.chat",
    "mpai.models",
    "mpai.consumers",
    "mpai.api",
    "mpai.selectors",
    "mpai.tasks",
    "mpai.admin",
    "mpai.views",
    "mpai.tools",
    "mpai.usage",
    "mpai.site_identity",
    "mpai.sessions",
    "mpai.relay",
    "django.db",
    "django.apps",
    "django.contrib.auth.get_user_model",
)
#: The layers of mpai/cache, highest first: each may import those after it, never before.
CACHE_CHAIN = ("mpai.cache.backend", "mpai.cache.stampede", "mpai.cache.stack", "mpai.cache.locks")
DYNAMIC_IMPORTS = frozenset({"import_module", "import_string", "__import__"})


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(source: str, module: str, is_package: bool = False) -> Iterator[tuple[str, int]]:
    """Yield ``(dotted name, line)`` for everything ``source`` (module ``module``) imports.

    ``from a.b import c`` yields ``a.b.c`` (a module or a name in one: both count as
    reaching into ``a.b``); a relative import is resolved against ``module``.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")
                parent = parent[: len(parent) - (node.level - 1)]
                base = ".".join([*parent, base] if base else parent)
            for alias in node.names:
                yield (base if alias.name == "*" else f"{base}.{alias.name}"), node.lineno
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            first = node.args[0]
            if (
                name in DYNAMIC_IMPORTS
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                yield first.value, node.lineno


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def package_imports(folder: str) -> Iterator[tuple[Path, str, int]]:
    for path in sorted((PACKAGE / folder).rglob("*.py")):
        module = module_name(path)
        for name, line in imported_names(
            path.read_text(), module, is_package=path.name == "__init__.py"
        ):
            yield path, name, line


def where(path: Path, line: int) -> str:
    return f"{path.relative_to(PACKAGE.parent)}:{line}"


def cache_graph() -> dict[str, set[str]]:
    """``{module: modules of mpai.cache it imports}``, names resolved to their module."""
    modules = {module_name(path) for path in (PACKAGE / "cache").rglob("*.py")}
    graph: dict[str, set[str]] = {module: set() for module in modules}
    for path, name, _ in package_imports("cache"):
        while name and name not in modules:
            name = name.rpartition(".")[0]  # mpai.cache.stack.get_stack -> mpai.cache.stack
        source = module_name(path)
        if name and name != source:
            graph[source].add(name)
    return graph


def reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph[start])
    while todo:
        module = todo.pop()
        if module not in seen:
            seen.add(module)
            todo.extend(graph[module])
    return seen


def cache_violations(source: str, module: str = "mpai.cache.example") -> list[str]:
    return [
        name
        for name, _ in imported_names(source, module)
        if within(name, "mpai") and not within(name, "mpai.cache")
    ]


@pytest.mark.parametrize(
    ("source", "found"),
    [
        ("from mpai.conf import mpai_settings", ["mpai.conf.mpai_settings"]),
        ("def f():\n    from mpai.chat.profile import x", ["mpai.chat.profile.x"]),
        ("if TYPE_CHECKING:\n    import mpai.models", ["mpai.models"]),
        ("from mpai import chat, cache", ["mpai.chat"]),
        ("from .. import signals", ["mpai.signals"]),
        ("from ..chat import pipeline", ["mpai.chat.pipeline"]),
        ("from . import stack\nfrom .wire import UNAVAILABLE", []),
        ("import importlib\nimportlib.import_module('mpai.api.chat')", ["mpai.api.chat"]),
        ("import mpai", ["mpai"]),
    ],
)
def test_the_import_scan_sees_every_form_of_import(source: str, found: list[str]) -> None:
    assert cache_violations(source) == found


def test_the_cache_package_imports_nothing_of_mpai_outside_itself() -> None:
    outside = [
        f"{where(path, line)} imports {name}"
        for path, name, line in package_imports("cache")
        if within(name, "mpai") and not within(name, "mpai.cache")
    ]
    assert outside == [], "mpai/cache is a generic cache backend:\n" + "\n".join(outside)


def test_providers_import_no_chat_code_models_or_orm() -> None:
    forbidden = [
        f"{where(path, line)} imports {name}"
        for path, name, line in package_imports("providers")
        if any(within(name, prefix) for prefix in PROVIDERS_FORBIDDEN)
        or "models" in name.split(".")
    ]
    assert forbidden == [], "mpai/providers knows nothing of chat or the ORM:\n" + "\n".join(
        forbidden
    )


def test_the_cache_arrows_run_one_way() -> None:
    graph = cache_graph()
    for upper, lower in itertools.pairwise(CACHE_CHAIN):
        assert lower in graph[upper], f"{upper} should import {lower}"
    for rank, module in enumerate(CACHE_CHAIN):
        above = set(CACHE_CHAIN[:rank]) | {"mpai.cache"}  # the package imports the backend
        backwards = reachable(graph, module) & above
        assert not backwards, f"{module} reaches back to {sorted(backwards)}"
    cycles = sorted(module for module in graph if module in reachable(graph, module))
    assert cycles == [], f"import cycles inside mpai/cache through {cycles}"


def test_only_the_backend_touches_its_layer_stack() -> None:
    backend = PACKAGE / "cache" / "backend.py"
    reaching = [
        f"{path}:{node.lineno}"
        for root in (PACKAGE, TESTS)
        for path in sorted(root.rglob("*.py"))
        if path != backend
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Attribute) and node.attr == "_stack"
    ]
    assert reaching == [], "use LayeredCache.stack:\n" + "\n".join(reaching)
