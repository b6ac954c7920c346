"""The distribution: one top-level package, one version everywhere, a quiet `import indexflow`."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import indexflow

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
INDEXFLOW = Path(sys.executable).with_name("indexflow")
MODULE_TO_DIST = {"google": "google-genai", "yaml": "pyyaml"}
# Imported inside try/except ImportError: used when present, never required.
OPTIONAL_IMPORTS = {"httpx2", "aiohttp"}


def test_the_wheel_installs_only_indexflow_and_every_module(tmp_path):
    # Build from a copy of the sources a clone has, so nothing built or cached in the checkout counts.
    src = tmp_path / "src"
    for folder in ("indexflow", "flows", "tasks", "emulator"):
        shutil.copytree(REPO / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "--disable-pip-version-check",
                    "-w", str(out), str(src)], check=True, capture_output=True)
    wheel = next(out.glob("indexflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names} == {"indexflow", f"indexflow-{PROJECT['version']}.dist-info"}
    for folder in ("flows", "tasks", "emulator"):
        for module in (REPO / folder).glob("*.py"):
            assert f"indexflow/{folder}/{module.name}" in names


def test_one_version_everywhere():
    cli = subprocess.run([str(INDEXFLOW), "--version"], capture_output=True, text=True, check=True)
    assert indexflow.__version__ == PROJECT["version"] == cli.stdout.strip()


def test_import_indexflow_is_quiet_and_loads_no_framework():
    code = ("import sys, indexflow; print(indexflow.__version__); "
            "print(sorted(m for m in ('prefect', 'lancedb', 'google.genai') if m in sys.modules))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert run.stdout.splitlines() == [PROJECT["version"], "[]"]
    assert run.stderr == ""


def test_the_stages_cannot_be_imported_under_a_second_name():
    # `tasks`, `flows` and `emulator` are generic names other projects use; they live under indexflow only.
    run = subprocess.run([sys.executable, "-c", "import tasks.store"], capture_output=True, text=True, cwd=REPO)
    assert run.returncode != 0 and "import indexflow.tasks, not tasks" in run.stderr
    outside = subprocess.run([sys.executable, "-c", "import tasks"], capture_output=True, text=True, cwd="/")
    assert "No module named 'tasks'" in outside.stderr


def test_every_imported_package_is_declared():
    declared = {re.split(r"[\[<>=;! ]", dep, maxsplit=1)[0].lower() for dep in PROJECT["dependencies"]}
    imported = set()
    for folder in ("indexflow", "flows", "tasks", "emulator"):
        for module in (REPO / folder).glob("*.py"):
            for node in ast.walk(ast.parse(module.read_text())):
                if isinstance(node, ast.Import):
                    imported.update(alias.name.split(".")[0] for alias in node.names)
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    imported.add(node.module.split(".")[0])
    third_party = imported - set(sys.stdlib_module_names) - {"indexflow", "__future__"} - OPTIONAL_IMPORTS
    missing = {MODULE_TO_DIST.get(m, m) for m in third_party} - declared
    assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"
