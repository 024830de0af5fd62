"""The report's Markdown as one self-contained HTML page (figures embedded as base64).

The Markdown is the single source: it is rendered with markdown-it-py (CommonMark plus
tables; raw HTML passes, as on GitHub, for ``<details>`` in the strategy study, and the report
escapes every name and message that comes from the data); every local image is inlined as a
``data:`` URI and section headings get anchors for the contents bar, so the page needs no
other file and no network.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re
from pathlib import Path
from urllib.parse import unquote

from markdown_it import MarkdownIt

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


def to_html(markdown: str, base: Path, title: str) -> str:
    """Render ``markdown`` (image paths relative to ``base``) as one standalone page."""
    body = MarkdownIt("commonmark", {"html": True}).enable("table").render(markdown)
    body = re.sub(r'<img src="([^"]+)"', lambda m: f'<img src="{_inline(m.group(1), base)}"', body)
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


def _inline(src: str, base: Path) -> str:
    """A local image as a data URI; anything else (absent file, URL) unchanged."""
    if re.match(r"^[a-z]+:", src):
        return src
    path = base / unquote(html.unescape(src))
    if not path.is_file():
        return src
    mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode('ascii')}"
