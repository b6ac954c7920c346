"""Fault injection for online embedding calls: a script ("the next 3 calls get 503") and seeded rates.

Kinds (emulator.config.FAULT_KINDS) and what a client sees:
  "500"          500 INTERNAL, Google's body
  "503"          503 UNAVAILABLE "The model is overloaded. Please try again later."
  "429"          429 RESOURCE_EXHAUSTED without details (no QuotaFailure, no RetryInfo)
  "hang"         no answer until the client gives up (or `hang_seconds` pass: then 504)
  "drop"         headers and part of the body, then the connection closes
  "malformed"    200 with a body that is not valid JSON
  "wrong_count"  200 with one embedding fewer than the texts sent
  "drip"         200 with the right answer, its body trickling in over `drip_seconds` (no read
                 waits long: only a deadline on the whole call ends it early)
  "quote_key"    403 PERMISSION_DENIED whose message quotes the API key the request carried,
                 as some gateways do (a client must not repeat it anywhere)
The script is consumed first, one call per unit of `count`; otherwise one seeded draw per call
picks at most one kind by its rate (rates should sum to at most 1).

A script entry may name a `target`: "embed" (the default: batchEmbedContents / embedContent) or
"batch_create" (asyncBatchEmbedContent). At batch creation 500, 503 and 429 refuse the call and
create nothing; "drop" and "hang" CREATE the job and then lose the answer — the window in which a
client that simply retries pays twice. Rates apply to embedding calls only.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterable, Mapping

from .config import FAULT_KINDS

TARGETS = ("embed", "batch_create")


def _check_kind(kind: str) -> str:
    if kind not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {kind!r}; use one of {', '.join(FAULT_KINDS)}")
    return kind


def parse_script_spec(spec: str) -> dict:
    """`"503x3"` -> {"kind": "503", "count": 3, "target": "embed"}; `"batch_create:dropx1"` aims at batch creation."""
    target, _, rest = spec.rpartition(":")
    kind, _, count = rest.partition("x")  # no fault kind contains an "x"
    if (count and not count.isdigit()) or (target and target not in TARGETS):
        raise ValueError(f"fault script {spec!r} must look like [TARGET:]KIND[xCOUNT], e.g. 503x3 or "
                         f"batch_create:drop (targets: {', '.join(TARGETS)})")
    return {"kind": _check_kind(kind), "count": int(count) if count else 1, "target": target or "embed"}


def parse_rate_spec(spec: str) -> tuple[str, float]:
    """`"503=0.05"` -> ("503", 0.05)."""
    kind, sep, rate = spec.partition("=")
    if not sep:
        raise ValueError(f"fault rate {spec!r} must look like KIND=PROBABILITY, e.g. 503=0.05")
    value = float(rate)
    if not 0 <= value <= 1:
        raise ValueError(f"fault rate {spec!r}: probability must be within 0..1")
    return _check_kind(kind), value


class FaultInjector:
    """Decides, call by call, which fault (if any) an online call gets."""

    def __init__(self, rates: Mapping[str, float] | None = None, seed: int = 0) -> None:
        self._lock = threading.Lock()
        self._script: list[dict] = []
        self._rates: dict[str, float] = {}
        self._seed = seed
        self._rng = random.Random(seed)
        self.set(rates=rates or {})

    def set(
        self,
        script: Iterable[Mapping] | None = None,
        rates: Mapping[str, float] | None = None,
        seed: int | None = None,
        clear: bool = False,
    ) -> None:
        """Clear (first, if asked), then append `script` entries, replace `rates`, re-seed."""
        entries = [{"kind": _check_kind(str(e["kind"])), "count": int(e.get("count", 1)),
                    "target": str(e.get("target", "embed"))} for e in script or []]
        if any(e["count"] < 1 for e in entries):
            raise ValueError("a fault script entry needs count >= 1")
        if any(e["target"] not in TARGETS for e in entries):
            raise ValueError(f"a fault script entry's target must be one of {', '.join(TARGETS)}")
        checked = {_check_kind(str(k)): float(v) for k, v in (rates or {}).items()}
        if any(not 0 <= v <= 1 for v in checked.values()) or sum(checked.values()) > 1 + 1e-9:
            raise ValueError(f"fault rates must be probabilities summing to at most 1, got {checked}")
        with self._lock:
            if clear:
                self._script.clear()
                self._rates = {}
            self._script.extend(entries)
            if rates is not None:
                self._rates = checked
            if seed is not None:
                self._seed = seed
                self._rng = random.Random(seed)

    def next_fault(self, target: str = "embed") -> str | None:
        """The fault for the next call to `target`: its first script entry, else (embed) a seeded draw."""
        with self._lock:
            head = next((e for e in self._script if e["target"] == target), None)
            if head is not None:
                head["count"] -= 1
                if head["count"] == 0:
                    self._script.remove(head)
                return head["kind"]
            if target != "embed" or not self._rates:
                return None
            draw = self._rng.random()
            for kind in FAULT_KINDS:
                rate = self._rates.get(kind, 0.0)
                if draw < rate:
                    return kind
                draw -= rate
            return None

    def snapshot(self) -> dict:
        with self._lock:
            return {"script": [dict(e) for e in self._script], "rates": dict(self._rates), "seed": self._seed}
