"""``outreach init``: write a working starter workspace from the files the package carries."""

from __future__ import annotations

import shutil
from pathlib import Path

from outreach.errors import OutreachError


def starter_root() -> Path:
    """Where the starter files are: inside an installed wheel, or the repository's top level."""
    packaged = Path(__file__).parent / "starter"
    if (packaged / "config.example.toml").is_file():
        return packaged
    return Path(__file__).resolve().parent.parent


def init_workspace(target: Path, *, force: bool = False) -> list[Path]:
    """Copy config, sequences, templates and a sample CSV into ``target``; never overwrite
    a file unless ``force``. Returns the files written."""
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
    return [dst for _, dst in plan]
