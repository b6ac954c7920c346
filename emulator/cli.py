"""`python -m indexflow.emulator` / `indexflow emulator`: start the Gemini API emulator in the foreground."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .config import TIER_PRESETS, BatchConfig, EmulatorConfig
from .faults import FaultInjector, parse_rate_spec, parse_script_spec
from .server import serve

log = logging.getLogger("emulator")


def build_parser(prog: str = "python -m indexflow.emulator") -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Local Gemini embeddings API emulator (lexical vectors, not Gemini's).")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default loopback)")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--tier", choices=sorted(TIER_PRESETS), default="unlimited", help="limit preset")
    p.add_argument("--rpm", type=int, help="requests per minute (overrides the tier)")
    p.add_argument("--tpm", type=int, help="tokens per minute (overrides the tier)")
    p.add_argument("--rpd", type=int, help="requests per day (overrides the tier)")
    p.add_argument("--rpm-counts", choices=("texts", "calls"), help="what RPM counts (free tier: texts)")
    p.add_argument("--max-concurrent", type=int, help="calls in flight before 503 overloaded")
    p.add_argument("--latency-base-ms", type=float, default=0.0)
    p.add_argument("--latency-per-text-ms", type=float, default=0.0)
    p.add_argument("--latency-jitter-ms", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="seed of fault draws and latency jitter")
    p.add_argument("--fault", action="append", default=[], metavar="KIND=RATE",
                   help="random fault per call, e.g. 503=0.05 (repeatable)")
    p.add_argument("--fault-script", action="append", default=[], metavar="[TARGET:]KINDxCOUNT",
                   help="the next calls' faults in order, e.g. 503x3, or batch_create:drop for job creation (repeatable)")
    p.add_argument("--hang-seconds", type=float, default=600.0)
    p.add_argument("--drip-seconds", type=float, default=75.0,
                   help="how long a 'drip' fault's answer takes to arrive, in small pieces")
    p.add_argument("--api-key", action="append", default=[], help="accepted key (repeatable; default emulator-key)")
    p.add_argument("--state-dir", type=Path, help="keep batch jobs and files here across restarts")
    p.add_argument("--batch-pending-seconds", type=float)
    p.add_argument("--batch-running-seconds", type=float)
    p.add_argument("--batch-item-failure-rate", type=float)
    p.add_argument("--batch-paused", action="store_true", default=None,
                   help="start with the batch queue paused: jobs stay PENDING until an admin call lifts it")
    p.add_argument("--batch-max-running", type=int, metavar="N",
                   help="at most N batch jobs RUNNING at once; the rest wait PENDING, highest priority first")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning", "error"))
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The EmulatorConfig the options describe; ValueError names a bad option."""
    limit_changes = {
        name: value
        for name, value in (("rpm", args.rpm), ("tpm", args.tpm), ("rpd", args.rpd),
                            ("rpm_counts", args.rpm_counts), ("max_concurrent_calls", args.max_concurrent))
        if value is not None
    }
    limits = TIER_PRESETS[args.tier].model_copy(update=limit_changes)
    batch_changes = {
        name: value
        for name, value in (("pending_seconds", args.batch_pending_seconds),
                            ("running_seconds", args.batch_running_seconds),
                            ("item_failure_rate", args.batch_item_failure_rate),
                            ("paused", args.batch_paused),
                            ("max_running", args.batch_max_running))
        if value is not None
    }
    batch = BatchConfig.model_validate({**BatchConfig().model_dump(), **batch_changes})
    rates = dict(parse_rate_spec(spec) for spec in args.fault)
    FaultInjector(rates)  # validates the sum of the rates
    return EmulatorConfig(
        api_keys=tuple(args.api_key) or ("emulator-key",),
        limits=limits,
        latency_base_ms=args.latency_base_ms,
        latency_per_text_ms=args.latency_per_text_ms,
        latency_jitter_ms=args.latency_jitter_ms,
        seed=args.seed,
        fault_rates=rates,
        hang_seconds=args.hang_seconds,
        drip_seconds=args.drip_seconds,
        batch=batch,
        state_dir=args.state_dir,
    )


def main(argv: list[str] | None = None, prog: str = "python -m indexflow.emulator") -> int:
    """Parse options, print what to export, serve until Ctrl-C; returns the exit status."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
        script = [parse_script_spec(spec) for spec in args.fault_script]
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=args.log_level.upper(), format="%(message)s")
    host = f"[{args.host}]" if ":" in args.host else args.host
    base_url = f"http://{host}:{args.port}"
    log.info("Gemini API emulator (lexical vectors, not Gemini's) on %s, limits: %s", base_url,
             config.limits.model_dump(exclude_none=True))
    log.info("Point google-genai at it:\n  export GOOGLE_GEMINI_BASE_URL=%s\n  export GEMINI_API_KEY=%s",
             base_url, config.api_keys[0] if config.api_keys == ("emulator-key",) else "<one of your --api-key values>")
    serve(config, args.host, args.port, log_level=args.log_level, fault_script=script)
    return 0
