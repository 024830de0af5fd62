"""The report's Markdown as one self-contained HTML page (figures embedded as base64).

The Markdown is the single source: it is rendered with markdown-it-py (CommonMark plus
tables, raw HTML off: the page has none of its own, and the report escapes every name and
message that comes from the data). An image is inlined as a ``data:`` URI only when it
resolves (symlinks followed) to a raster file inside the report's own figures folder; any
other image (a URL, an absolute path, ``../``) becomes its alt text, and a link that is not an
anchor on the page loses its target, so the page never reads another local file into itself
and never makes the browser fetch anything. Section headings get anchors for the contents bar.
"""

from __future__ import annotations

import base64
import html
import os
import re
from pathlib import Path
from urllib.parse import unquote

from markdown_it import MarkdownIt
from markdown_it.token import Token

CSS = """
body { font-family: "DejaVu Sans", "Segoe UI", Helvetica, Arial, sans-serif; color: #1d1d1f;
       max-width: 1080px; margin: 0 auto; padding: 0 24px 48px; line-height: 1.45; font-size: 15px; }
nav { position: sticky; top: 0; background: #ffffffee; border-bottom: 1px solid #ddd;
      padding: 8px 0; font-size: 13px; z-index: 1; }
nav a { margin-right: 14px; color: #1565c0; text-decoration: none; white-space: nowrap; }
h1 { font-size: 26px; margin: 20px 0 6px; }
h2 { font-size: 20px; border-bottom: 1px solid #e3e3e3; padding-bottom: 4px; margin-top: 34px; }
h3 { font-size: 16px; margin-top: 22px; }
table { border-collapse: collapse; margin: 10px 0 14px; font-size: 13.5px; }
th, td { border: 1px solid #d9d9d9; padding: 4px 10px; text-align: left; }
th { background: #f3f5f8; }
tr:nth-child(even) td { background: #fafbfc; }
td:not(:first-child) { font-variant-numeric: tabular-nums; }
img { max-width: 100%; height: auto; display: inline-block; vertical-align: top;
      margin: 6px 8px 6px 0; border: 1px solid #eee; }
p > img:not(:only-child) { max-width: calc(50% - 12px); }
code { background: #f3f3f3; padding: 1px 4px; border-radius: 3px; font-size: 13px; }
pre { background: #f6f8fa; padding: 10px; overflow-x: auto; }
blockquote { margin: 10px 0; padding: 6px 14px; border-left: 4px solid #ef6c00; background: #fff7ee; }
"""


def to_html(markdown: str, base: Path, title: str, figures: Path | None = None) -> str:
    """Render ``markdown`` (image paths relative to ``base``) as one standalone page; only images
    inside ``figures`` (default ``base/figures``) are embedded."""
    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(markdown)
    allowed = (figures if figures is not None else base / "figures").resolve()
    for block in tokens:
        if block.children:
            block.children = [_safe(child, base, allowed) for child in block.children]
    body = md.renderer.render(tokens, md.options, {})
    sections: list[tuple[str, str]] = []

    def anchor(match: re.Match) -> str:
        text = match.group(1)
        slug = re.sub(r"[^a-z0-9]+", "-", html.unescape(re.sub(r"<[^>]+>", "", text)).lower()).strip("-")
        slug = slug or f"section-{len(sections)}"
        sections.append((slug, text))
        return f'<h2 id="{slug}">{text}</h2>'

    body = re.sub(r"<h2>(.*?)</h2>", anchor, body)
    nav = "".join(f'<a href="#{slug}">{text}</a>' for slug, text in sections)
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        f"<nav>{nav}</nav>\n{body}</body>\n</html>\n"
    )


# Raster formats only: an SVG can carry scripts and links of its own.
RASTER = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".webp": "image/webp",
}


def _safe(token: Token, base: Path, allowed: Path) -> Token:
    """An image inlined from ``allowed`` or replaced by its alt text; a link kept only as an anchor."""
    if token.type == "image":
        uri = embedded_figure(str(token.attrGet("src") or ""), base, allowed)
        if uri is not None:
            token.attrSet("src", uri)
            return token
        text = Token("text", "", 0)
        text.content = f"[figure not embedded: {token.content}]"
        return text
    if token.type == "link_open" and not str(token.attrGet("href") or "").startswith("#"):
        token.attrs.pop("href", None)
    return token


def embedded_figure(src: str, base: Path, allowed: Path) -> str | None:
    """``src`` as a data URI when it is a relative path to a raster file inside ``allowed``
    (after resolving ``..`` and symlinks); None for a URL, an absolute path or anything outside."""
    if not src or re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", src) or src.startswith(("/", "\\")):
        return None
    relative = unquote(html.unescape(src))
    if os.path.isabs(relative):
        return None
    path = (base / relative).resolve()
    mime = RASTER.get(path.suffix.lower())
    if mime is None or not path.is_relative_to(allowed) or not path.is_file():
        return None
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
