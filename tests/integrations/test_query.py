"""QueryEmbedder: the same query vector `indexflow query` uses, through the real SDK and the emulator."""

from __future__ import annotations

import ast
import asyncio
import importlib
from pathlib import Path

import numpy as np
import pytest

import indexflow
from indexflow.emulator.embedding import embed_texts
from indexflow.integrations.query import QueryEmbedder
from indexflow.tasks.errors import ConfigError
from indexflow.tasks.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def emulator_query_vector(text: str, dim: int) -> np.ndarray:
    raw = embed_texts([text], dim, "RETRIEVAL_QUERY")[0]
    return raw / np.linalg.norm(raw)


def test_query_vector_is_the_tables_recipe_unit_length_one_call(emu, embedder):
    assert embedder.recipe == Recipe()  # read from the table, not assumed
    vector = embedder.embed("how do I parse command line arguments")
    assert emu.admin.stats()["calls"] == 1
    assert len(vector) == embedder.recipe.dimensions
    np.testing.assert_allclose(vector, emulator_query_vector("how do I parse command line arguments", 768), atol=1e-6)
    assert np.linalg.norm(vector) == pytest.approx(1.0, abs=1e-6)


def test_sync_embed_works_inside_a_running_event_loop_and_after_close(emu, embedder):
    async def from_async_code():
        return embedder.embed("zip archive"), await embedder.aembed("zip archive")

    sync_vector, async_vector = asyncio.run(from_async_code())
    assert sync_vector == async_vector
    assert asyncio.run(from_async_code()) == (sync_vector, sync_vector)  # another loop, the same client
    embedder.close()
    assert embedder.embed("zip archive") == sync_vector
    assert emu.admin.stats()["calls"] == 5


def test_no_key_is_a_config_error_naming_the_variable(indexed, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    with pytest.raises(ConfigError) as info:
        QueryEmbedder.for_table(indexed.db_uri, indexed.table)
    assert "GEMINI_API_KEY" in str(info.value)


def test_key_and_base_url_default_to_the_environment(emu, indexed, monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", emu.api_key)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", emu.base_url)
    embedder = QueryEmbedder.for_table(indexed.db_uri, indexed.table)
    assert embedder.endpoint.base_url == emu.base_url
    assert emu.api_key not in repr(embedder)
    embedder.embed("dates")
    assert emu.admin.stats()["calls"] == 1


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    names += [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level]
    return {name.split(".")[0] for name in names}


def test_only_the_adapters_import_the_frameworks():
    # every module of the installed package (flows/, tasks/, emulator/ are mapped into it)
    frameworks = {"langchain", "langchain_core", "langchain_community", "llama_index", "pandas"}
    roots = [Path(p) for p in indexflow.__spec__.submodule_search_locations] + [
        Path(importlib.import_module(f"indexflow.{sub}").__file__).parent for sub in ("flows", "tasks", "emulator")
    ]
    importing = {
        path.relative_to(ROOT).as_posix()
        for root in roots for path in root.rglob("*.py") if imported_roots(path) & frameworks
    }
    assert importing == {"indexflow/integrations/langchain.py", "indexflow/integrations/llama_index.py"}


def test_frameworks_are_only_in_the_interop_extra():
    from importlib.metadata import requires

    framework = ("langchain", "llama-index", "pandas")
    pulled = [r for r in requires("indexflow") if r.lower().startswith(framework)]
    assert len(pulled) == 5
    assert all('extra == "interop"' in r for r in pulled)
