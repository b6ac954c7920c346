"""Redaction by value: the API keys this process uses never leave it, whatever text carries them.

A server or gateway may quote the caller's key in an error message, whole or in part, and in any
shape (not only Google's `AIza…`). Every key the process is handed is remembered here; `redact`
replaces any run of at least `MIN_RUN` of its characters, then the patterns of keys in general
as a second net. Errors (`IndexflowError`), server texts that are stored (batch item errors) and
the CLI's last-resort message go through it.
"""

from __future__ import annotations

import logging
import re
import threading

MIN_RUN = 16  # a quoted run this long of a key is the key: shorter runs occur in names (indexflow-wr...)
MIN_KEY = 8  # shorter "keys" (a test's "k") would redact ordinary words; shorter than MIN_RUN: whole only

_PATTERNS = (
    re.compile(r"(?i)(key=)[^&\s'\"]+"),
    re.compile(r"(?i)(x-goog-api-key['\"]?\s*[:=]\s*['\"]?)[^\s'\",}]+"),
    re.compile(r"()AIza[0-9A-Za-z_\-]{20,}"),
)
MASK = "***"

_lock = threading.Lock()
_keys: tuple[str, ...] = ()
_grams: dict[str, int] = {}  # every MIN_RUN-long piece of a key -> how many keys hold it


def remember(key: str | None) -> None:
    """From now on, `redact` hides `key` (and any long enough piece of it)."""
    global _keys
    if not key or len(key) < MIN_KEY:
        return
    with _lock:
        if key in _keys:
            return
        _keys = (*_keys, key)
        for i in range(len(key) - MIN_RUN + 1):
            _grams[key[i:i + MIN_RUN]] = _grams.get(key[i:i + MIN_RUN], 0) + 1


def redact(text: str) -> str:
    """`text` with every remembered key, whole or any piece of MIN_RUN+ characters, and key-like patterns masked."""
    for key in _keys:
        text = text.replace(key, MASK)
    if _grams and len(text) >= MIN_RUN:
        text = _mask_pieces(text)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + MASK, text)
    return text


def _mask_pieces(text: str) -> str:
    # A piece of a key that is MIN_RUN+ characters long is a chain of overlapping key grams:
    # mark every character a gram covers, then mask each marked run once.
    grams = _grams
    covered = bytearray(len(text))
    for i in range(len(text) - MIN_RUN + 1):
        if text[i:i + MIN_RUN] in grams:
            covered[i:i + MIN_RUN] = b"\x01" * MIN_RUN
    if not any(covered):
        return text
    out, i = [], 0
    while i < len(text):
        if covered[i]:
            while i < len(text) and covered[i]:
                i += 1
            out.append(MASK)
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def forget_all() -> None:
    """Drop every remembered key (tests, and a process that switches keys)."""
    global _keys
    with _lock:
        _keys = ()
        _grams.clear()


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's message and traceback text (the net under the nets:
    a library's own log line or a traceback of someone else's exception)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not _keys:
            return True
        message = record.getMessage()
        masked = redact(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info:
            text = logging.Formatter().formatException(record.exc_info)
            masked = redact(text)
            if masked != text:  # formatted once, here: the raw exception would print the key
                record.exc_text, record.exc_info = masked, None
        return True


_FILTER = RedactingFilter()
# The loggers a run writes through: the root's handlers (a terminal, a file), Prefect's console
# and API handlers (which ship run logs to the server).
GUARDED_LOGGERS = ("", "prefect", "prefect.flow_runs", "prefect.task_runs", "indexflow")


def guard_logging() -> None:
    """Put the redacting filter on every handler of GUARDED_LOGGERS (idempotent; call once handlers exist)."""
    for name in GUARDED_LOGGERS:
        for handler in logging.getLogger(name).handlers:
            if _FILTER not in handler.filters:
                handler.addFilter(_FILTER)
