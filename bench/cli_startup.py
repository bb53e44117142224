"""Start-up cost of `outreach --help` and `outreach status`: wall time, CPU time and the
import time `python -X importtime` reports, medians of N runs.

    .venv/bin/python bench/cli_startup.py [--runs 7] [--before GIT_REF]

With ``--before``, the same commands run from that commit too (its tree extracted with
``git archive`` and put first on PYTHONPATH), interleaved run by run with this checkout, so
both see the same machine load. Both run in one starter workspace whose schema already exists.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = (["--help"], ["status"])


def run_once(tree: Path, args: list[str], workspace: Path) -> tuple[float, float, float]:
    """One ``python -X importtime -m outreach ARGS``: wall s, CPU s, imports s."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "outreach", *args],
        cwd=workspace,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"outreach {' '.join(args)} failed: {done.stderr[-500:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    imports = sum(
        int(line.split("|")[1])
        for line in done.stderr.splitlines()
        if line.startswith("import time:")
        and "self [us]" not in line
        and not line.split("|")[2].startswith("  ")  # top level only: cumulative covers the rest
    )
    return wall, cpu, imports / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--before", help="a git ref to compare with (e.g. main)")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"after": ROOT}
        if options.before:
            old = Path(tmp) / "before"
            old.mkdir()
            archive = subprocess.run(
                ["git", "-C", str(ROOT), "archive", options.before],
                capture_output=True,
                check=True,
            )
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive.stdout, check=True)
            trees = {"before": old, "after": ROOT}
        workspace = Path(tmp) / "ws"
        subprocess.run(
            [sys.executable, "-m", "outreach", "init", str(workspace)],
            check=True,
            capture_output=True,
        )
        run_once(ROOT, ["status"], workspace)  # creates the schema, outside the figures
        results: dict[tuple[str, str], list[tuple[float, float, float]]] = {}
        for _ in range(options.runs):
            for args in COMMANDS:
                for name, tree in trees.items():
                    results.setdefault((" ".join(args), name), []).append(
                        run_once(tree, args, workspace)
                    )
    load = os.getloadavg()[0]
    print(f"medians of {options.runs} runs, load average {load:.1f} on {os.cpu_count()} cores")
    print(f"{'command':18} {'tree':7} {'wall s':>7} {'cpu s':>7} {'imports s':>10}")
    for (command, name), rows in results.items():
        wall, cpu, imports = (statistics.median(column) for column in zip(*rows, strict=True))
        print(f"outreach {command:9} {name:7} {wall:7.2f} {cpu:7.2f} {imports:10.2f}")


if __name__ == "__main__":
    main()
