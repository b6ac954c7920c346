"""Corpus readers: directory trees, JSONL, Parquet and CSV -> a stream of `Document`.

`read_corpus` streams: files are visited one at a time, JSONL line by line, Parquet and CSV in
Arrow record batches, so memory does not grow with the corpus. The one thing kept for the whole
run is the set of document ids already seen (to report duplicates): about 100 bytes per
document, never the text.

Bad input never stops a run: it is handed to `on_problem` as an `InputError` and skipped. Its
facts: `source` (the file), `line` (line of a JSONL file, 1-based record number of a CSV or
Parquet file, or None), `reason` (one of `REASONS`) and `doc_id` (the document's id when it is
known — a text file, a record whose id was read — so the caller can keep that document's old
rows; else None). Only a problem with the corpus as a whole (missing path, unknown format, a
CSV/Parquet corpus without the id or text column) raises `ConfigError`.

Directory trees: `.txt .md .markdown .rst .html .htm` files are one document each, id = path
relative to the corpus root (posix). `.jsonl .ndjson .parquet .csv` files inside the tree are read
with their reader and their record ids are prefixed with the file's relative path and "/"
(`faq/items.jsonl/42`), which keeps ids unique across files. Other files, and names starting
with ".", are skipped without a problem report. Traversal is sorted and stable: a directory's
files by name, then its subdirectories by name (os.walk order); symlinked directories are not
followed.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq

from tasks.errors import ConfigError, InputError

log = logging.getLogger(__name__)

ProblemHandler = Callable[[InputError], None]

REASONS = (
    "unreadable",  # the file cannot be opened or read (permissions, I/O error, corrupt Parquet)
    "binary",  # NUL bytes: not a text file
    "encoding",  # not valid UTF-8
    "malformed",  # a JSONL line that is not a JSON object, a CSV row with the wrong column count
    "missing_id",  # a record without the id field
    "bad_id",  # an id that is empty or not a string/integer
    "missing_text",  # a record without the text field
    "bad_text",  # text that is not a string
    "bad_title",  # title that is neither a string nor null
    "empty",  # text that is empty or whitespace only
    "duplicate_id",  # an id already read earlier in this corpus; the first one wins
)

TEXT_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".rst", ".html", ".htm"})
DATA_FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".csv": "csv"}
DEFAULT_ID_FIELDS = ("id", "_id")  # "_id" makes BEIR's corpus.jsonl work as is
_BATCH_ROWS = 1024
_CSV_BLOCK_BYTES = 4 << 20  # one CSV row must fit in a block; 4 MB bounds memory per batch
_SNIFF_BYTES = 8192


@dataclass(frozen=True, slots=True)
class Document:
    """One source document, as read; `source` says where it came from (path, and line if any)."""

    id: str
    title: str
    text: str
    source: str


@dataclass(frozen=True, slots=True)
class _Fields:
    id: str | None
    title: str
    text: str


class _Run:
    """What one `read_corpus` call shares across files: the problem handler and the ids seen."""

    def __init__(self, fields: _Fields, on_problem: ProblemHandler) -> None:
        self.fields = fields
        self._on_problem = on_problem
        self._seen: set[str] = set()

    def problem(self, source: str, line: int | None, reason: str, what: str, doc_id: str | None = None) -> None:
        where = f"{source}:{line}" if line is not None else source
        error = InputError(f"{where}: {what}", source=source, line=line, reason=reason, doc_id=doc_id)
        self._on_problem(error)

    def accept(self, doc: Document, source: str, line: int | None) -> Document | None:
        """Check what every reader needs of a document; report and drop it otherwise."""
        if not doc.text.strip():
            self.problem(source, line, "empty", f"document {doc.id!r} has empty text; skipped", doc.id)
            return None
        if "\x00" in doc.text:
            self.problem(source, line, "binary", f"document {doc.id!r} contains NUL characters; skipped", doc.id)
            return None
        if doc.id in self._seen:
            what = f"duplicate document id {doc.id!r}; the first one is kept, this one skipped"
            self.problem(source, line, "duplicate_id", what)
            return None
        self._seen.add(doc.id)
        return doc


def read_corpus(
    path: Path | str,
    *,
    format: str = "auto",
    id_field: str | None = None,
    title_field: str = "title",
    text_field: str = "text",
    on_problem: ProblemHandler,
) -> Iterator[Document]:
    """Stream the documents of a directory tree or a JSONL/Parquet/CSV file; bad items go to `on_problem`.

    Raises ConfigError at once for a missing path, an unknown format, or a Parquet/CSV corpus that
    lacks the id or text column (so a wrong --text-field fails before the run starts); reading
    happens as the result is iterated.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"corpus path {str(path)!r} does not exist; pass a directory or a .jsonl/.parquet/.csv file", path=str(path)
        )
    kind = _resolve_format(path, format)
    run = _Run(_Fields(id_field, title_field, text_field), on_problem)
    if kind == "dir":
        return _read_tree(path, run)
    if kind == "file":
        return _read_text_file(path, path.name, run)
    return _READERS[kind](path, "", run, top_level=True)


def _resolve_format(path: Path, format: str) -> str:
    if format == "auto":
        if path.is_dir():
            return "dir"
        suffix = path.suffix.lower()
        if suffix in DATA_FORMATS:
            return DATA_FORMATS[suffix]
        if suffix in TEXT_SUFFIXES:
            return "file"
        raise ConfigError(
            f"{path}: cannot tell the corpus format from the suffix {suffix!r}; "
            "pass --format jsonl|parquet|csv, or point at a directory",
            path=str(path),
            format=format,
        )
    if format == "dir":
        if not path.is_dir():
            raise ConfigError(f"{path}: --format dir needs a directory", path=str(path), format=format)
        return "dir"
    if format in ("jsonl", "parquet", "csv"):
        if path.is_dir():
            raise ConfigError(
                f"{path}: --format {format} needs a file, not a directory (use dir or auto)",
                path=str(path),
                format=format,
            )
        return format
    raise ConfigError(
        f"unknown corpus format {format!r}; use auto, dir, jsonl, parquet or csv", path=str(path), format=format
    )


# ---------------------------------------------------------------- directory trees


def _read_tree(root: Path, run: _Run) -> Iterator[Document]:
    for file, rel in _walk(root, run):
        suffix = file.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            yield from _read_text_file(file, rel, run)
        elif suffix in DATA_FORMATS:
            yield from _READERS[DATA_FORMATS[suffix]](file, rel + "/", run, top_level=False)
        else:
            log.debug("skipping %s: not a corpus file type", file)


def _walk(root: Path, run: _Run) -> Iterator[tuple[Path, str]]:
    """Files under `root` in sorted order with their posix path relative to it; dot names skipped."""

    def report(error: OSError) -> None:
        run.problem(str(error.filename or root), None, "unreadable", f"cannot list directory: {error.strerror}")

    # Symlinked directories are not followed: a link back up the tree would loop forever.
    for dirpath, dirnames, filenames in os.walk(root, onerror=report):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        base = Path(dirpath)
        for name in sorted(filenames):
            if not name.startswith("."):
                file = base / name
                yield file, file.relative_to(root).as_posix()


def _read_text_file(file: Path, doc_id: str, run: _Run) -> Iterator[Document]:
    source = str(file)
    text = _read_text(file, source, doc_id, run)
    if text is None:
        return
    title, body = _title_and_body(file.suffix.lower(), text, file.stem)
    doc = run.accept(Document(id=doc_id, title=title, text=body, source=source), source, None)
    if doc is not None:
        yield doc


def _read_text(file: Path, source: str, doc_id: str, run: _Run) -> str | None:
    try:
        data = file.read_bytes()
    except OSError as error:
        run.problem(source, None, "unreadable", f"cannot read file: {error.strerror or error}", doc_id)
        return None
    if b"\x00" in data:
        run.problem(source, None, "binary", "file contains NUL bytes; it is not text", doc_id)
        return None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        what = f"not valid UTF-8 (byte {error.start}); convert the file to UTF-8"
        run.problem(source, line, "encoding", what, doc_id)
        return None


def _title_and_body(suffix: str, text: str, stem: str) -> tuple[str, str]:
    if suffix in (".html", ".htm"):
        extractor = _HTMLText()
        extractor.feed(text)
        extractor.close()
        return extractor.title() or stem, extractor.text()
    if suffix in (".md", ".markdown"):
        return _markdown_title(text) or stem, text
    if suffix == ".rst":
        return _rst_title(text) or stem, text
    return stem, text


_MD_HEADING = re.compile(r"^#\s+(.+?)(?:\s+#+)?\s*$")
_MD_FENCE = re.compile(r"^\s*(```|~~~)")


def _markdown_title(text: str) -> str | None:
    """The first level-1 ATX heading outside code fences (a `# ` inside a fence is a comment)."""
    in_fence = False
    for line in text.splitlines():
        if _MD_FENCE.match(line):
            in_fence = not in_fence
        elif not in_fence and (match := _MD_HEADING.match(line)):
            return match.group(1).strip()
    return None


_RST_ADORNMENT = re.compile(r"^([=\-`:'\"~^_*+#<>.])\1{2,}\s*$")


def _rst_title(text: str) -> str | None:
    """The first section title: a line underlined (and maybe overlined) by punctuation at least as long."""
    lines = text.splitlines()
    for i, line in enumerate(lines[:-1]):
        title = line.strip()
        below = lines[i + 1]
        if title and not _RST_ADORNMENT.match(line) and _RST_ADORNMENT.match(below):
            if len(below.rstrip()) >= len(line.rstrip()):
                return title
    return None


class _HTMLText(HTMLParser):
    """Visible text of an HTML page in paragraphs, and its title (<title>, else the first heading)."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "head"})
    _BLOCK = frozenset(
        """address article aside blockquote body br dd details dialog div dl dt fieldset figcaption
        figure footer form h1 h2 h3 h4 h5 h6 header hr li main nav ol p pre section summary table td
        th tr ul""".split()
    )
    _HEADINGS = frozenset({"h1", "h2", "h3", "h4", "h5", "h6"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._paragraphs: list[str] = []
        self._current: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._title: list[str] | None = None
        self._heading: list[str] | None = None
        self._in_title = False
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag == "title":
            self._in_title = True
            self._title = []
        elif tag in self._SKIP:
            self._skip_depth += 1
        if tag in self._BLOCK:
            self._flush()
        if tag == "pre":
            self._pre_depth += 1
        if tag in self._HEADINGS and self._heading is None:
            self._in_heading = True
            self._heading = []

    def handle_startendtag(self, tag: str, attrs: list) -> None:
        if tag in self._BLOCK:
            self._flush()

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP and self._skip_depth:
            self._skip_depth -= 1
        if tag in self._HEADINGS:
            self._in_heading = False
        if tag in self._BLOCK:
            self._flush()
        if tag == "pre" and self._pre_depth:
            self._pre_depth -= 1

    def handle_data(self, data: str) -> None:
        if self._in_title and self._title is not None:
            self._title.append(data)
            return
        if self._skip_depth:
            return
        if self._in_heading and self._heading is not None:
            self._heading.append(data)
        # Inside <pre> line breaks carry meaning; elsewhere HTML whitespace is insignificant.
        self._current.append(data if self._pre_depth else _pad(data))

    def _flush(self) -> None:
        text = "".join(self._current)
        self._current = []
        if self._pre_depth:
            text = "\n".join(line.rstrip() for line in text.strip("\n").splitlines())
        else:
            text = " ".join(text.split())
        if text.strip():
            self._paragraphs.append(text)

    def text(self) -> str:
        self._flush()
        return "\n\n".join(self._paragraphs)

    def title(self) -> str:
        for parts in (self._title, self._heading):
            if parts:
                title = " ".join("".join(parts).split())
                if title:
                    return title
        return ""


def _pad(data: str) -> str:
    """Collapse inner whitespace but keep one space at either edge, so inline tags don't glue words."""
    inner = " ".join(data.split())
    return (" " if data[:1].isspace() else "") + inner + (" " if data[-1:].isspace() else "")


# ---------------------------------------------------------------- records (JSONL, Parquet, CSV)


def _record_document(
    record: Mapping[str, object],
    keys: list[str],
    run: _Run,
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


def _text_field_hint(record: Mapping[str, object], fields: _Fields, id_key: str) -> str:
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


def _read_jsonl(path: Path, prefix: str, run: _Run, *, top_level: bool) -> Iterator[Document]:
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


def _columns(names: list[str], run: _Run, source: str, top_level: bool) -> list[str] | None:
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
    run: _Run,
) -> Iterator[Document]:
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


def _read_parquet(path: Path, prefix: str, run: _Run, *, top_level: bool) -> Iterator[Document]:
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


def _read_csv(path: Path, prefix: str, run: _Run, *, top_level: bool) -> Iterator[Document]:
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


def _report_unreadable(run: _Run, source: str, what: str) -> Iterator[Document]:
    run.problem(source, None, "unreadable", what)
    return iter(())


_READERS = {"jsonl": _read_jsonl, "parquet": _read_parquet, "csv": _read_csv}
