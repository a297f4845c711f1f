"""One meaning per name: no class or public function is defined twice in the package.

Two ``TurnResult`` classes (or two ``estimate_tokens`` that count differently) make a
reader guess which one a module means. Allowed: Django's ``Command`` (one per
management command module), the ``run`` of each benchmark suite, the grouped cache
API's ``get``/``set``/``delete`` beside the scoped store's, and a Celery task named
after the service it runs (``mpai/tasks.py``).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import mpai

PACKAGE = Path(mpai.__file__).parent
CONVENTIONS = {"Command", "run", "get", "set", "delete"}


def _definitions() -> dict[str, list[str]]:
    seen: dict[str, list[str]] = defaultdict(list)
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if "migrations" in relative.parts or relative.as_posix() == "tasks.py":
            continue
        for node in ast.parse(path.read_text("utf-8")).body:
            if isinstance(node, ast.ClassDef) or (
                isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
                and not node.name.startswith("_")
            ):
                seen[node.name].append(relative.as_posix())
    return seen


def test_the_scan_sees_the_package() -> None:
    definitions = _definitions()
    assert "TurnStream" in definitions
    assert "ChatPipeline" in definitions


def test_no_class_or_public_function_is_defined_twice() -> None:
    twice = {
        name: modules
        for name, modules in _definitions().items()
        if len(modules) > 1 and name not in CONVENTIONS
    }
    assert twice == {}
