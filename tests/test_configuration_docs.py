"""docs/configuration.md is generated from the settings' descriptions: every setting is documented,
and the page says what the code does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_setting_is_documented_and_the_page_is_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "configuration_docs.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    page = (ROOT / "docs" / "configuration.md").read_text()
    from app.settings import BatchingSettings, LimitSettings, Settings
    from registry.settings import RegistrySettings

    for prefix, model in (
        ("SERVE_", Settings),
        ("SERVE_BATCHING__", BatchingSettings),
        ("SERVE_LIMITS__", LimitSettings),
        ("REGISTRY_", RegistrySettings),
    ):
        for name in model.model_fields:
            if name in ("batching", "limits", "registry"):
                continue
            assert f"`{prefix}{name.upper()}`" in page, f"{prefix}{name.upper()} is not on the page"
