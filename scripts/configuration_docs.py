"""Write docs/configuration.md from the settings' own field descriptions.

    python scripts/configuration_docs.py          # rewrite the page
    python scripts/configuration_docs.py --check  # exit 1 if the page is out of date

A test runs the check, so a setting added without a description, or a description changed
without the page, fails the suite.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "configuration.md"

INTRO = """# Configuration

Generated from the settings' descriptions by `scripts/configuration_docs.py`; edit those, not
this page. Every setting is an environment variable. The server reads `SERVE_*` (groups
nested with `__`, e.g. `SERVE_BATCHING__MAX_BATCH_SIZE`); the server, the `registry` CLI and
the training job read `REGISTRY_*`. A value the server cannot use stops it at start with one
line on stderr and exit status 2; so does `--port` out of range. With `--workers` 2 or more, a
malformed `REGISTRY_*` value (a database URL, an artifact store) is found by the processes that
use it: each logs the line, and the host stops with status 3. An address it cannot listen on
(a port another server holds, a host name that does not resolve) stops it with one line and exit
status 1, before any model loads.
"""


# Defaults that depend on the machine the page is generated on.
MACHINE_DEPENDENT = {"decode_threads": "twice the cores, at most 8"}


def _default(name: str, field: FieldInfo) -> str:
    if name in MACHINE_DEPENDENT:
        return MACHINE_DEPENDENT[name]
    if field.default_factory is not None:
        value: Any = field.default_factory()  # type: ignore[call-arg]
        if isinstance(value, BaseModel):
            return "-"
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`{value}`"
    text = json.dumps(value) if isinstance(value, list | bool) else str(value)
    return f"`{text}`"


def _rows(model: type[BaseModel], prefix: str) -> list[str]:
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            continue  # a group: its own table
        if not field.description:
            raise SystemExit(f"{model.__name__}.{name} has no description: add one (it is this page)")
        description = " ".join(field.description.split()).replace("|", "\\|")
        rows.append(f"| `{prefix}{name.upper()}` | {_default(name, field)} | {description} |")
    return rows


def render() -> str:
    from app.settings import BatchingSettings, LimitSettings, Settings
    from registry.settings import RegistrySettings

    sections = [
        ("The server", Settings, "SERVE_"),
        ("Batching", BatchingSettings, "SERVE_BATCHING__"),
        ("Limits", LimitSettings, "SERVE_LIMITS__"),
        ("The registry (server, CLI and training job)", RegistrySettings, "REGISTRY_"),
    ]
    parts = [INTRO]
    for title, model, prefix in sections:
        parts.append(f"## {title}\n")
        parts.append("| variable | default | meaning |\n| --- | --- | --- |")
        parts.append("\n".join(_rows(model, prefix)) + "\n")
    return "\n".join(parts)


def main() -> None:
    text = render()
    if "--check" in sys.argv[1:]:
        if not PAGE.exists() or PAGE.read_text() != text:
            print("docs/configuration.md is out of date: run python scripts/configuration_docs.py", file=sys.stderr)
            sys.exit(1)
        return
    PAGE.write_text(text)
    print(f"wrote {PAGE.relative_to(ROOT)}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    main()
