"""Redaction by value: a remembered key is hidden whole or in pieces, in any shape; patterns second."""

from __future__ import annotations

import pickle

import pytest

from indexflow.tasks import redact as redaction
from indexflow.tasks.errors import AuthError, IndexflowError
from indexflow.tasks.redact import MASK, redact, remember

KEY = "gw-7Hq2Lp9Xv4Tz8Rk3Mn6Bd1"  # not Google-shaped: no pattern would catch it


@pytest.fixture(autouse=True)
def no_keys():
    redaction.forget_all()
    yield
    redaction.forget_all()


def test_patterns_hide_keys_in_urls_headers_and_bare_google_keys():
    text = "GET https://x/v1/models?key=AIzaSECRET123&alt=json x-goog-api-key: abc123 AIzaSyABCDEFGHIJKLMNOPQRSTUVWX"
    clean = redact(text)
    assert "AIzaSECRET123" not in clean and "abc123" not in clean and "AIzaSyABCDEFGHIJKLMNOPQRSTUVWX" not in clean
    assert "alt=json" in clean


def test_a_remembered_key_is_hidden_whatever_surrounds_it():
    quoted = f"API key {KEY!r} is not authorized; caller={KEY}; <b>{KEY}</b>"
    assert KEY in redact(quoted)  # nothing to go on before it is remembered
    remember(KEY)
    clean = redact(quoted)
    assert KEY not in clean and clean == f"API key '{MASK}' is not authorized; caller={MASK}; <b>{MASK}</b>"


def test_a_long_enough_piece_of_the_key_is_hidden_too_a_short_one_is_left():
    remember(KEY)
    masked_by_a_gateway = f"key {KEY[:4]}****{KEY[8:]} rejected"
    clean = redact(masked_by_a_gateway)
    assert KEY[8:] not in clean and clean == f"key {KEY[:4]}****{MASK} rejected"
    assert redact(f"id {KEY[:6]} ok") == f"id {KEY[:6]} ok"  # 6 characters are not the key


def test_ordinary_text_is_left_alone():
    remember(KEY)
    for text in ("indexflow: cannot write the database 'db'", "Plan: 3 chunk(s) to embed", "", "x"):
        assert redact(text) == text


def test_errors_are_redacted_when_they_are_made_and_stay_so_through_pickle():
    remember(KEY)
    error = AuthError(f"403 PERMISSION_DENIED: API key '{KEY}' is not authorized", status=403, body=f"k={KEY}")
    assert KEY not in str(error) and KEY not in error.body and KEY not in repr(error.facts)
    again = pickle.loads(pickle.dumps(error))
    assert KEY not in str(again) and isinstance(again, IndexflowError)
    error.add_facts(detail=KEY)
    assert error.detail == MASK


def test_short_keys_are_hidden_whole_only():
    remember("s3cr3t-9")
    assert redact("the key s3cr3t-9 was refused") == f"the key {MASK} was refused"
    remember("k")  # too short to hide without hiding letters
    assert redact("keep kind") == "keep kind"


def test_the_logging_net_redacts_messages_and_tracebacks_of_other_peoples_exceptions():
    import io
    import logging

    from indexflow.tasks.redact import RedactingFilter

    remember(KEY)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test-redact-net")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logger.warning("gateway said %s", f"bad key {KEY}")
        try:
            raise RuntimeError(f"library error quoting {KEY}")
        except RuntimeError:
            logger.exception("unexpected")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert KEY not in text and KEY[8:] not in text
    assert "gateway said bad key ***" in text and "RuntimeError: library error quoting ***" in text
