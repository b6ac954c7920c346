"""Chunking: the token limit holds for any text, boundaries are preferred, ids and hashes are stable."""

from __future__ import annotations

import inspect
import json
import random
from collections import Counter
from pathlib import Path

import pytest

from indexflow.tasks.chunk import Chunk, _split, chunk_document, chunk_documents, normalize_text
from indexflow.tasks.corpus import Document, read_corpus
from indexflow.tasks.errors import ConfigError
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.tokens import estimate_tokens
from tests.datasets import scifact_corpus

RECIPE = Recipe()


def doc(text: str, title: str = "A title", id: str = "d1") -> Document:
    return Document(id=id, title=title, text=text, source="corpus/x.md")


def chunks_of(text: str, max_tokens: int, overlap: int = 0, **kw) -> list[Chunk]:
    return chunk_document(doc(text, **kw), RECIPE, max_tokens=max_tokens, overlap_tokens=overlap)


def sentence(rng: random.Random, serial: list[int]) -> str:
    words = []
    for _ in range(rng.randint(3, 25)):
        serial[0] += 1
        words.append(f"w{serial[0]}")  # unique words: each chunk's place in the text is unambiguous
    return " ".join(words).capitalize() + rng.choice([".", ".", "?", "!", ";", ""])


def random_text(rng: random.Random) -> str:
    serial = [0]
    paragraphs = []
    for _ in range(rng.randint(1, 12)):
        parts = []
        for _ in range(rng.randint(1, 8)):
            roll = rng.random()
            if roll < 0.06:
                parts.append("".join(rng.choice("abc0123456789.,;") for _ in range(rng.randint(50, 3000))))
            elif roll < 0.1:
                parts.append(" ".join(str(rng.randint(0, 10**9)) for _ in range(rng.randint(5, 60))))
            else:
                parts.append(sentence(rng, serial))
        paragraphs.append(rng.choice([" ", "  ", "\n", " \t"]).join(parts))
    return rng.choice(["\n\n", "\n \n\n", "\r\n\r\n"]).join(paragraphs)


def test_short_document_is_one_chunk_with_all_fields() -> None:
    text = "Some  text.\r\n\r\n\r\nMore\ttext.  "
    document = Document(id="42", title="  The   title ", text=text, source="c.jsonl:3")
    (chunk,) = chunk_document(document, RECIPE, max_tokens=1024, overlap_tokens=64)
    assert chunk == Chunk(
        id="42#0",
        doc_id="42",
        ordinal=0,
        text="Some text.\n\nMore text.",
        title="The title",
        source="c.jsonl:3",
        tokens=estimate_tokens("Some text.\n\nMore text."),
        content_hash=RECIPE.content_hash("The title", "Some text.\n\nMore text."),
    )


def test_normalization_keeps_paragraphs_and_lines() -> None:
    assert normalize_text("  a  b \t c \r\nd\n\n\n  \n e\u00a0 f\r\rg  ") == "a b c\nd\n\ne f\n\ng"
    assert normalize_text(" \n\t\n ") == ""
    assert chunks_of(" \n ", 100) == []


def test_random_texts_never_exceed_the_limit_and_cover_everything() -> None:
    rng = random.Random(1234)
    for case in range(150):
        text = random_text(rng)
        max_tokens = rng.choice([8, 20, 33, 64, 100, 257])
        overlap = rng.randint(0, max_tokens // 2 - 1)
        chunks = chunks_of(text, max_tokens, overlap)
        normalized = normalize_text(text)
        assert [c.id for c in chunks] == [f"d1#{i}" for i in range(len(chunks))]
        assert all(c.tokens == estimate_tokens(c.text) <= max_tokens for c in chunks), case
        # The chunk texts are repetitive here, so locate them through the splitter's own ranges.
        where = _split(normalized, max_tokens, overlap) if len(chunks) > 1 else [(0, len(normalized))]
        assert [normalized[start:end] for start, end in where] == [c.text for c in chunks], case
        assert where[0][0] == 0 and where[-1][1] == len(normalized), case
        for (start, end), (next_start, next_end) in zip(where, where[1:]):
            assert start < next_start and end < next_end, case  # always moves forward
            assert normalized[end:next_start].strip() == "", case  # nothing is skipped
            if next_start < end:
                assert estimate_tokens(normalized[next_start:end]) <= overlap, case


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    text = " ".join(f"Sentence number {i} says something about topic {i}." for i in range(200))
    with_overlap = chunks_of(text, 200, overlap=40)
    without = chunks_of(text, 200, overlap=0)
    assert len(with_overlap) > len(without) > 1
    for previous, following in zip(with_overlap, with_overlap[1:]):
        head = following.text[:60]
        assert head in previous.text  # the next chunk begins with text the previous one ended with
        assert following.text.startswith("Sentence number")  # and at a sentence start
    for previous, following in zip(without, without[1:]):
        assert following.text.split()[0:4] != previous.text.split()[-4:]
        assert following.text[:40] not in previous.text


def test_chunks_end_on_paragraphs_then_sentences() -> None:
    paragraphs = [" ".join(f"Para {p} sentence {s} has several words." for s in range(12)) for p in range(6)]
    per_paragraph = estimate_tokens(paragraphs[0])
    chunks = chunks_of("\n\n".join(paragraphs), max_tokens=2 * per_paragraph + 10)
    assert [c.text for c in chunks] == ["\n\n".join(paragraphs[i : i + 2]) for i in (0, 2, 4)]

    one_paragraph = " ".join(f"Sentence {s} has a handful of plain words in it." for s in range(60))
    chunks = chunks_of(one_paragraph, max_tokens=100)
    assert len(chunks) > 3 and all(c.text.endswith(".") for c in chunks)


@pytest.mark.parametrize("text", ["x" * 50_000, "7" * 50_000, "ab," * 17_000])
def test_pathological_text_without_spaces_is_cut_under_the_limit(text: str) -> None:
    chunks = chunks_of(text, max_tokens=100)
    assert len(chunks) > 10
    assert max(c.tokens for c in chunks) <= 100
    assert "".join(c.text for c in chunks) == text  # no overlap asked: the cuts tile the text


def test_ids_and_hashes_are_stable_and_depend_on_title_text_and_recipe() -> None:
    text = "\n\n".join(" ".join(f"Paragraph {i} sentence {s}." for s in range(40)) for i in range(20))
    first = chunks_of(text, 128, 16)
    assert first == chunks_of(text, 128, 16)
    assert len({c.content_hash for c in first}) == len(first)

    retitled = chunks_of(text, 128, 16, title="Another title")
    assert [c.text for c in retitled] == [c.text for c in first]
    assert all(a.content_hash != b.content_hash for a, b in zip(first, retitled))

    other_recipe = chunk_document(doc(text), Recipe(dimensions=1536), max_tokens=128, overlap_tokens=16)
    assert all(a.content_hash != b.content_hash for a, b in zip(first, other_recipe))

    edited = chunks_of(text.replace("Paragraph 19 sentence 39.", "Paragraph nineteen ends here."), 128, 16)
    changed = [a.id for a, b in zip(first, edited) if a.content_hash != b.content_hash]
    assert changed and first[0].id not in changed  # an edit at the end leaves the start alone


def test_chunk_documents_streams_in_document_order() -> None:
    docs = (doc(f"text {i}", id=f"d{i}") for i in range(3))
    stream = chunk_documents(docs, RECIPE, max_tokens=64, overlap_tokens=8)
    assert inspect.isgenerator(stream)
    assert [c.id for c in stream] == ["d0#0", "d1#0", "d2#0"]


def test_bad_limits_are_refused() -> None:
    with pytest.raises(ConfigError) as raised:
        chunks_of("text", max_tokens=0)
    assert raised.value.max_tokens == 0


def test_scifact_documents_are_almost_all_one_chunk_at_the_defaults() -> None:
    problems = []
    per_doc: Counter[str] = Counter()
    docs = read_corpus(scifact_corpus(), on_problem=problems.append)
    for chunk in chunk_documents(docs, RECIPE, max_tokens=1024, overlap_tokens=64):
        assert chunk.tokens <= 1024
        per_doc[chunk.doc_id] += 1
    with scifact_corpus().open(encoding="utf-8") as lines:
        documents = sum(1 for line in lines if json.loads(line)["text"].strip())
    assert problems == [] and len(per_doc) == documents
    single = sum(1 for n in per_doc.values() if n == 1)
    assert single / documents > 0.99


def test_the_smallest_limits_are_accepted_and_anything_below_is_refused() -> None:
    # max_tokens=1, no overlap: every word is its own chunk, and a word over one token is cut
    assert [c.text for c in chunks_of("a bc defgh", max_tokens=1)] == ["a", "bc", "d", "e", "f", "g", "h"]
    assert [c.text for c in chunks_of("a b", max_tokens=1, overlap=0)] == ["a", "b"]
    for max_tokens, overlap in ((0, 0), (1, -1), (-5, 3)):
        with pytest.raises(ConfigError) as raised:
            chunks_of("text", max_tokens=max_tokens, overlap=overlap)
        assert (raised.value.max_tokens, raised.value.overlap_tokens) == (max_tokens, overlap)
        assert str(raised.value) == (
            f"max_tokens must be >= 1 and overlap_tokens >= 0, got {max_tokens} and {overlap}")


def test_a_document_that_exactly_fits_is_one_chunk() -> None:
    text = "one two three four five six seven eight nine ten"
    assert estimate_tokens(text) == 12
    assert [c.text for c in chunks_of(text, max_tokens=12)] == [text]
    assert len(chunks_of(text, max_tokens=11)) == 2
