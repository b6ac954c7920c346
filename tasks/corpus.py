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
from collections.abc import Iterator
from pathlib import Path

from indexflow.tasks.document import Document, Fields, ProblemHandler, ReadRun
from indexflow.tasks.errors import ConfigError
from indexflow.tasks.markup import title_and_body
from indexflow.tasks.records import DATA_FORMATS, READERS

__all__ = ["REASONS", "Document", "ProblemHandler", "read_corpus"]

log = logging.getLogger(__name__)

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
    run = ReadRun(Fields(id_field, title_field, text_field), on_problem)
    if kind == "dir":
        return _read_tree(path, run)
    if kind == "file":
        return _read_text_file(path, path.name, run)
    return READERS[kind](path, "", run, top_level=True)


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


def _read_tree(root: Path, run: ReadRun) -> Iterator[Document]:
    for file, rel in _walk(root, run):
        suffix = file.suffix.lower()
        if suffix in TEXT_SUFFIXES:
            yield from _read_text_file(file, rel, run)
        elif suffix in DATA_FORMATS:
            yield from READERS[DATA_FORMATS[suffix]](file, rel + "/", run, top_level=False)
        else:
            log.debug("skipping %s: not a corpus file type", file)


def _walk(root: Path, run: ReadRun) -> Iterator[tuple[Path, str]]:
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


def _read_text_file(file: Path, doc_id: str, run: ReadRun) -> Iterator[Document]:
    source = str(file)
    text = _read_text(file, source, doc_id, run)
    if text is None:
        return
    title, body = title_and_body(file.suffix.lower(), text, file.stem)
    doc = run.accept(Document(id=doc_id, title=title, text=body, source=source), source, None)
    if doc is not None:
        yield doc


def _read_text(file: Path, source: str, doc_id: str, run: ReadRun) -> str | None:
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

