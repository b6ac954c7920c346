"""`Document` -> `Chunk`: split under the token limit with stable ids and content hashes.

The rules (changing any of them changes chunk texts: bump `CHUNKER_VERSION` in tasks/recipe.py):
  1. Normalize: line endings to "\\n"; runs of spaces and tabs inside a line to one space;
     lines stripped; blank-line runs to one paragraph break "\\n\\n"; single line breaks kept.
     The title's whitespace runs collapse to one space.
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

from indexflow.tasks.corpus import Document
from indexflow.tasks.errors import ConfigError
from indexflow.tasks.recipe import Recipe
from indexflow.tasks.tokens import CHARS_PER_TOKEN, count_pieces, estimate_tokens

_FRAGMENT_CHARS = 32
_WORD = re.compile(r"\S+")
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
        # str.split() splits on exactly the whitespace `\s` matches; a line holds no "\n".
        lines = (" ".join(line.split()) for line in paragraph.split("\n"))
        paragraph = "\n".join(line for line in lines if line)
        if paragraph:
            paragraphs.append(paragraph)
    return "\n\n".join(paragraphs)


def chunk_document(doc: Document, recipe: Recipe, *, max_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """The chunks of one document, in order, each within `max_tokens` by `estimate_tokens`."""
    if max_tokens < 1 or overlap_tokens < 0:
        raise ConfigError(
            f"max_tokens must be >= 1 and overlap_tokens >= 0, got {max_tokens} and {overlap_tokens}",
            max_tokens=max_tokens,
            overlap_tokens=overlap_tokens,
        )
    text = normalize_text(doc.text)
    title = " ".join(doc.title.split())
    if not text:
        return []
    whole = estimate_tokens(text)
    if whole <= max_tokens:
        pieces = [(text, whole)]
    else:
        pieces = [(text[start:end], estimate_tokens(text[start:end]))
                  for start, end in _split(text, max_tokens, overlap_tokens)]
    return [
        Chunk(
            id=f"{doc.id}#{ordinal}",
            doc_id=doc.id,
            ordinal=ordinal,
            text=piece,
            title=title,
            source=doc.source,
            tokens=tokens,
            content_hash=recipe.content_hash(title, piece),
        )
        for ordinal, (piece, tokens) in enumerate(pieces)
    ]


def chunk_documents(
    docs: Iterable[Document], recipe: Recipe, *, max_tokens: int, overlap_tokens: int
) -> Iterator[Chunk]:
    """Stream the chunks of every document, document by document."""
    for doc in docs:
        yield from chunk_document(doc, recipe, max_tokens=max_tokens, overlap_tokens=overlap_tokens)


class _Units:
    """The cut-up text as parallel lists: unit i spans text[starts[i]:ends[i]]; ranks[i] is the
    rank of the cut point before it; pieces[i] is the sum of count_pieces over units before i."""

    def __init__(self, text: str, max_tokens: int) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []
        self.ranks: list[int] = []
        self.pieces: list[int] = [0]
        fragment = max(1, min(_FRAGMENT_CHARS, max_tokens))
        previous_end, previous_word = 0, ""
        for match in _WORD.finditer(text):
            word, start, end = match.group(), match.start(), match.end()
            gap = text[previous_end:start]
            if "\n\n" in gap:
                rank = 3
            elif "\n" in gap or (_SENTENCE_END.search(previous_word) and _SENTENCE_START.match(word)):
                rank = 2
            else:
                rank = 1
            pieces = count_pieces(word)
            if max(-(-len(word) // CHARS_PER_TOKEN), pieces) <= max_tokens:
                self._add(start, end, rank, pieces)
            else:
                # estimate_tokens(s) <= len(s) for any non-empty s, so a fragment of `fragment` chars fits.
                for offset in range(start, end, fragment):
                    stop = min(offset + fragment, end)
                    self._add(offset, stop, rank if offset == start else 0, count_pieces(text[offset:stop]))
            previous_end, previous_word = end, word

    def _add(self, start: int, end: int, rank: int, pieces: int) -> None:
        self.starts.append(start)
        self.ends.append(end)
        self.ranks.append(rank)
        self.pieces.append(self.pieces[-1] + pieces)

    def __len__(self) -> int:
        return len(self.starts)

    def cost(self, first: int, stop: int) -> int:
        """An upper bound of estimate_tokens for units first..stop-1, in O(1).

        Exact for whitespace-separated units (pieces add up); for fragments glued back into a
        word the true count can only be lower (letter runs merge)."""
        chars = self.ends[stop - 1] - self.starts[first]
        return max(1, -(-chars // CHARS_PER_TOKEN), self.pieces[stop] - self.pieces[first])


def _split(text: str, max_tokens: int, overlap_tokens: int) -> list[tuple[int, int]]:
    """Character ranges of the chunks of `text` (rules 3-5 of the module docstring)."""
    units = _Units(text, max_tokens)
    n = len(units)
    ranges: list[tuple[int, int]] = []
    start, first_new = 0, 0
    while True:
        stop = first_new + 1
        while stop < n and units.cost(start, stop + 1) <= max_tokens:
            stop += 1
        if stop == n:
            ranges.append((units.starts[start], units.ends[-1]))
            return ranges
        cut, best_rank = stop, units.ranks[stop]
        for candidate in range(stop - 1, first_new, -1):
            if 2 * units.cost(start, candidate) < max_tokens:
                break
            if units.ranks[candidate] > best_rank:
                cut, best_rank = candidate, units.ranks[candidate]
        ranges.append((units.starts[start], units.ends[cut - 1]))
        start, first_new = _overlap_start(units, start, cut, overlap_tokens, max_tokens), cut


def _overlap_start(units: _Units, chunk_start: int, cut: int, overlap_tokens: int, max_tokens: int) -> int:
    """Where the next chunk starts: up to `overlap_tokens` back from `cut`, never at the last chunk's start."""
    window: list[int] = []
    for first in range(cut - 1, chunk_start, -1):
        if not overlap_tokens or units.cost(first, cut) > overlap_tokens:
            break  # cost only grows going back
        window.append(first)
    # `window` runs backwards, so its last element is the longest overlap.
    sentence_starts = [first for first in window if units.ranks[first] >= 2]
    start = (sentence_starts or window or [cut])[-1]
    # The first new unit must still fit beside the overlap.
    while start < cut and units.cost(start, cut + 1) > max_tokens:
        start += 1
    return start
