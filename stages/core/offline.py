"""One place that makes every entry point offline and quiet.

Imported first by ``stages/__init__.py`` and ``pipelines/__init__.py``, so any
``python -m stages.<name>``, Prefect flow or test goes through it before a
library that might phone home is imported. Values are ``setdefault``: a user who
really wants a hub download can export the variable themselves.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

OFFLINE_ENV: dict[str, str] = {
    # DVC, great-expectations, Prefect: no telemetry.
    "DVC_NO_ANALYTICS": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
    # albumentations checks PyPI for a newer version at import.
    "NO_ALBUMENTATIONS_UPDATE": "1",
    # ultralytics: no pip auto-install, no hub; downloads are blocked by passing files.
    "YOLO_AUTOINSTALL": "false",
    "YOLO_OFFLINE": "1",
    # timm / huggingface hub: never fetch weights unless the user asks.
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    # Headless plotting everywhere (CI has no display).
    "MPLBACKEND": "Agg",
}


def ultralytics_config_dir() -> Path:
    """Where ultralytics keeps settings and fonts; outside the repo so DVC never sees it."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "cv-finetune" / "ultralytics"


def apply_offline_environment() -> None:
    """Set the variables above and give ultralytics a local font so it never downloads Arial."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
    config_dir = Path(os.environ.setdefault("YOLO_CONFIG_DIR", str(ultralytics_config_dir())))
    _place_ultralytics_font(config_dir)


def _place_ultralytics_font(config_dir: Path) -> None:
    """ultralytics asks the network for Arial.ttf on every dataset check; DejaVuSans serves."""
    target = config_dir / "Ultralytics" / "Arial.ttf"
    if target.exists():
        return
    import matplotlib  # local: only needed the first time

    source = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
