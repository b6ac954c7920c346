"""Title and body text of a markup file: visible text and title of HTML, the first heading of
Markdown and reStructuredText (which are kept as written)."""

from __future__ import annotations

import re
from html.parser import HTMLParser


def title_and_body(suffix: str, text: str, stem: str) -> tuple[str, str]:
    """The title (else `stem`) and body text of a file with this suffix; plain text passes through."""
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
