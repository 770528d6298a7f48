"""The per-kind guides of docs/findings/<kind>.md, turned into HTML for the report (a small Markdown subset)."""

from __future__ import annotations

import re
from functools import lru_cache
from html import escape
from pathlib import Path

GUIDES_DIR = Path(__file__).resolve().parents[2] / "docs" / "findings"
GUIDE_PATH_TEMPLATE = "docs/findings/{kind}.md"  # as the report names it, relative to the repository

_INLINE = (
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*([^*]+)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)"), r'<a href="\2">\1</a>'),
)


def _inline(text: str) -> str:
    out = escape(text, quote=False)
    for pattern, repl in _INLINE:
        out = pattern.sub(repl, out)
    return out


def markdown_to_html(text: str) -> str:
    """Headings, paragraphs, `-` lists, inline code, bold and links: what the guides use, nothing more."""
    html: list[str] = []
    paragraph: list[str] = []
    in_list = False

    def flush() -> None:
        nonlocal paragraph
        if paragraph:
            html.append("<p>" + _inline(" ".join(paragraph)) + "</p>")
            paragraph = []

    for raw in text.splitlines():
        line = raw.rstrip()
        heading = re.match(r"^(#{1,4})\s+(.*)$", line)
        item = re.match(r"^\s*[-*]\s+(.*)$", line)
        if heading:
            flush()
            if in_list:
                html.append("</ul>")
                in_list = False
            level = min(len(heading.group(1)) + 2, 6)  # the report's own h1/h2 stay above
            html.append(f"<h{level}>{_inline(heading.group(2))}</h{level}>")
        elif item:
            flush()
            if not in_list:
                html.append("<ul>")
                in_list = True
            html.append(f"<li>{_inline(item.group(1))}</li>")
        elif not line.strip():
            flush()
            if in_list:
                html.append("</ul>")
                in_list = False
        elif in_list and raw.startswith("  "):
            html[-1] = html[-1][: -len("</li>")] + " " + _inline(line.strip()) + "</li>"
        else:
            paragraph.append(line.strip())
    flush()
    if in_list:
        html.append("</ul>")
    return "\n".join(html)


@lru_cache(maxsize=None)
def guide_html(kind: str) -> str | None:
    """The guide for `kind` as HTML, or None when the docs are not beside the package (an installed wheel)."""
    path = GUIDES_DIR / f"{kind}.md"
    if not path.is_file():
        return None
    return markdown_to_html(path.read_text(encoding="utf-8"))
