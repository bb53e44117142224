"""``outreach init``: write a working starter workspace from the files the package carries."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from outreach.errors import OutreachError


def starter_root() -> Path:
    """Where the starter files are: inside an installed wheel, or the repository's top level."""
    packaged = Path(__file__).parent / "starter"
    if (packaged / "config.example.toml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent


# For the demo only: send at any hour into the local sink, a second or two apart.
DEMO_SETTINGS = {
    "window": '"00:00-24:00"',
    "days": '"mon-sun"',
    "min_gap_seconds": "0",
    "max_gap_seconds": "1",
}


def init_workspace(target: Path, *, force: bool = False, demo: bool = False) -> list[Path]:
    """Copy config, sequences, templates and a sample CSV into ``target``; never overwrite
    a file unless ``force``. With ``demo``, the config sends at any time of day with short
    gaps, so the local sink sees messages at once. Returns the files written."""
    source = starter_root()
    plan = [
        (source / "config.example.toml", target / "outreach.toml"),
        (source / "prospects.example.csv", target / "prospects.csv"),
    ]
    for folder in ("sequences", "templates"):
        for path in sorted((source / folder).rglob("*")):
            if path.is_file() and path.suffix in (".yaml", ".yml"):
                plan.append((path, target / path.relative_to(source)))
    existing = [dst for _, dst in plan if dst.exists()]
    if existing and not force:
        raise OutreachError(
            "would overwrite an existing file",
            file=existing[0],
            hint="choose an empty folder, or pass --force",
        )
    for src, dst in plan:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    if demo:
        config = target / "outreach.toml"
        config.write_text(_demo_config(config.read_text(encoding="utf-8")), encoding="utf-8")
    return [dst for _, dst in plan]


def _demo_config(text: str) -> str:
    lines = text.splitlines(keepends=True)
    for key, value in DEMO_SETTINGS.items():
        at = next(i for i, line in enumerate(lines) if re.match(rf"{key}\s*=", line))
        lines[at] = f"{key} = {value}   # demo: see config.example.toml for real values\n"
    return "".join(lines)
