"""The shape of the tree, read from the source: one Gemini boundary, small modules and classes, and a
batch wing that stands apart from the online route."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRODUCT = ("tasks", "flows", "emulator", "indexflow")
MAX_MODULE_LINES, MAX_CLASS_LINES = 400, 150


def modules(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imported(path: Path) -> set[str]:
    """Every module name `path` imports, at any depth (lazy imports inside functions too)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_only_tasks_gemini_imports_google_genai():
    gemini = ROOT / "tasks" / "gemini"
    offenders = [str(p.relative_to(ROOT)) for p in modules(*PRODUCT)
                 if gemini not in p.parents and any(n == "google" or n.startswith("google.genai")
                                                    for n in imported(p))]
    assert offenders == []


def test_the_sdks_private_parts_appear_only_in_sdk_hooks():
    hooks = ROOT / "tasks" / "gemini" / "sdk_hooks.py"
    offenders = [str(p.relative_to(ROOT)) for p in modules(*PRODUCT)
                 if p != hooks and ("_api_client" in p.read_text() or "_from_mldev" in p.read_text())]
    assert offenders == []


def test_no_module_over_400_lines_and_no_class_over_150():
    too_long = [(str(p.relative_to(ROOT)), p.read_text().count("\n")) for p in modules(*PRODUCT, "bench")
                if p.read_text().count("\n") > MAX_MODULE_LINES]
    big_classes = [(str(p.relative_to(ROOT)), node.name, node.end_lineno - node.lineno + 1)
                   for p in modules(*PRODUCT, "bench") for node in ast.walk(ast.parse(p.read_text()))
                   if isinstance(node, ast.ClassDef) and node.end_lineno - node.lineno + 1 > MAX_CLASS_LINES]
    assert too_long == [] and big_classes == []


def test_the_batch_wing_does_not_import_the_online_route():
    offenders = [str(p.relative_to(ROOT)) for p in modules("tasks/batch")
                 if any(n == "indexflow.tasks.online" or n.startswith("indexflow.tasks.online.") for n in imported(p))]
    assert offenders == []


def test_the_gemini_boundary_imports_nothing_above_it():
    """tasks.gemini returns plain data: it knows nothing of routes, the ledger or the table."""
    above = ("indexflow.tasks.batch", "indexflow.tasks.online", "indexflow.tasks.batcher", "indexflow.tasks.store",
             "indexflow.flows")
    offenders = [(str(p.relative_to(ROOT)), n) for p in modules("tasks/gemini") for n in imported(p)
                 if n.startswith(above)]
    assert offenders == []


def test_the_check_sees_a_violation():
    """The rules above can fail: a module that imports the SDK is seen."""
    assert "google.genai" in imported(ROOT / "tasks" / "gemini" / "client.py")
