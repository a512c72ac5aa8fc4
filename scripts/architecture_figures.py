"""Print the figures docs/architecture.md tracks: module and function sizes, where each
table's SQL lives, and which modules import the facade.

    .venv/bin/python scripts/architecture_figures.py [src/rindle_async]
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

TABLES = ("assets", "variants", "upload_sessions", "attachments", "jobs", "processing_runs")


def _functions(tree: ast.AST) -> list[tuple[int, str, int]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            found.append((node.end_lineno - node.lineno + 1, node.name, node.lineno))
    return found


def _imports_app(tree: ast.AST, module: str) -> bool:
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level and name == "app" or name.endswith(".app") or name == "rindle_async.app":
                return True
            if node.level and not name and any(a.name == "app" for a in node.names):
                return True
    return False


def main(root: str = "src/rindle_async") -> None:
    base = Path(root)
    modules = sorted(p for p in base.rglob("*.py"))
    sizes, functions, sql, facade_users = [], [], {t: set() for t in TABLES}, []
    for path in modules:
        text = path.read_text()
        name = str(path.relative_to(base))
        tree = ast.parse(text)
        sizes.append((len(text.splitlines()), name))
        functions += [(n, f"{name}:{line} {fn}") for n, fn, line in _functions(tree)]
        for table in TABLES:
            if re.search(r"(FROM|JOIN|UPDATE|INTO)\s+\{[a-z_.]+\}\." + table + r"\b", text) or \
                    re.search(r"(FROM|JOIN|UPDATE|INTO)\s+\{[a-z_.]+\." + table + r"\}", text):
                sql[table].add(name)
        # the facade and the entry points above it (CLI, app loader, worker settings, web adapters)
        above = ("app.py", "__init__.py", "cli.py", "app_loader.py", "worker.py")
        if name not in above and not name.startswith("contrib/") and _imports_app(tree, name):
            facade_users.append(name)
    sizes.sort(reverse=True)
    functions.sort(reverse=True)
    print(f"modules: {len(modules)}, lines: {sum(n for n, _ in sizes)}")
    print("largest modules:", ", ".join(f"{name} {n}" for n, name in sizes[:3]))
    print("largest functions:", ", ".join(f"{where} {n}" for n, where in functions[:3]))
    print("functions over 50 lines:", sum(1 for n, _ in functions if n > 50))
    for table, where in sql.items():
        print(f"SQL for {table}: {len(where)} module(s): {', '.join(sorted(where))}")
    print("modules below the facade importing app:", ", ".join(facade_users) or "none")


if __name__ == "__main__":
    main(*sys.argv[1:])
