"""Benchmark: import and enroll 100,000 prospects from a CSV into SQLite.

Prints rows/s and peak RSS of `outreach`'s enroll (the library call the CLI makes), next to a
baseline measured in the same run on the same file: a plain `csv` reader feeding `sqlite3`
executemany into one table, no validation. Each side runs in its own fresh process so peak
RSS is its own. Target (issue #2): >= 20,000 rows/s and < 300 MB peak.

    python bench/enroll_bench.py [--rows 100000]
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FIRST = ["Aino", "Mikko", "Satu", "Jukka", "Emma", "Oskar", "Laura", "Petri", "Anna", "John"]
LAST = ["Korhonen", "Virtanen", "Mäkelä", "Nieminen", "Lindqvist", "Smith", "Nguyen"]
PERSONAS = ["decision_maker", "buyer", "user", ""]
FOLD = str.maketrans("äöå", "aoa")


def write_csv(path: Path, rows: int) -> None:
    rng = random.Random(1)
    with path.open("w", encoding="utf-8", newline="") as f:
        f.write("Sähköposti;Etunimi;Sukunimi;Yritys;Titteli;Persona;Language;Industry\n")
        for i in range(rows):
            first, last = rng.choice(FIRST), rng.choice(LAST)
            # Names keep their Finnish letters; addresses fold them, as Finnish mail hosts do.
            local = f"{first}.{last}".lower().translate(FOLD)
            f.write(
                f"{local}{i}@company{i % 5000}.example;{first};"
                f"{last};Company {i % 5000} Oy;Head of Sales;{rng.choice(PERSONAS)};"
                f"{rng.choice(['fi', 'en'])};Software\n"
            )


def run_outreach(workdir: Path, csv_path: Path) -> dict[str, float]:
    from datetime import UTC, datetime

    from outreach.enroll import enroll_csv
    from outreach.starter import init_workspace
    from outreach.workspace import Workspace

    init_workspace(workdir)
    ws = Workspace.load(workdir / "outreach.toml")
    ws.store  # noqa: B018 - create the schema outside the timed part
    start = time.perf_counter()
    result = enroll_csv(
        ws, csv_path, "cold", now=datetime(2027, 1, 4, 8, tzinfo=UTC), rng=random.Random(1)
    )
    elapsed = time.perf_counter() - start
    assert result.applied and not result.rejected, result.rejected[:3]
    return {"rows": result.enrolled, "seconds": elapsed}


def run_baseline(workdir: Path, csv_path: Path) -> dict[str, float]:
    import csv
    import sqlite3

    db = sqlite3.connect(workdir / "baseline.db")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute(
        "CREATE TABLE prospects (id INTEGER PRIMARY KEY, email TEXT UNIQUE, first_name TEXT,"
        " last_name TEXT, company TEXT, title TEXT, persona TEXT, language TEXT,"
        " industry TEXT)"
    )
    start = time.perf_counter()
    with csv_path.open(encoding="utf-8", newline="") as f:
        reader = csv.reader(f, delimiter=";")
        next(reader)
        with db:
            db.executemany(
                "INSERT INTO prospects (email, first_name, last_name, company, title,"
                " persona, language, industry) VALUES (?,?,?,?,?,?,?,?)",
                reader,
            )
    elapsed = time.perf_counter() - start
    rows = db.execute("SELECT count(*) FROM prospects").fetchone()[0]
    return {"rows": rows, "seconds": elapsed}


def child(which: str, workdir: str, csv_path: str) -> None:
    fn = run_outreach if which == "outreach" else run_baseline
    figures = fn(Path(workdir), Path(csv_path))
    figures["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(figures))


def measure(which: str, tmp: Path, csv_path: Path) -> dict[str, float]:
    workdir = tmp / which
    workdir.mkdir()
    done = subprocess.run(
        [sys.executable, __file__, "--child", which, str(workdir), str(csv_path)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        csv_path = tmp / "prospects.csv"
        write_csv(csv_path, args.rows)
        size_mb = csv_path.stat().st_size / 1e6
        ours = measure("outreach", tmp, csv_path)
        base = measure("baseline", tmp, csv_path)
    print(f"enroll {args.rows:,} rows from a {size_mb:.1f} MB CSV into SQLite")
    print(f"{'':28}{'rows/s':>10}{'seconds':>10}{'peak RSS':>12}")
    for name, fig in (("outreach enroll", ours), ("baseline csv+sqlite3", base)):
        print(
            f"{name:28}{fig['rows'] / fig['seconds']:>10,.0f}{fig['seconds']:>10.2f}"
            f"{fig['peak_rss_mb']:>9.0f} MB"
        )
    ratio = (ours["rows"] / ours["seconds"]) / (base["rows"] / base["seconds"])
    print(f"outreach / baseline throughput: {ratio:.2f}")
    ok = ours["rows"] / ours["seconds"] >= 20_000 and ours["peak_rss_mb"] < 300
    print("target (>= 20,000 rows/s, < 300 MB):", "met" if ok else "NOT met")


if __name__ == "__main__":
    main()
