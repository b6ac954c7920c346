"""The recipe and its content hash: golden values, since a change re-embeds every chunk of every table.

A table stores its recipe as JSON and every row carries a content hash derived from it; a run
re-embeds each chunk whose hash differs. So the default recipe, its JSON, its fingerprint and the
content hash of a known chunk are pinned to literal values here: an upgrade that changes any of
them (field defaults, key order, the digest's length, what goes into the hash) would silently
make every user pay to embed their whole corpus again, and refuse every existing table.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import pytest

from indexflow.tasks.recipe import CHUNKER_VERSION, Recipe
from indexflow.tasks.settings import Settings

DEFAULT_JSON = ('{"chunker_version": "1", "dimensions": 768, "model": "gemini-embedding-001", "normalize": true, '
                '"send_title": true, "task_type": "RETRIEVAL_DOCUMENT"}')
DEFAULT_FINGERPRINT = "6635daab66f4e597"


def test_the_default_recipe_is_the_documented_one():
    # README "Never pay twice": model, dimensionality, task type, title use, normalization, chunker version
    assert dataclasses.asdict(Recipe()) == {
        "model": "gemini-embedding-001", "dimensions": 768, "task_type": "RETRIEVAL_DOCUMENT",
        "send_title": True, "normalize": True, "chunker_version": CHUNKER_VERSION,
    }
    assert CHUNKER_VERSION == "1"


def test_a_default_run_uses_the_default_recipe(tmp_path):
    assert Settings(corpus=tmp_path).recipe == Recipe()


def test_the_stored_json_and_the_fingerprint_are_stable(tmp_path):
    recipe = Settings(corpus=tmp_path).recipe
    assert recipe.to_json() == DEFAULT_JSON  # what every default table holds in its schema metadata
    assert recipe.fingerprint() == DEFAULT_FINGERPRINT
    assert DEFAULT_FINGERPRINT == hashlib.sha256(DEFAULT_JSON.encode()).hexdigest()[:16]
    assert Recipe.from_json(DEFAULT_JSON) == recipe
    # the keys are sorted: the JSON does not depend on the order the fields are declared or read in
    declared_order = json.dumps(dataclasses.asdict(recipe))
    assert declared_order != DEFAULT_JSON and Recipe.from_json(declared_order).to_json() == DEFAULT_JSON


def test_the_content_hash_of_a_known_chunk_is_stable():
    recipe = Recipe()
    assert recipe.content_hash("A title", "Some text.") == (
        "580da441dd378a4f5f5d0662a4a6c3dfc4927f7eb082098544faab6ca1f607a6")
    # fingerprint, NUL, title, NUL, text
    assert recipe.content_hash("A title", "Some text.") == hashlib.sha256(
        DEFAULT_FINGERPRINT.encode() + b"\x00A title\x00Some text.").hexdigest()
    assert recipe.content_hash("", "Some text.") == (
        "620ffd00647a6214a236ca638bee3126922ab158b1c19824b1c5016fdcab19cc")


def test_without_the_title_the_hash_ignores_it():
    recipe = Recipe(send_title=False)
    assert recipe.fingerprint() == "8137a5d0a3141cc5"
    assert recipe.content_hash("A title", "Some text.") == recipe.content_hash("Another", "Some text.") == (
        "458807f588aa2fed2ff46820654602ade7aec55bf6d222221cf2e574f03e7a9f")


def test_every_recipe_field_changes_the_fingerprint():
    changed = [Recipe(model="text-embedding-004"), Recipe(dimensions=1536), Recipe(task_type="SEMANTIC_SIMILARITY"),
               Recipe(send_title=False), Recipe(normalize=False), Recipe(chunker_version="2")]
    assert len({r.fingerprint() for r in [Recipe(), *changed]}) == 1 + len(changed)


def test_a_recipe_is_a_value_that_cannot_change_under_a_table():
    recipe = Recipe()
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.dimensions = 1536
    assert {Recipe(), Recipe()} == {recipe}  # hashable, equal by value
