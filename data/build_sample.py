"""Regenerate the sample corpus in data/corpus/ from the Python standard library's docstrings.

    .venv/bin/python data/build_sample.py

The docstrings are part of CPython and under the PSF License (copied to data/LICENSE). Output
depends on the Python version and build (which optional modules exist); the committed files were
made with CPython 3.11.7, and they are the reference — regenerate only on purpose.

Layout (one reader each): modules/*.md, *.html and *.txt (module docstrings with a summary of
their public members), classes/*.rst (class docstrings with their methods), functions.jsonl
(function docstrings, BEIR-style `_id`), builtins.parquet (builtin functions and types),
exceptions.csv (the builtin exception hierarchy).
"""

from __future__ import annotations

import builtins
import csv
import html
import importlib
import inspect
import json
import re
import shutil
import sys
import sysconfig
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent / "corpus"
LICENSE_SOURCE = Path(sysconfig.get_paths()["stdlib"]) / "LICENSE.txt"

# Importing these has side effects (opening a browser, printing), needs a display, or is a test suite.
EXCLUDED = {
    "antigravity", "this", "idlelib", "turtledemo", "turtle", "tkinter", "test", "lib2to3",
    "ensurepip", "pydoc_data", "xxsubtype", "xxlimited", "xxlimited_35", "msvcrt", "winreg",
    "winsound", "nt", "builtins",
}
CLASS_MODULES = [
    "argparse", "asyncio", "collections", "concurrent.futures", "configparser", "contextlib",
    "csv", "dataclasses", "datetime", "decimal", "email.message", "enum", "fractions",
    "http.client", "http.server", "io", "ipaddress", "json", "logging", "multiprocessing.pool",
    "pathlib", "queue", "random", "sched", "selectors", "shelve", "smtplib", "socketserver",
    "sqlite3", "string", "subprocess", "tarfile", "tempfile", "textwrap", "threading",
    "typing", "unittest", "urllib.request", "uuid", "weakref", "xml.etree.ElementTree", "zipfile",
]
FUNCTION_MODULES = [
    "base64", "bisect", "copy", "difflib", "fnmatch", "functools", "glob", "gzip", "hashlib",
    "heapq", "inspect", "itertools", "json", "math", "os", "os.path", "pickle", "pprint", "re",
    "shlex", "shutil", "statistics", "struct", "subprocess", "tempfile", "textwrap", "time",
    "urllib.parse", "zlib",
]
MAX_CLASSES = 60
MAX_FUNCTIONS = 110
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    (OUT / "modules").mkdir(parents=True)
    (OUT / "classes").mkdir()
    counts = {
        "modules": write_modules(),
        "classes": write_classes(),
        "functions.jsonl": write_functions(),
        "builtins.parquet": write_builtins(),
        "exceptions.csv": write_exceptions(),
    }
    shutil.copyfile(LICENSE_SOURCE, OUT.parent / "LICENSE")
    print(f"Python {sys.version.split()[0]}: {counts}, {sum(counts.values())} documents in {OUT}")


def doc(obj: object) -> str:
    return inspect.getdoc(obj) or ""


def signature(name: str, obj: object) -> str:
    try:
        text = f"{name}{inspect.signature(obj)}"
    except (TypeError, ValueError):
        text = f"{name}(...)"
    # Default values that are plain objects print their address, which changes on every run.
    return _ADDRESS.sub("", text)


def summary(obj: object) -> str:
    text = doc(obj)
    return text.split("\n\n")[0].replace("\n", " ").strip() if text else ""


def import_quietly(name: str):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return importlib.import_module(name)
        except Exception:  # a module missing from this build is simply left out
            return None


def public_members(module) -> list[tuple[str, object]]:
    """Functions and classes defined in `module` itself (not imported), by name."""
    members = []
    for name, obj in sorted(vars(module).items()):
        if name.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if getattr(obj, "__module__", None) == module.__name__ and doc(obj):
            members.append((name, obj))
    return members


def modules() -> list[tuple[str, object]]:
    found = []
    for name in sorted(sys.stdlib_module_names):
        if name.startswith("_") or name in EXCLUDED:
            continue
        module = import_quietly(name)
        if module is not None and (len(doc(module)) >= 100 or len(public_members(module)) >= 3):
            found.append((name, module))
    return found


def write_modules() -> int:
    """Module pages: three in four as Markdown, then alternately HTML and plain text."""
    count = 0
    for index, (name, module) in enumerate(modules()):
        members = public_members(module)
        body = doc(module) or f"The {name} module."
        kind = ("md", "md", "html", "md", "txt", "md")[index % 6]
        path = OUT / "modules" / f"{name}.{kind}"
        if kind == "md":
            lines = [f"# {name}", "", body, ""]
            for heading, pick in (("Classes", inspect.isclass), ("Functions", inspect.isroutine)):
                chosen = [(n, o) for n, o in members if pick(o)]
                if chosen:
                    lines += [f"## {heading}", ""]
                    for n, o in chosen:
                        label = signature(n, o) if pick is inspect.isroutine else n
                        lines.append(f"- `{label}`: {summary(o)}")
                    lines.append("")
            path.write_text("\n".join(lines), encoding="utf-8")
        elif kind == "html":
            path.write_text(module_html(name, body, members), encoding="utf-8")
        else:
            lines = [body, ""] + [f"{n}: {summary(o)}" for n, o in members]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        count += 1
    return count


def module_html(name: str, body: str, members: list[tuple[str, object]]) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(name)} module</title>",
        "<style>body { font-family: sans-serif; } pre { background: #f4f4f4; }</style>",
        "</head><body>",
        f"<h1>{html.escape(name)}</h1>",
    ]
    for block in body.split("\n\n"):
        # Indented blocks and doctest examples are code; everything else is a paragraph.
        if block.startswith((" ", ">>>")):
            parts.append(f"<pre>{html.escape(block)}</pre>")
        else:
            parts.append(f"<p>{html.escape(block)}</p>")
    if members:
        parts.append("<h2>Members</h2>")
        parts.append("<ul>")
        parts += [f"<li><code>{html.escape(n)}</code> — {html.escape(summary(o))}</li>" for n, o in members]
        parts.append("</ul>")
    parts.append('<script>document.title += " (indexflow sample)";</script>')
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def write_classes() -> int:
    candidates = []
    for module_name in CLASS_MODULES:
        module = import_quietly(module_name)
        if module is None:
            continue
        for name, cls in public_members(module):
            if inspect.isclass(cls) and len(doc(cls)) >= 200 and not issubclass(cls, BaseException):
                candidates.append((f"{module_name}.{name}", cls))
    for title, cls in spread(candidates, MAX_CLASSES):
        lines = [title, "=" * len(title), "", doc(cls), ""]
        methods = [
            (n, m) for n, m in sorted(vars(cls).items()) if not n.startswith("_") and inspect.isroutine(m) and doc(m)
        ]
        if methods:
            lines += ["Methods", "-------", ""]
            lines += [f"``{signature(n, m)}``\n    {summary(m)}\n" for n, m in methods]
        (OUT / "classes" / f"{title}.rst").write_text("\n".join(lines), encoding="utf-8")
    return min(MAX_CLASSES, len(candidates))


def spread(items: list, limit: int) -> list:
    """At most `limit` items taken evenly across the list, so every source module is represented."""
    step = max(1, len(items) / limit)
    return [items[int(i * step)] for i in range(min(limit, len(items)))]


def write_functions() -> int:
    records = []
    for module_name in FUNCTION_MODULES:
        module = import_quietly(module_name)
        if module is None:
            continue
        for name, func in sorted(vars(module).items()):
            if name.startswith("_") or not inspect.isroutine(func) or len(doc(func)) < 150:
                continue
            qualified = f"{module_name}.{name}"
            records.append({"_id": qualified, "title": signature(qualified, func), "text": doc(func)})
    chosen = spread(records, MAX_FUNCTIONS)
    with open(OUT / "functions.jsonl", "w", encoding="utf-8") as out:
        for record in chosen:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
    return len(chosen)


def write_builtins() -> int:
    rows = []
    for name, obj in sorted(vars(builtins).items()):
        if name.startswith("_") or not doc(obj):
            continue
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            continue  # those go to exceptions.csv
        if inspect.isclass(obj):
            methods = [n for n, m in sorted(vars(obj).items()) if not n.startswith("_") and inspect.isroutine(m)]
            text = doc(obj) + ("\n\nMethods: " + ", ".join(methods) + "." if methods else "")
            rows.append({"id": f"builtins.{name}", "title": f"{name} (built-in type)", "text": text})
        elif inspect.isroutine(obj):
            rows.append({"id": f"builtins.{name}", "title": signature(name, obj), "text": doc(obj)})
    schema = pa.schema([("id", pa.string()), ("title", pa.string()), ("text", pa.string())])
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, OUT / "builtins.parquet", compression="zstd")
    return len(rows)


def write_exceptions() -> int:
    rows = []
    for name, obj in sorted(vars(builtins).items()):
        if not (inspect.isclass(obj) and issubclass(obj, BaseException)):
            continue
        bases = ", ".join(base.__name__ for base in obj.__bases__)
        subclasses = sorted(sub.__name__ for sub in obj.__subclasses__() if sub.__module__ == "builtins")
        text = f"{doc(obj)}\n\n{name} is a built-in exception derived from {bases}."
        if subclasses:
            text += f" Its built-in subclasses are {', '.join(subclasses)}."
        rows.append({"id": name, "title": f"{name} (built-in exception)", "text": text})
    with open(OUT / "exceptions.csv", "w", encoding="utf-8", newline="") as out:
        writer = csv.DictWriter(out, fieldnames=["id", "title", "text"], lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


if __name__ == "__main__":
    main()
