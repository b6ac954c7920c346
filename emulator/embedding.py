"""The emulator's embedding function and token counter: lexical, deterministic, cheap.

Token count (one approximation, used for the 2,048-token limit, TPM and usage figures):
`count_tokens(text) = max(1, ceil(len(text) / 4))` — Google's rule of thumb for Gemini models
(about four characters per token).

Vectors are NOT Gemini's. They are signed feature hashing of the text's words and word bigrams:
  1. Lowercase; words are runs of letters/digits (`[a-z0-9]+`); a tiny stemmer drops a plural
     trailing "s" (not "ss"/"us"/"is") from words longer than 3 characters; a short list of
     English stop words and one-character words are dropped.
  2. Features: every word (weight 1) and every adjacent pair of kept words (weight 0.5). When the
     task type is RETRIEVAL_DOCUMENT (or unset) and a title is given, the title's words and
     bigrams count as well (Gemini uses the title only for RETRIEVAL_DOCUMENT); no bigram spans
     the title/text boundary.
  3. Term weight is sublinear: `(1 + ln(tf)) * feature weight`, tf counted over title and text.
  4. A word's hash is the first 8 bytes (little-endian) of BLAKE2b(word, digest_size=8); a
     bigram's is a splitmix64 mix of its two word hashes. Each feature lands once in each of
     three bands of the 3,072 dimensions — [0,768), [768,1536), [1536,3072) — at the index and
     sign given by 16 bits of its hash per band (low 15 bits modulo the band width: index; top
     bit: sign), so the recommended prefixes (768, 1,536) see every word. Smaller prefixes keep
     only the words that land below them (128 dims ranks poorly; 768+ is meant).
  5. The 3,072-dim vector is L2-normalized; a smaller `dim` returns its leading prefix WITHOUT
     re-normalizing (like Gemini), so clients must normalize below 3,072.
The task type does not change the vector (queries and documents share one space); the result
is a pure function of (text, title when used), identical across processes and runs. A text
with no kept words embeds as the single feature "<empty>".
"""

from __future__ import annotations

import math
import re
from collections import OrderedDict
from collections.abc import Sequence
from hashlib import blake2b

import numpy as np

FULL_DIM = 3072
BANDS: tuple[tuple[int, int], ...] = ((0, 768), (768, 1536), (1536, 3072))
BIGRAM_WEIGHT = 0.5
TITLE_TASKS = frozenset({"RETRIEVAL_DOCUMENT"})
EMPTY_FEATURE = "<empty>"
_CACHE_SIZE = 1 << 18

_WORD = re.compile(r"[a-z0-9]+")
_STOP_WORDS = frozenset(
    """a an and are as at be been being but by can could did do does for from had has have he her
    his i if in into is it its may might more most no not of on or our she should so such than that
    the their them then there these they this those to was we were what when where which while who
    will with would you your also between both each other after before during over under""".split()
)


def count_tokens(text: str) -> int:
    """Token estimate for `text`: ceil(characters / 4), at least 1."""
    return max(1, math.ceil(len(text) / 4))


def tokenize(text: str) -> list[str]:
    """Lowercased, lightly stemmed words of `text` without stop words (see module docstring)."""
    words = []
    for word in _WORD.findall(text.lower()):
        if len(word) < 2 or word in _STOP_WORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
            word = word[:-1]
        words.append(word)
    return words


class _FeatureHashes:
    """Bounded LRU cache of feature -> 64-bit BLAKE2b hash; hashing dominates otherwise."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._cache: OrderedDict[str, int] = OrderedDict()

    def lookup(self, feature: str) -> int:
        value = self._cache.get(feature)
        if value is not None:
            self._cache.move_to_end(feature)
            return value
        value = int.from_bytes(blake2b(feature.encode("utf-8"), digest_size=8).digest(), "little")
        self._cache[feature] = value
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return value


_HASHES = _FeatureHashes()  # a cache only: results never depend on its contents


_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_BIGRAM_SALT = np.uint64(0xD6E8FEB86659FD93)
_CHUNK_ROWS = 256


def _bigram_hashes(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """A 64-bit hash of the ordered word pair, mixed from the two word hashes (splitmix64 finalizer)."""
    x = (left * _GOLDEN) ^ ((right << np.uint64(1)) | (right >> np.uint64(63))) ^ _BIGRAM_SALT
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _feature_table(segments: list[tuple[int, list[str]]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(row, feature hash, weight) for every distinct feature of every row, sorted by row."""
    lookup = _HASHES.lookup
    rows = np.fromiter((row for row, words in segments for _ in words), dtype=np.int64)
    words = np.fromiter((lookup(w) for _, ws in segments for w in ws), dtype=np.uint64, count=len(rows))
    # segment ids: bigrams never span a title/text boundary or two texts
    seg = np.repeat(np.arange(len(segments)), [len(ws) for _, ws in segments])
    pair = seg[1:] == seg[:-1]
    bigrams = _bigram_hashes(words[:-1][pair], words[1:][pair]) if len(words) > 1 else words[:0]
    all_rows = np.concatenate([rows, rows[:-1][pair]])
    all_hashes = np.concatenate([words, bigrams])
    base = np.concatenate([np.ones(len(words)), np.full(len(bigrams), BIGRAM_WEIGHT)])
    order = np.lexsort((all_hashes, all_rows))
    all_rows, all_hashes, base = all_rows[order], all_hashes[order], base[order]
    starts = np.flatnonzero(
        np.concatenate([[True], (all_rows[1:] != all_rows[:-1]) | (all_hashes[1:] != all_hashes[:-1])])
    )
    tf = np.diff(np.append(starts, len(all_rows)))
    return all_rows[starts], all_hashes[starts], base[starts] * (1.0 + np.log(tf))


def embed_texts(
    texts: Sequence[str],
    dim: int,
    task_type: str | None = None,
    titles: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Lexical embeddings of `texts` as float32 (len(texts), dim); unit length only at dim 3,072."""
    if not 1 <= dim <= FULL_DIM:
        raise ValueError(f"dim must be within 1..{FULL_DIM}, got {dim}")
    if not texts:
        return np.empty((0, dim), dtype=np.float32)
    use_titles = titles is not None and (task_type is None or task_type in TITLE_TASKS)
    segments: list[tuple[int, list[str]]] = []
    for row, text in enumerate(texts):
        words = tokenize(text)
        title_words = tokenize(titles[row]) if use_titles and titles[row] else []
        if not words and not title_words:
            words = [EMPTY_FEATURE]
        segments.append((row, words))
        if title_words:
            segments.append((row, title_words))
    rows, hashes, weights = _feature_table(segments)
    out = np.empty((len(texts), dim), dtype=np.float32)
    bounds = np.searchsorted(rows, np.arange(0, len(texts) + _CHUNK_ROWS, _CHUNK_ROWS))
    for chunk, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        first = chunk * _CHUNK_ROWS
        n = min(_CHUNK_ROWS, len(texts) - first)
        if n <= 0:
            break
        out[first : first + n] = _dense(rows[lo:hi] - first, hashes[lo:hi], weights[lo:hi], n, dim)
    return out


def _dense(rows: np.ndarray, hashes: np.ndarray, weights: np.ndarray, n: int, dim: int) -> np.ndarray:
    flat = rows * FULL_DIM
    matrix = np.zeros(n * FULL_DIM, dtype=np.float64)
    for band, (start, stop) in enumerate(BANDS):
        # 16 bits of the hash per band: the low 15 pick the index, the top one the sign.
        bits = ((hashes >> np.uint64(16 * band)) & np.uint64(0xFFFF)).astype(np.int64)
        index = start + (bits & 0x7FFF) % (stop - start)
        matrix += np.bincount(flat + index, weights=np.where(bits >> 15, -weights, weights), minlength=n * FULL_DIM)
    matrix = matrix.reshape(n, FULL_DIM)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A text whose features cancel exactly (vanishingly rare) would be zero; keep it finite.
    norms[norms == 0] = 1.0
    return matrix[:, :dim] / norms
