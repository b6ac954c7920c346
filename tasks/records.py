"""Record-file readers: JSONL, Parquet and CSV -> `Document`, streamed, with the id/title/text
fields read from each record and every bad record reported and skipped."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from indexflow.tasks.document import Document, Fields, ReadRun
from indexflow.tasks.errors import ConfigError

if TYPE_CHECKING:  # pyarrow is imported by the Parquet and CSV readers only: a JSONL run never loads it
    import pyarrow as pa
    import pyarrow.csv as pa_csv

DATA_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}
DEFAULT_ID_FIELDS = ("id", "_id")  # "_id" makes BEIR's corpus.jsonl work as is
_BATCH_ROWS = 1024
_CSV_BLOCK_BYTES = 4 << 20  # one CSV row must fit in a block; 4 MB bounds memory per batch
_SNIFF_BYTES = 8192


def _record_document(
    record: Mapping[str, object],
    keys: list[str],
    run: ReadRun,
    source: str,
    line: int | None,
    prefix: str,
) -> Document | None:
    """Turn one record into a Document, reporting the first thing wrong with it."""
    fields = run.fields
    doc_id: str | None = None

    def report(reason: str, what: str) -> None:
        run.problem(source, line, reason, what, doc_id=doc_id)

    id_key = fields.id or next((k for k in DEFAULT_ID_FIELDS if k in record), None)
    if id_key is None or id_key not in record or record[id_key] is None:
        wanted = repr(fields.id) if fields.id else "'id' or '_id'"
        report("missing_id", f"record has no {wanted} field (keys: {sorted(keys)}); pass --id-field NAME")
        return None
    raw_id = _decode(record[id_key], "id", report)
    if raw_id is None:
        return None
    if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)) or raw_id == "":
        report("bad_id", f"record id {raw_id!r} is not a non-empty string or integer")
        return None
    doc_id = prefix + str(raw_id)
    if fields.text not in record:
        hint = _text_field_hint(record, fields, id_key)
        report("missing_text", f"record has no {fields.text!r} field (keys: {sorted(keys)}); pass --text-field {hint}")
        return None
    raw_text = record[fields.text]
    text = _decode(raw_text, fields.text, report)
    if isinstance(raw_text, bytes) and text is None:
        return None  # not UTF-8: reported
    if not isinstance(text, str):
        kind = "null" if text is None else type(text).__name__
        report("bad_text", f"field {fields.text!r} is {kind}, not a string")
        return None
    raw_title = record.get(fields.title)
    title = _decode(raw_title, fields.title, report)
    if isinstance(raw_title, bytes) and title is None:
        return None
    if title is None:
        title = ""
    if not isinstance(title, str):
        report("bad_title", f"field {fields.title!r} is {type(title).__name__}, not a string")
        return None
    doc_source = f"{source}:{line}" if line is not None else source
    return run.accept(Document(id=doc_id, title=title, text=text, source=doc_source), source, line)


def _text_field_hint(record: Mapping[str, object], fields: Fields, id_key: str) -> str:
    """The field that most likely holds the text: the longest string value that is not id or title."""
    candidates = [
        (len(value), key)
        for key, value in record.items()
        if isinstance(value, (str, bytes)) and key not in (id_key, fields.title)
    ]
    return max(candidates)[1] if candidates else "NAME"


def _decode(value: object, field: str, report: Callable[[str, str], None]) -> object:
    """Bytes (from CSV) decoded as UTF-8, or None after reporting; any other value unchanged."""
    if not isinstance(value, bytes):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        report("encoding", f"field {field!r} is not valid UTF-8 (byte {error.start})")
        return None


def _read_jsonl(path: Path, prefix: str, run: ReadRun, *, top_level: bool) -> Iterator[Document]:
    source = str(path)
    try:
        handle = open(path, "rb")
    except OSError as error:
        run.problem(source, None, "unreadable", f"cannot open file: {error.strerror or error}")
        return
    with handle:
        try:
            if b"\x00" in handle.peek(_SNIFF_BYTES)[:_SNIFF_BYTES]:
                run.problem(source, None, "binary", "file contains NUL bytes; it is not JSON Lines")
                return
            for line, raw in enumerate(handle, start=1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
                except UnicodeDecodeError as error:
                    run.problem(source, line, "encoding", f"line is not valid UTF-8 (byte {error.start} of the line)")
                    continue
                try:
                    record = orjson.loads(text)
                except orjson.JSONDecodeError as error:
                    run.problem(source, line, "malformed", f"line is not valid JSON ({error})")
                    continue
                if not isinstance(record, dict):
                    run.problem(source, line, "malformed", f"line is a JSON {type(record).__name__}, not an object")
                    continue
                doc = _record_document(record, list(record), run, source, line, prefix)
                if doc is not None:
                    yield doc
        except OSError as error:
            run.problem(source, None, "unreadable", f"read failed: {error.strerror or error}")


def _columns(names: list[str], run: ReadRun, source: str, top_level: bool) -> list[str] | None:
    """The id, text and (if present) title columns to read; None after reporting a missing one."""
    fields = run.fields
    id_col = fields.id or next((n for n in DEFAULT_ID_FIELDS if n in names), None)
    missing: list[tuple[str, str]] = []
    if id_col is None or id_col not in names:
        wanted = repr(fields.id) if fields.id else "'id' or '_id'"
        missing.append(("missing_id", f"no {wanted} column (columns: {names}); pass --id-field NAME"))
    if fields.text not in names:
        missing.append(("missing_text", f"no {fields.text!r} column (columns: {names}); pass --text-field NAME"))
    if missing:
        reason, what = missing[0]
        if top_level:
            # The whole corpus would be skipped: this is a wrong setting, not a bad item.
            raise ConfigError(f"{source}: {what}", path=source, reason=reason, columns=names)
        run.problem(source, None, reason, what + "; file skipped")
        return None
    return [id_col, fields.text] + ([fields.title] if fields.title in names and fields.title != fields.text else [])


def _rows(batch: pa.RecordBatch, columns: list[str]) -> Iterator[dict[str, object]]:
    values = [batch.column(name).to_pylist() for name in columns]
    for row in zip(*values):
        yield dict(zip(columns, row))


def _read_table(
    batches: Iterator[pa.RecordBatch],
    columns: list[str],
    names: list[str],
    source: str,
    prefix: str,
    run: ReadRun,
) -> Iterator[Document]:
    import pyarrow as pa

    row = 0
    try:
        for batch in batches:
            for record in _rows(batch, columns):
                row += 1
                doc = _record_document(record, names, run, source, row, prefix)
                if doc is not None:
                    yield doc
    except (pa.ArrowException, OSError, UnicodeDecodeError) as error:
        run.problem(source, row + 1, "unreadable", f"read failed after record {row}: {error}; rest of file skipped")


def _read_parquet(path: Path, prefix: str, run: ReadRun, *, top_level: bool) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(path)
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except (pa.ArrowException, OSError) as error:
        return _report_unreadable(run, source, f"cannot open Parquet file: {error}")
    columns = _columns(names, run, source, top_level)
    if columns is None:
        return iter(())
    batches = parquet.iter_batches(batch_size=_BATCH_ROWS, columns=columns)
    return _read_table(batches, columns, names, source, prefix, run)


def _read_csv(path: Path, prefix: str, run: ReadRun, *, top_level: bool) -> Iterator[Document]:
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    source = str(path)
    # A Python file object, not a path: given a path, Arrow reads ahead as fast as the disk allows
    # and buffers most of the file; through a Python file it reads one block per batch.
    read_options = pa_csv.ReadOptions(block_size=_CSV_BLOCK_BYTES, use_threads=False)
    try:
        # A first open only to learn the header; types are then fixed below so inference can't fail later.
        with open(path, "rb") as raw, pa_csv.open_csv(
            raw,
            read_options=read_options,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=lambda row: "skip"),
        ) as header:
            names = header.schema.names
    except (pa.ArrowException, OSError) as error:
        return _report_unreadable(run, source, f"cannot read CSV file: {error}")
    columns = _columns(names, run, source, top_level)
    if columns is None:
        return iter(())

    def skip_row(row: pa_csv.InvalidRow) -> str:
        snippet = row.text if len(row.text) <= 80 else row.text[:77] + "..."
        run.problem(
            source,
            row.number,
            "malformed",
            f"CSV row has {row.actual_columns} columns, expected {row.expected_columns}: {snippet!r}",
        )
        return "skip"

    def batches() -> Iterator[pa.RecordBatch]:
        # Bytes, not strings: invalid UTF-8 in one value is then that row's problem, not the file's.
        with open(path, "rb") as raw, pa_csv.open_csv(
            raw,
            read_options=read_options,
            parse_options=pa_csv.ParseOptions(newlines_in_values=True, invalid_row_handler=skip_row),
            convert_options=pa_csv.ConvertOptions(
                include_columns=columns, column_types={name: pa.binary() for name in columns}
            ),
        ) as reader:
            yield from reader

    return _read_table(batches(), columns, names, source, prefix, run)


def _report_unreadable(run: ReadRun, source: str, what: str) -> Iterator[Document]:
    run.problem(source, None, "unreadable", what)
    return iter(())


# The reader of each record format: (path, id prefix, run, *, top_level) -> documents.
READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "csv": _read_csv}
