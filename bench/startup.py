"""Start-up: how long `sftflow --help` and each stage command take before they do any work.

    python bench/startup.py            # 7 runs of each, median
    python bench/startup.py --runs 15

Each line is a fresh interpreter, timed from the outside: wall seconds and CPU seconds (user + system
of the child, from ``RUSAGE_CHILDREN``; CPU is the fairer figure on a shared machine). The peer is
the bare interpreter (``python -c pass``), the floor any Python CLI pays. "imports of <stage>" is
the CLI plus the stage's module, which is what a stage command pays before reading its first row.
Target (issue #17): `sftflow --help` <= 0.5 s.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SFTFLOW = str(Path(sys.executable).parent / "sftflow")
TARGET_HELP_S = 0.5

CASES: list[tuple[str, list[str]]] = [
    ("peer: python -c pass", [sys.executable, "-c", "pass"]),
    ("sftflow --help", [SFTFLOW, "--help"]),
    ("sftflow dedup --help", [SFTFLOW, "dedup", "--help"]),
    *[
        (f"imports of `sftflow {name}`", [sys.executable, "-c", f"import flows.cli, curation.pipeline, {module}"])
        for name, module in [
            ("ingest", "curation.ingest"), ("dedup", "curation.dedup"), ("quality", "curation.quality"),
            ("score", "curation.score"), ("select", "curation.select"), ("mix", "curation.mix"),
        ]
    ],
    ("imports of `sftflow curate` (Prefect)", [sys.executable, "-c", "import flows.cli, flows.flows"]),
]


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) of one run of ``cmd``."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO,
                   env={**os.environ, "PYTHONPATH": str(REPO)})
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
    load = os.getloadavg()[0]
    print(f"{args.runs} runs each, median; load average {load:.1f}; {sys.executable}\n")
    print(f"{'command':<42} {'wall s':>8} {'CPU s':>8}")
    results = {}
    for label, cmd in CASES:
        timed(cmd)  # warm the page cache and numba's / Python's bytecode caches
        runs = [timed(cmd) for _ in range(args.runs)]
        wall, cpu = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        results[label] = (wall, cpu)
        print(f"{label:<42} {wall:>8.2f} {cpu:>8.2f}")
    wall, cpu = results["sftflow --help"]
    print(f"\nsftflow --help: {wall:.2f} s wall, {cpu:.2f} s CPU (target <= {TARGET_HELP_S} s: "
          f"{'met' if wall <= TARGET_HELP_S else 'NOT met on the wall clock'}"
          f"{'' if wall <= TARGET_HELP_S else f'; CPU {cpu:.2f} s'})")


if __name__ == "__main__":
    main()
