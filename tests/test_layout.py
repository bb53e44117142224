"""The layout shows the architecture: the protocol side (``outreach/mail/``) never imports the
store, the models or a workspace, at run time; what it needs of them is handed in."""

from __future__ import annotations

import ast
from pathlib import Path

import outreach

PACKAGE = Path(outreach.__file__).parent
FORBIDDEN = (
    "outreach.store",
    "outreach.models",
    "outreach.workspace",
    "outreach.lifecycle",
    "outreach.sequencing",
    "outreach.grants",
    "sqlmodel",
    "sqlalchemy",
)


def _run_time_imports(tree: ast.Module, module: str) -> list[tuple[int, str]]:
    """Every import in the file, with absolute names, but those under ``if TYPE_CHECKING:``."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            skipped.update(id(child) for child in ast.walk(node))
    found = []
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package
                parent = module.rsplit(".", node.level)[0]
                base = f"{parent}.{base}" if base else parent
            found += [(node.lineno, base)] + [(node.lineno, f"{base}.{a.name}") for a in node.names]
    return found


def test_the_mail_package_never_imports_the_store_or_the_models() -> None:
    files = sorted((PACKAGE / "mail").glob("*.py"))
    assert len(files) >= 10  # the package is there: the test reads something
    offences = []
    for path in files:
        module = f"outreach.mail.{path.stem}"
        for line, name in _run_time_imports(ast.parse(path.read_text()), module):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN):
                offences.append(f"outreach/mail/{path.name}:{line}: imports {name}")
    assert offences == []


def test_the_check_sees_an_import_of_the_store() -> None:
    tree = ast.parse("from outreach.store import Store\nif TYPE_CHECKING:\n    import sqlmodel\n")
    names = [name for _, name in _run_time_imports(tree, "outreach.mail.x")]
    assert "outreach.store.Store" in names and "sqlmodel" not in names


def test_the_pure_ab_modules_import_no_store_and_the_send_paths_no_numpy() -> None:
    # ab/counts.py and ab/index.py are what the dispatcher reads for every new message: no
    # numpy at import (counts.py loads it inside the functions only the simulator's arrays
    # take). All four pure modules import nothing of the store. The package's __init__ imports
    # nothing.
    offences = []
    for stem in ("counts", "index", "stats", "html"):
        path = PACKAGE / "ab" / f"{stem}.py"
        tree = ast.parse(path.read_text())
        for line, name in _run_time_imports(tree, f"outreach.ab.{stem}"):
            if any(name == bad or name.startswith(bad + ".") for bad in FORBIDDEN):
                offences.append(f"outreach/ab/{path.name}:{line}: imports {name}")
        if stem in ("counts", "index"):
            # Module level only: the statements of the file itself, not of its functions.
            top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
            for line, name in _run_time_imports(ast.Module(body=top, type_ignores=[]), stem):
                if name.split(".")[0] in ("numpy", "scipy") or name.startswith("outreach.ab.stats"):
                    offences.append(f"outreach/ab/{path.name}:{line}: imports {name} at load")
    init = ast.parse((PACKAGE / "ab" / "__init__.py").read_text())
    offences += [
        f"outreach/ab/__init__.py:{line}: imports {name}"
        for line, name in _run_time_imports(init, "outreach.ab")
    ]
    assert offences == []
