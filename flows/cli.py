"""The `indexflow` command: index, plan, query, emulator. Library errors become user messages here only."""

from __future__ import annotations

import os

# Before anything loads LanceDB: its Rust logger warns about its own future defaults on every
# hybrid query, which users cannot act on. An explicit LANCEDB_LOG still wins.
os.environ.setdefault("LANCEDB_LOG", "error")

import asyncio  # noqa: E402
import json as jsonlib  # noqa: E402
import sys  # noqa: E402
from dataclasses import asdict, dataclass  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated, Literal  # noqa: E402

from cyclopts import App, Parameter  # noqa: E402

from indexflow import __version__  # noqa: E402
from indexflow.flows.batches_cli import batches_app  # noqa: E402
from indexflow.tasks.errors import ConfigError, DailyQuotaError, IndexflowError, TableNotFoundError  # noqa: E402

# 0 done; 1 the run or call failed; 2 bad input (an option, a missing corpus, database, table or
# job; cyclopts' own parse errors exit 2 as well); 3 the per-day quota is spent; 130 / 143
# stopped by SIGINT / SIGTERM (what was embedded is kept).
EXIT_OK, EXIT_FAILED, EXIT_CONFIG, EXIT_QUOTA = 0, 1, 2, 3
EXIT_SIGINT, EXIT_SIGTERM = 130, 143

app = App(
    name="indexflow",
    help="Keep a LanceDB vector index of a corpus fresh with Gemini embeddings.\n\n"
    "Without GEMINI_API_KEY every command uses the built-in Gemini API emulator. Errors are one line; "
    "add --debug to any command for the traceback.",
    result_action="return_value",
    # Explicit: cyclopts guesses from the calling module and prints 0.0.0 under `python -m`.
    version=__version__,
)
app.command(batches_app)


@Parameter(name="*")
@dataclass
class TableOptions:
    db: str = ".indexflow/lancedb"
    "LanceDB database URI (a directory, or s3://...)."
    table: str = "corpus"
    "Table name inside the database."


@Parameter(name="*")
@dataclass
class RunOptions:
    tier: Literal["free", "1", "2", "3", "unlimited"] | None = None
    "Quota preset of your Gemini project (default: free with a key, unlimited with the emulator)."
    rpm: int | None = None
    "Requests per minute. With --tier it overrides the tier's; without, --rpm/--tpm/--rpd are your whole quota."
    tpm: int | None = None
    "Tokens per minute (same rule as --rpm: without --tier nothing is taken from a preset)."
    rpd: int | None = None
    "Requests per day (same rule; without --tier and without --rpd there is no per-day cap)."
    rpm_counts: Literal["texts", "calls"] | None = None
    "What one request per minute is: each text of a batch call (the presets) or each call."
    dimensions: int = 768
    "Output dimensionality, 128-3072."
    batch_size: int = 100
    "Texts per embedding call, at most 100."
    concurrency: int = 8
    "Embedding calls in flight at most."
    format: Literal["auto", "dir", "jsonl", "parquet", "csv"] = "auto"
    "Corpus format (auto: by file extension; a directory is read as a tree of files)."
    id_field: str | None = None
    "Record field holding the document id (default: id, then _id)."
    title_field: str = "title"
    "Record field holding the title."
    text_field: str = "text"
    "Record field holding the text."
    max_chunk_tokens: int = 1024
    "Largest chunk, in estimated tokens (the API takes 2,048)."
    delete: bool = True
    "Delete rows of documents that are no longer in the corpus."
    rebuild: bool = False
    "Drop the table and re-embed everything (needed when the recipe changes)."
    retry_failed: bool = False
    "Embed again the chunks in the dead-letter table."
    mode: Literal["online", "batch", "auto"] = "online"
    "Route: the online API, the Batch API at half price, or auto (batch above --batch-threshold chunks)."
    batch_threshold: int | None = None
    "With --mode auto: chunks to embed above which the Batch API is used (default 500)."
    deadline: float | None = None
    "Seconds the run may take; auto mode stays online when a batch job would take longer."
    wait_limit: float | None = None
    "Seconds to wait for batch jobs; then the run ends 'waiting' and the next run collects them."
    priority: int | None = None
    "Batch API job priority: higher runs first among the project's pending jobs (default 0, negative allowed)."
    success_rate_threshold: float | None = None
    "Alert (a log line, the summary, Prefect event indexflow.batch.success-rate-low) when a batch job's success rate falls below this (default 0.95)."
    spill: bool = True
    "Keep each arriving vector in a crash-safe file beside the table until it is committed (a killed run re-pays only its calls in flight)."

    def options(self) -> dict | None:
        extra = {"batch_threshold": self.batch_threshold, "deadline_seconds": self.deadline,
                 "batch_wait_limit_seconds": self.wait_limit, "rpm_counts": self.rpm_counts,
                 "batch_success_rate_threshold": self.success_rate_threshold,
                 "spill_vectors": None if self.spill else False}
        return {k: v for k, v in extra.items() if v is not None} or None

    def flow_params(self, corpus: Path, t: TableOptions) -> dict:
        return dict(
            corpus=str(corpus), table=t.table, db_uri=t.db, mode=self.mode, tier=self.tier,
            dimensions=self.dimensions, batch_size=self.batch_size, concurrency=self.concurrency,
            rpm=self.rpm, tpm=self.tpm, rpd=self.rpd, corpus_format=self.format, id_field=self.id_field,
            title_field=self.title_field, text_field=self.text_field, max_chunk_tokens=self.max_chunk_tokens,
            delete_missing=self.delete, rebuild=self.rebuild, retry_failed=self.retry_failed,
            priority=self.priority, options=self.options(),
        )


def _print_rows(rows: list[dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_header=False)
    for row in rows:
        table.add_row(str(row["metric"]), str(row["value"]))
    Console().print(table)


@app.command
def index(corpus: Path, *, t: TableOptions = TableOptions(), o: RunOptions = RunOptions(),
          json: bool = False, progress_seconds: float = 10.0) -> int:
    """Embed what is new or changed in CORPUS and upsert it into the table; delete what is gone.

    Runs in this process; with PREFECT_API_URL set (or a Prefect profile that sets it) the same
    run is a tracked flow run on that server, with its artifacts. Ctrl-C (or SIGTERM) stops it,
    keeping what was embedded: exit 130 (143 for SIGTERM); the next run resumes.

    Parameters
    ----------
    corpus
        A directory of .txt/.md/.rst/.html files, or a .jsonl, .parquet or .csv file.
    json
        Print the run summary as JSON.
    progress_seconds
        Off a terminal (a log file, a worker), print a progress line this often.
    """
    from indexflow.tasks.prefect_api import prefect_api_configured
    from indexflow.flows.pipeline import settings_from_params
    from indexflow.tasks.report import RunSummary

    api_key = os.environ.get("GEMINI_API_KEY") or None
    base_url = os.environ.get("GOOGLE_GEMINI_BASE_URL") or None
    params = o.flow_params(corpus, t)
    emulated = not api_key and not base_url
    if prefect_api_configured():
        summary = RunSummary.from_dict(_tracked_run(params, emulated, on_interrupt=_stopped))
    else:
        # Validated before anything heavy is imported: a bad option costs a fraction of a second.
        settings = settings_from_params(params, emulator=not api_key)
        if emulated:
            _say_emulator()
        from indexflow.flows.local_run import TerminalHooks, run_local
        from indexflow.tasks.memory import tune_process_memory

        tune_process_memory()  # this process is ours: keep its peak memory flat as the table grows

        result = run_local(settings, api_key=api_key, base_url=base_url,
                           hooks=TerminalHooks(progress_every=progress_seconds, said_endpoint=emulated),
                           on_interrupt=_stopped)
        if result.error is not None:
            raise result.error
        summary = result.summary
    if json:
        from indexflow.tasks.redact import redact

        print(redact(jsonlib.dumps(summary.as_dict(), indent=2, default=str)))
    else:
        _print_rows(summary.rows(), f"indexflow: {t.table}")
        for line in summary.problems[:10]:
            print(f"skipped: {line}", file=sys.stderr)
        for line in summary.failures[:10]:
            print(f"dead-lettered: {line}", file=sys.stderr)
        for line in summary.alerts[:10]:
            print(f"alert: {line}", file=sys.stderr)
        if summary.dead_lettered:
            print(f"{summary.dead_lettered} chunk(s) are in {t.table}__dead_letters; fix the cause, then "
                  "run again with --retry-failed", file=sys.stderr)
    return EXIT_OK


def _say_emulator() -> None:
    print("No GEMINI_API_KEY set: embedding with the built-in Gemini API emulator (lexical vectors, "
          "not Gemini's).", file=sys.stderr)


def _stopped(result, code: int) -> None:
    print(f"stopped: kept {result.summary.chunks_embedded} chunks; run again to resume", file=sys.stderr, flush=True)


def _tracked_run(params: dict, emulated: bool, *, on_interrupt) -> dict:
    """The run as a flow run on the configured Prefect server (its artifacts, its UI).

    A signal ends the flow run Cancelled with what it embedded committed; then `on_interrupt`
    has spoken and this process exits with the signal's code.
    """
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from indexflow.flows.index_corpus import index_corpus, interrupt_report, terminal_echo
    from indexflow.flows.local_run import TerminalHooks

    if emulated:
        _say_emulator()
    stopped: list[int] = []

    def report(result, code: int) -> None:
        stopped.append(code)
        on_interrupt(result, code)

    # What the run logs for people (the plan, the route, waiting for a writer) still reaches the terminal.
    tokens = terminal_echo.set(TerminalHooks(said_endpoint=emulated).info), interrupt_report.set(report)
    try:
        return asyncio.run(index_corpus(**params))
    except BaseException:
        if stopped:  # the flow run ended Cancelled, as asked; its summary was already told
            raise SystemExit(stopped[0]) from None
        raise
    finally:
        terminal_echo.reset(tokens[0])
        interrupt_report.reset(tokens[1])


@app.command
def plan(corpus: Path, *, t: TableOptions = TableOptions(), o: RunOptions = RunOptions(), json: bool = False) -> int:
    """Show what `index` would do — chunks new, changed, stale; tokens; cost and time — without calling the API.

    Parameters
    ----------
    corpus
        A directory of .txt/.md/.rst/.html files, or a .jsonl, .parquet or .csv file.
    json
        Print the plan as JSON.
    """
    from indexflow.flows.pipeline import settings_from_params
    from indexflow.tasks.batch.options import BatchOptions, choose_route
    from indexflow.tasks.plan import plan_run
    from indexflow.tasks.plan import forecast

    settings = settings_from_params(o.flow_params(corpus, t), emulator=not os.environ.get("GEMINI_API_KEY"))
    counts, problems = plan_run(settings)
    fc = forecast(counts.chunks_to_embed, counts.tokens_to_embed, batch_size=settings.batch_size,
                  limits=settings.limits)
    b = BatchOptions.from_settings(settings)
    route = choose_route(settings.mode, counts.chunks_to_embed, threshold=b.threshold,
                         deadline_seconds=b.deadline_seconds, turnaround_seconds=b.turnaround_seconds)
    quota = settings.quota
    out = counts.as_dict() | {"tier": quota.preset, "limits": quota.as_dict(), "route": route,
                              "input_problems": problems.count, "forecast": asdict(fc)}
    if json:
        print(jsonlib.dumps(out, indent=2))
        return EXIT_OK
    eta = "no quota limit" if fc.online_seconds is None else f"{fc.online_seconds:,.0f} s under these limits"
    if fc.days > 1:
        eta += f" ({fc.days} days of per-day quota)"
    rows = [{"metric": k.replace("_", " "), "value": v} for k, v in counts.as_dict().items() if v is not None]
    rows += [
        {"metric": "route", "value": f"{route} (mode {settings.mode})"},
        {"metric": "limits", "value": quota.describe()},
        {"metric": "input problems", "value": problems.count},
        {"metric": "API calls", "value": fc.calls},
        {"metric": "online cost (USD)", "value": f"{fc.online_cost_usd:.6f}"},
        {"metric": "batch cost (USD)", "value": f"{fc.batch_cost_usd:.6f}"},
        {"metric": "online time", "value": eta},
    ]
    _print_rows(rows, f"plan: {corpus} -> {t.table}")
    for sample in problems.samples[:10]:
        print(f"  skipped: {sample}", file=sys.stderr)
    return EXIT_OK


def query_mode(mode: str | None, hybrid: bool) -> str:
    """--mode, with the deprecated --hybrid as its alias; a contradiction is a ConfigError."""
    if hybrid:
        print("indexflow: --hybrid is deprecated; use --mode hybrid", file=sys.stderr)
        if mode not in (None, "hybrid"):
            raise ConfigError(f"--hybrid means --mode hybrid and contradicts --mode {mode}; pass only --mode",
                              mode=mode)
        return "hybrid"
    return mode or "vector"


@app.command
def query(text: str, *, t: TableOptions = TableOptions(),
          k: Annotated[int, Parameter(name=["-k", "--k"])] = 10,
          mode: Literal["vector", "fts", "hybrid"] | None = None,
          hybrid: Annotated[bool, Parameter(negative=())] = False, weights: str | None = None,
          json: bool = False) -> int:
    """Search the index for TEXT and print rank, score, document id, title and a snippet.

    Parameters
    ----------
    text
        The question or keywords.
    k
        How many hits.
    mode
        vector (default: embeds TEXT, one API call), fts (full-text BM25, no API call) or hybrid (both, fused by
        reciprocal rank).
    hybrid
        Deprecated: the same as --mode hybrid.
    weights
        With --mode hybrid: VECTOR,TEXT weights of the two sides in the fusion, e.g. 0.7,0.3 (default 1,1: plain RRF).
    json
        Print hits as JSON (a list; [] when nothing matches).
    """
    from indexflow.tasks.query import query as run_query

    how = query_mode(mode, hybrid)
    if how == "fts":  # nothing to embed: no endpoint, no emulator, no API call
        hits = run_query(text, db_uri=t.db, table=t.table, endpoint=None, k=k, mode="fts", weights=weights)
    else:
        from indexflow.tasks.endpoint import resolve_endpoint

        with resolve_endpoint(os.environ.get("GEMINI_API_KEY"),
                              os.environ.get("GOOGLE_GEMINI_BASE_URL")) as (endpoint, _):
            hits = run_query(text, db_uri=t.db, table=t.table, endpoint=endpoint, k=k, mode=how, weights=weights)
    if json:
        print(jsonlib.dumps([asdict(h) for h in hits], indent=2))
        return EXIT_OK
    from rich.console import Console
    from rich.markup import escape

    console = Console(highlight=False)
    console.print(f"[bold]{len(hits)} hit(s) for {escape(repr(text))} in {escape(t.table)}[/bold]")
    for h in hits:
        title = f" — {escape(h.title)}" if h.title else ""
        console.print(f"[bold]{h.rank:>2}.[/bold] {h.score:.4f}  [cyan]{escape(h.doc_id)}[/cyan]{title}")
        console.print(f"    {escape(h.snippet(200))}")
    return EXIT_OK


@app.command
def emulator() -> int:
    """Run the Gemini API emulator as a server (`indexflow emulator --help` lists its options)."""
    raise AssertionError("handled in main()")  # pragma: no cover


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `indexflow` console script; `--debug` anywhere shows tracebacks."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["emulator"]:
        from indexflow.emulator.cli import main as emulator_main

        return emulator_main(argv[1:], prog="indexflow emulator")
    from indexflow.tasks.redact import redact, remember

    remember(os.environ.get("GEMINI_API_KEY"))  # known from the start: no line of this process repeats it
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        return _run(argv, debug)
    except Exception as exc:
        if debug:
            raise
        print(redact(f"indexflow: unexpected {type(exc).__name__}: {exc} (run again with --debug for the "
                     "traceback, and please report it)"), file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # outside a run (whose own handler exits 130 with its message)
        if debug:
            raise
        print("indexflow: interrupted", file=sys.stderr)
        return EXIT_SIGINT


def _run(argv: list[str], debug: bool) -> int:
    try:
        code = app(argv, exit_on_error=True)
    except SystemExit as exc:  # cyclopts' parse errors (already printed) exit 2 = EXIT_CONFIG
        return exc.code if isinstance(exc.code, int) else EXIT_OK if exc.code is None else EXIT_FAILED
    except IndexflowError as exc:
        if debug:
            raise
        return _report(exc)
    return code if isinstance(code, int) else EXIT_OK


def _report(exc: IndexflowError) -> int:
    """One line (two for a spent daily quota) on stderr, and the exit code of the error's kind."""
    if isinstance(exc, DailyQuotaError):
        print(f"indexflow: stopped, daily quota exhausted: {exc}\nEverything embedded so far is saved; "
              "run the same command again after the quota resets to continue.", file=sys.stderr)
        return EXIT_QUOTA
    print(f"indexflow: {exc}", file=sys.stderr)
    return EXIT_CONFIG if isinstance(exc, (ConfigError, TableNotFoundError)) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
