"""`Document` -> `Chunk`: split under the token limit with stable ids and content hashes.

The rules (changing any of them changes chunk texts: bump `CHUNKER_VERSION` in tasks/recipe.py):
  1. Normalize: line endings to "\\n"; runs of spaces and tabs inside a line to one space;
     lines stripped; blank-line runs to one paragraph break "\\n\\n"; single line breaks kept.
  2. A document whose normalized text fits in `max_tokens` (by `estimate_tokens`) is one chunk.
  3. Otherwise the text is cut into words (runs of non-space), and any word too big for a chunk
     into fragments of at most min(32, max_tokens) characters. Each cut point has a rank:
     paragraph break 3, sentence end or line break 2, space 1, inside a word 0.
  4. Chunks are packed greedily; when one is full it ends at the best-ranked cut point that keeps
     it at least half full (the latest one on a tie), so chunks end on paragraphs, then
     sentences, then words, and only pathological text is cut mid-word.
  5. The next chunk repeats up to `overlap_tokens` from the end of the previous one, starting at
     a sentence or paragraph start when one lies in that window, else at a word.
A chunk's text is always an exact slice of the normalized text. Every chunk's
`estimate_tokens(text) <= max_tokens`; `Chunk.tokens` is that estimate of the text alone (a
title sent with it costs `estimate_tokens(title)` more).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from tasks.corpus import Document
from tasks.recipe import Recipe
from tasks.tokens import CHARS_PER_TOKEN, count_pieces, estimate_tokens

_FRAGMENT_CHARS = 32
_WORD = re.compile(r"\S+")
_SPACES = re.compile(r"[^\S\n]+")
_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"[.!?…][\"'”’)\]]*$")
_SENTENCE_START = re.compile(r"[A-Z0-9\"'“‘(\[]")


@dataclass(frozen=True, slots=True)
class Chunk:
    """One unit of embedding; `id` is `{doc_id}#{ordinal}`, stable across runs."""

    id: str
    doc_id: str
    ordinal: int
    text: str
    title: str
    source: str
    tokens: int
    content_hash: str


def normalize_text(text: str) -> str:
    """Collapse spaces within lines and blank-line runs to one paragraph break (rule 1 above)."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = []
    for paragraph in _PARAGRAPH_BREAK.split(text):
        lines = (_SPACES.sub(" ", line).strip() for line in paragraph.split("\n"))
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def chunk_document(doc: Document, recipe: Recipe, *, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """The chunks of one document, in order, each within `max_tokens` by `estimate_tokens`."""
    if max_tokens < 1 or overlap_tokens < 0:
        raise ValueError(f"max_tokens must be >= 1 and overlap_tokens >= 0, got {max_tokens} and {overlap_tokens}")
    text = normalize_text(doc.text)
    title = " ".join(doc.title.split())
    if not text:
        return []
    if estimate_tokens(text) <= max_tokens:
        pieces = [text]
    else:
        pieces = [text[start:end] for start, end in _split(text, max_tokens, overlap_tokens)]
    return [
        Chunk(
            id=f"{doc.id}#{ordinal}",
            doc_id=doc.id,
            ordinal=ordinal,
            text=piece,
            title=title,
            source=doc.source,
            tokens=estimate_tokens(piece),
            content_hash=recipe.content_hash(title, piece),
        )
        for ordinal, piece in enumerate(pieces)
    ]


def chunk_documents(
    docs: Iterable[Document], recipe: Recipe, *, max_tokens: int, overlap_tokens: int
) -> Iterator[Chunk]:
    """Stream the chunks of every document, document by document."""
    for doc in docs:
        yield from chunk_document(doc, recipe, max_tokens=max_tokens, overlap_tokens=overlap_tokens)


@dataclass(frozen=True, slots=True)
class _Unit:
    start: int
    end: int
    rank: int  # of the cut point just before this unit


def _units(text: str, max_tokens: int) -> list[_Unit]:
    units: list[_Unit] = []
    fragment = max(1, min(_FRAGMENT_CHARS, max_tokens))
    previous_end = 0
    previous_word = ""
    for match in _WORD.finditer(text):
        word = match.group()
        gap = text[previous_end : match.start()]
        if "\n\n" in gap:
            rank = 3
        elif "\n" in gap or (_SENTENCE_END.search(previous_word) and _SENTENCE_START.match(word)):
            rank = 2
        else:
            rank = 1
        if estimate_tokens(word) <= max_tokens:
            units.append(_Unit(match.start(), match.end(), rank))
        else:
            # estimate_tokens(s) <= len(s) for any non-empty s, so a fragment of `fragment` chars fits.
            for offset in range(match.start(), match.end(), fragment):
                units.append(_Unit(offset, min(offset + fragment, match.end()), rank if offset == match.start() else 0))
        previous_end, previous_word = match.end(), word
    return units


def _split(text: str, max_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Character ranges of the chunks of `text` (rules 3-5 of the module docstring)."""
    units = _units(text, max_tokens)
    # Pieces add up over whitespace-separated units and never grow when fragments are glued back,
    # so prefix sums give an upper bound of estimate_tokens for any run of units in O(1).
    pieces = [0]
    for unit in units:
        pieces.append(pieces[-1] + count_pieces(text[unit.start : unit.end]))

    def cost(first: int, stop: int) -> int:
        chars = units[stop - 1].end - units[first].start
        return max(1, -(-chars // CHARS_PER_TOKEN), pieces[stop] - pieces[first])

    n = len(units)
    ranges: list[tuple[int, int]] = []
    start, first_new = 0, 0
    while True:
        stop = first_new + 1
        while stop < n and cost(start, stop + 1) <= max_tokens:
            stop += 1
        if stop == n:
            ranges.append((units[start].start, units[-1].end))
            return ranges
        cut, best_rank = stop, units[stop].rank
        for candidate in range(stop - 1, first_new, -1):
            if 2 * cost(start, candidate) < max_tokens:
                break
            if units[candidate].rank > best_rank:
                cut, best_rank = candidate, units[candidate].rank
        ranges.append((units[start].start, units[cut - 1].end))
        start, first_new = _overlap_start(units, cost, start, cut, overlap_tokens, max_tokens), cut


def _overlap_start(units: list[_Unit], cost, chunk_start: int, cut: int, overlap_tokens: int, max_tokens: int) -> int:
    """Where the next chunk starts: up to `overlap_tokens` back from `cut`, never at the last chunk's start."""
    window: list[int] = []
    for first in range(cut - 1, chunk_start, -1):
        if not overlap_tokens or cost(first, cut) > overlap_tokens:
            break  # cost only grows going back
        window.append(first)
    # `window` runs backwards, so its last element is the longest overlap.
    sentence_starts = [first for first in window if units[first].rank >= 2]
    start = (sentence_starts or window or [cut])[-1]
    # The first new unit must still fit beside the overlap.
    while start < cut and cost(start, cut + 1) > max_tokens:
        start += 1
    return start
