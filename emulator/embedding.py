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
     bigrams are added as well, as Gemini uses the title only for RETRIEVAL_DOCUMENT.
  3. Term weight is sublinear: `1 + ln(tf)`, times the feature weight.
  4. Each feature lands once in each of four bands of the 3,072 dimensions — [0,128), [128,768),
     [768,1536), [1536,3072) — at an index and sign taken from the BLAKE2b digest of the feature,
     so every Matryoshka prefix of 128, 768 or 1,536 dimensions still sees every word.
  5. The 3,072-dim vector is L2-normalized; a smaller `dim` returns its leading prefix WITHOUT
     re-normalizing (like Gemini), so clients must normalize below 3,072.
The task type does not change the vector (queries and documents share one space); it is a pure
function of (text, title if used), identical across processes and runs. A text with no kept
words maps to a fixed unit vector derived from the feature "<empty>".
"""

from __future__ import annotations

import math
import re
from collections import Counter, OrderedDict
from collections.abc import Sequence
from hashlib import blake2b

import numpy as np

FULL_DIM = 3072
BANDS: tuple[tuple[int, int], ...] = ((0, 128), (128, 768), (768, 1536), (1536, 3072))
BIGRAM_WEIGHT = 0.5
TITLE_TASKS = frozenset({"RETRIEVAL_DOCUMENT"})
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


class _FeatureTable:
    """Bounded LRU cache of feature -> (band indices, signs); hashing dominates otherwise."""

    def __init__(self, size: int = _CACHE_SIZE) -> None:
        self._size = size
        self._cache: OrderedDict[str, tuple[tuple[int, ...], tuple[float, ...]]] = OrderedDict()

    def lookup(self, feature: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        hit = self._cache.get(feature)
        if hit is not None:
            self._cache.move_to_end(feature)
            return hit
        digest = blake2b(feature.encode("utf-8"), digest_size=4 * len(BANDS)).digest()
        indices, signs = [], []
        for band, (start, stop) in enumerate(BANDS):
            value = int.from_bytes(digest[4 * band : 4 * band + 4], "little")
            indices.append(start + (value & 0x7FFFFFFF) % (stop - start))
            signs.append(-1.0 if value >> 31 else 1.0)
        entry = (tuple(indices), tuple(signs))
        self._cache[feature] = entry
        if len(self._cache) > self._size:
            self._cache.popitem(last=False)
        return entry


_FEATURES = _FeatureTable()  # a cache only: results never depend on its contents


def _features(words: list[str]) -> Counter[str]:
    weights: Counter[str] = Counter()
    counts = Counter(words)
    counts.update(f"{a} {b}" for a, b in zip(words, words[1:]))
    for feature, tf in counts.items():
        weight = BIGRAM_WEIGHT if " " in feature else 1.0
        weights[feature] = weight * (1.0 + math.log(tf))
    return weights


def embed_texts(
    texts: Sequence[str],
    dim: int,
    task_type: str | None = None,
    titles: Sequence[str | None] | None = None,
) -> np.ndarray:
    """Lexical embeddings of `texts` as float32 (len(texts), dim); unit length only at dim 3,072."""
    if not 1 <= dim <= FULL_DIM:
        raise ValueError(f"dim must be within 1..{FULL_DIM}, got {dim}")
    use_titles = titles is not None and (task_type is None or task_type in TITLE_TASKS)
    rows: list[int] = []
    cols: list[int] = []
    vals: list[float] = []
    for row, text in enumerate(texts):
        words = tokenize(text)
        weights = _features(words)
        if use_titles and titles[row]:
            weights.update(_features(tokenize(titles[row])))
        if not weights:
            weights = Counter({"<empty>": 1.0})
        for feature, weight in weights.items():
            indices, signs = _FEATURES.lookup(feature)
            for index, sign in zip(indices, signs):
                rows.append(row)
                cols.append(index)
                vals.append(sign * weight)
    n = len(texts)
    flat = np.asarray(rows, dtype=np.int64) * FULL_DIM + np.asarray(cols, dtype=np.int64)
    dense = np.bincount(flat, weights=np.asarray(vals, dtype=np.float64), minlength=n * FULL_DIM)
    matrix = dense.reshape(n, FULL_DIM)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    # A text whose features cancel exactly (vanishingly rare) would be zero; keep it finite.
    norms[norms == 0] = 1.0
    return (matrix[:, :dim] / norms[:, :1]).astype(np.float32)
