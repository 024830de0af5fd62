"""Render ``reports/report.html`` in headless Chromium to a PNG, to look at it as a reader would.

    python -m bench.render_report [reports/report.html] [--out report.png] [--width 1200] [--height 6000]

The page is self-contained, so Chromium loads nothing else (network off by construction:
``file://`` plus a fresh profile). Prints the PNG path and the page's pixel height (from the
screenshot's last non-white row) so a too-small ``--height`` shows.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

CANDIDATES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


def find_chromium() -> str | None:
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def render(html: Path, out: Path, width: int = 1200, height: int = 6000, timeout: float = 120) -> Path:
    """Screenshot ``html`` at ``width`` x ``height`` CSS pixels into ``out`` (PNG)."""
    browser = find_chromium()
    if browser is None:
        raise FileNotFoundError("no chromium / chrome on PATH")
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                f"--user-data-dir={profile}",
                f"--screenshot={out}",
                f"--window-size={width},{height}",
                html.resolve().as_uri(),
            ],
            check=True,
            capture_output=True,
            timeout=timeout,
        )
    return out


def content_height(png: Path) -> int:
    """Rows down to the last one that is not plain white (the page's drawn height)."""
    pixels = np.asarray(Image.open(png).convert("L"))
    rows = np.flatnonzero((pixels < 250).any(axis=1))
    return int(rows[-1]) + 1 if len(rows) else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", default="reports/report.html", type=Path)
    parser.add_argument("--out", type=Path, default=Path("report.png"))
    parser.add_argument("--width", type=int, default=1200)
    parser.add_argument("--height", type=int, default=6000)
    args = parser.parse_args(argv)
    png = render(args.html, args.out, args.width, args.height)
    used = content_height(png)
    print(f"{png} ({args.width} x {args.height}; content down to row {used})")
    if used >= args.height - 5:
        print("the page is longer than --height; pass a larger one to see the end", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
