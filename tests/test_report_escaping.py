"""Hostile names in the data cannot make the report read a local file, load a URL or add markup.

A class named ``![a](/proc/self/environ)`` used to be an image link in report.md, and the HTML
renderer base64-inlined whatever file an image pointed at (absolute or ``../``): the secret
landed in report.html, which DVC caches and the flow pushes. These tests build the stage's
inputs directly (no training) and run the real ``report`` stage on them.
"""

from __future__ import annotations

import base64
import html
import json
import re
from pathlib import Path

import pandas as pd
import pytest
from markdown_it import MarkdownIt

from stages import report
from stages.core.contracts import write_json, write_parquet
from stages.core.layout import Layout
from stages.reporting.html import embedded_figure, to_html
from stages.reporting.markdown import code, esc
from tests.conftest import fast_params, write_image

MARKER = "TOP-SECRET-7f3a"


def _hostile_names(secret: Path) -> list[str]:
    return [
        "![a](/proc/self/environ)",
        f"![b]({secret})",
        f"![c](../{secret.name})",
        f'<img src="{secret}">',
        "[x](http://evil.example/beacon)",
        "<http://evil.example/auto>",
        "www.evil.example",
        "a|b`c\n## injected heading",
    ]


def _inline_tokens(text: str) -> list:
    md = MarkdownIt("commonmark", {"html": True}).enable("table")
    return [child for block in md.parse(text) for child in block.children or []]


@pytest.fixture
def hostile_report(tmp_path: Path) -> tuple[Layout, Path, list[str]]:
    """The evaluate, validate and split outputs of a run whose classes, reasons and paths are hostile."""
    secret = tmp_path / "out" / "secret.png"  # beside the reports folder, as a ../ target
    secret.parent.mkdir(parents=True)
    secret.write_bytes(b"\x89PNG\r\n\x1a\n" + MARKER.encode())
    names = _hostile_names(secret)
    source = tmp_path / "source"
    write_image(source / "x" / "img.png", (32, 32), (10, 20, 30))
    params = fast_params(tmp_path, source)
    layout = Layout(params.paths)
    write_json({"task": "classify", "split": "test", "images": len(names), "accuracy": 0.5}, layout.metrics)
    rows = [
        {"class": n, "support": 1, "precision": 0.5, "recall": 0.5, "f1": 0.1 * i}
        for i, n in enumerate(names)
    ]
    write_json(rows, layout.plots_dir / "per_class.json")
    write_json(
        [{"actual": a, "predicted": b} for a, b in zip(names, names[1:] + names[:1], strict=True)],
        layout.plots_dir / "confusion.json",
    )
    predictions = pd.DataFrame(
        {
            "image_id": [f"i{k}" for k in range(len(names))],
            "path": [f"x/{n}.png" for n in names],
            "label": names,
            "prediction": names[1:] + names[:1],
            "confidence": [0.9] * len(names),
            "loss": [1.0] * len(names),
        }
    )
    write_parquet(predictions, layout.predictions)
    write_json({"images_in": 3, "images_valid": 2, "warnings": names, "checks": {}}, layout.validation_report)
    quarantine = pd.DataFrame({"stage": "validate", "reason": names, "path": names}).astype("string")
    write_parquet(quarantine, layout.validate_quarantine)
    layout.classes.parent.mkdir(parents=True, exist_ok=True)
    layout.classes.write_text(json.dumps(names), encoding="utf-8")
    audit = {"splits": {"test": {"images": 1, "class_counts": dict.fromkeys(names, 1)}}, "notes": names}
    write_json(audit, layout.split_audit)
    report.run(params)
    return layout, secret, names


def test_hostile_class_names_give_no_live_image_link_or_file_content(
    hostile_report: tuple[Layout, Path, list[str]],
) -> None:
    layout, secret, _ = hostile_report
    text = layout.report.read_text(encoding="utf-8")
    page = layout.report_html.read_text(encoding="utf-8")
    leaked = base64.b64encode(secret.read_bytes()).decode()
    for output in (text, page):
        assert MARKER not in output and leaked not in output
    # The Markdown (as GitHub would parse it) links only the report's own figures, nowhere else.
    tokens = _inline_tokens(text)
    sources = [t.attrGet("src") for t in tokens if t.type == "image"]
    assert sources and all(str(s).startswith("figures/") for s in sources), sources
    assert not [t for t in tokens if t.type in {"link_open", "html_inline"}]
    assert "www\\.evil" in text and "http\\:" in text  # GFM's autolinks need the raw characters
    # The page embeds only PNGs of reports/figures, and no element points anywhere else.
    images = _image_sources(page)
    assert images and all(src.startswith("data:image/png;base64,") for src in images)
    assert "evil.example" not in " ".join(_hrefs(page)) and '<img src="/' not in page
    assert not re.search(r"^#+ injected", text, flags=re.M) and "<h2>injected" not in page


def _image_sources(page: str) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', page)


def _hrefs(page: str) -> list[str]:
    return re.findall(r'href="([^"]*)"', page)


def test_only_files_inside_the_figures_folder_are_inlined(tmp_path: Path) -> None:
    figures = tmp_path / "reports" / "figures"
    figures.mkdir(parents=True)
    (figures / "ok.png").write_bytes(b"\x89PNG fine")
    outside = tmp_path / "secret.png"
    outside.write_bytes(MARKER.encode())
    (figures / "link.png").symlink_to(outside)  # a symlink escaping the folder
    (figures / "vector.svg").write_text("<svg onload='x'/>", encoding="utf-8")
    base = figures.parent
    assert embedded_figure("figures/ok.png", base, figures.resolve()) is not None
    for src in (
        str(outside),
        "../secret.png",
        "figures/../../secret.png",
        "figures/link.png",
        "figures/vector.svg",
        "http://evil.example/x.png",
        "file:///etc/passwd",
        "//evil.example/x.png",
    ):
        assert embedded_figure(src, base, figures.resolve()) is None, src
    markdown = f"![s]({outside}) ![t](../secret.png) ![u](http://evil.example/x.png) [v](http://evil.example)"
    page = to_html(markdown, base, "t", figures)
    assert MARKER not in page and 'evil.example/x.png"' not in page
    assert 'src="http' not in page and 'href="http' not in page and "<img" not in page


def test_escaped_text_reads_back_as_the_same_characters() -> None:
    md = MarkdownIt("commonmark").enable("table")
    for name in ("![a](/proc/self/environ)", "<b>x</b> & y", "a_b*c*", "[x](y)", "1. #h `t`", "``x` "):
        assert html.unescape(md.renderInline(esc(name))) == name
        span = md.renderInline(code(name))
        assert span.startswith("<code>") and span.endswith("</code>") and span.count("<code>") == 1
        assert html.unescape(span.removeprefix("<code>").removesuffix("</code>")) == name
