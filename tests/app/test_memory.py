"""Memory a server gives back: swapping versions many times must not ratchet its RSS up."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.conftest import TrainedRun
from tests.server import ROOT

SWAPS = 60
# In its own process, so nothing else this test session loaded moves the figures.
SCRIPT = """
import asyncio, json, os, sys
from pathlib import Path
from asgi_lifespan import LifespanManager
from app.main import create_app
from app.settings import Settings
from registry import Registry, RegistrySettings
from registry.db import create_registry_engine, upgrade

root, model, meta, swaps = Path(sys.argv[1]), sys.argv[2], json.loads(Path(sys.argv[3]).read_text()), int(sys.argv[4])
url = f"sqlite:///{root / 'registry.db'}"
engine = create_registry_engine(url)
upgrade(engine)
engine.dispose()
registry = Registry(database_url=url, artifacts_dir=root / "artifacts")
for _ in range(2):
    registry.register(name="digits", onnx_path=model, metadata=meta)
registry.promote(name="digits", version=1)

def rss_mb():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

async def main():
    settings = Settings(registry=RegistrySettings(database_url=url, artifacts_dir=root / "artifacts"),
                        poll_interval_s=3600)
    app = create_app(settings)
    async with LifespanManager(app, startup_timeout=60, shutdown_timeout=60):
        manager = app.state.serving.manager
        ready = rss_mb()
        for i in range(swaps):
            registry.promote(name="digits", version=2 if i % 2 == 0 else 1, check=False)
            await manager.sync()
            while manager._retiring:  # the old version is closed (and its memory released)
                await asyncio.sleep(0.01)
        swapped = manager.metrics.swaps.labels("digits")._value.get()
        print(json.dumps({"ready": ready, "after": rss_mb(), "swaps": swapped}))

asyncio.run(main())
"""


def test_rss_stays_flat_over_many_swaps(digits_run: TrainedRun, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path), str(digits_run.onnx_path), str(digits_run.meta_path), str(SWAPS)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["swaps"] == SWAPS
    growth = figures["after"] - figures["ready"]
    print(f"RSS {figures['ready']:.0f} MB at ready, {figures['after']:.0f} MB after {SWAPS} swaps")
    # Before the server handed freed heap back after each swap, 60 swaps of this model added ~100 MB.
    assert growth < 40, f"RSS grew by {growth:.0f} MB over {SWAPS} swaps"
