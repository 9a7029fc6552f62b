"""The import structure stays one-way: no circle, and nothing below the adapters imports them.

The same check as ``../shared/tools/import_cycles.py``, kept in the project so that a
change that brings a circle back fails here (STYLE.md: errors -> settings -> keys,
events -> verifier -> policy, audit -> asgi, wsgi -> contrib, sinks, cli).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "jwt_audit_middleware"
ADAPTERS = ("asgi", "wsgi", "contrib", "cli", "testing")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def owner(dotted: str, modules: dict[str, Path]) -> str:
    """The package module ``dotted`` names or lies in ("" if none)."""
    while dotted and dotted not in modules:
        dotted = dotted.rpartition(".")[0]
    return dotted


def imports() -> dict[str, set[str]]:
    """Each module's imports of the package's own modules (lazy ones included)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    packages = {module_name(p) for p in PACKAGE.rglob("__init__.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        base = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    stem = base[: len(base) - node.level + 1] + (
                        [node.module] if node.module else []
                    )
                    target = ".".join(stem)
                else:
                    target = node.module or ""
                candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
            elif isinstance(node, ast.Import):
                candidates = [alias.name for alias in node.names]
            else:
                continue
            for candidate in candidates:
                module = owner(candidate, files)
                if module and module != name and module not in packages:
                    found.add(module)
        graph[name] = found
    return graph


def is_adapter(module: str) -> bool:
    return module.split(".")[1] in ADAPTERS if "." in module else True


def test_no_import_circle() -> None:
    graph = imports()

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in graph[start]:
            if nxt == goal or (nxt not in seen and not seen.add(nxt) and reaches(nxt, goal, seen)):
                return True
        return False

    circles = sorted(m for m in graph if reaches(m, m, set()))
    assert circles == []


def test_nothing_below_the_adapters_imports_them() -> None:
    upward = sorted(
        (module, target)
        for module, targets in imports().items()
        if not is_adapter(module)
        for target in targets
        if is_adapter(target)
    )
    assert upward == []


def test_the_check_sees_the_package() -> None:
    graph = imports()
    assert "jwt_audit_middleware.verifier" in graph["jwt_audit_middleware.policy"]
    assert "jwt_audit_middleware.lifecycle" in graph["jwt_audit_middleware.asgi"]
