"""Hostile inputs at full size: each must end as a ledger row or a one-line source error, in bounded memory.

    python bench/hostile_inputs.py                 # every case (~4 GB of temp files, written one at a time)
    python bench/hostile_inputs.py --cases csv_1m_columns,parquet_100k_row_groups

Each file is generated on the fly into a temp folder (never committed), ingested by a fresh
`sftflow ingest FILE --out DIR`, and deleted. Per case: the outcome (ledger reasons, or the error
line), wall and CPU seconds, and the child's peak RSS (``wait4``), next to the peer: the same command
on a two-row file (what the CLI itself costs). The bound each case is held to is printed with it
(default limits: ``max_line_bytes`` 32 MiB, ``max_document_bytes`` 256 MiB, ``max_columns`` 10,000,
``max_parquet_footer_bytes`` 64 MiB).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SFTFLOW = str(Path(sys.executable).parent / "sftflow")
MiB = 2**20
GOOD = json.dumps({"instruction": "Say hi.", "output": "Hi there."})
GOOD2 = json.dumps({"instruction": "Name a colour.", "output": "Blue."})


def _repeat(fh, piece: bytes, total: int) -> None:
    """Write ``piece`` repeatedly until ``total`` bytes (never more than 8 MiB held)."""
    block = piece * max(1, (8 * MiB) // len(piece))
    left = total
    while left > 0:
        fh.write(block[:left])
        left -= len(block)


def two_rows(path: Path) -> None:
    path.write_text(GOOD + "\n" + GOOD2 + "\n")


def line_200mb_jsonl(path: Path) -> None:
    with path.open("wb") as fh:
        fh.write(GOOD.encode() + b'\n{"instruction": "x", "output": "')
        _repeat(fh, b"lorem ipsum ", 200 * MiB)
        fh.write(b'"}\n' + GOOD2.encode() + b"\n")


def element_200mb_json(path: Path) -> None:
    with path.open("wb") as fh:
        fh.write(b"[\n" + GOOD.encode() + b',\n{"instruction": "x", "output": "')
        _repeat(fh, b"lorem ipsum ", 200 * MiB)
        fh.write(b'"},\n' + GOOD2.encode() + b"\n]\n")


def unterminated_1gb_jsonl(path: Path) -> None:
    with path.open("wb") as fh:
        fh.write(b'{"instruction": "')
        _repeat(fh, b"a", 1024 * MiB)


def unterminated_1gb_json(path: Path) -> None:
    with path.open("wb") as fh:
        fh.write(b'["')
        _repeat(fh, b"a", 1024 * MiB)


def document_300mb_json(path: Path) -> None:
    with path.open("wb") as fh:
        fh.write(b'{\n  "version": 1,\n  "data": [\n')
        row = (json.dumps({"instruction": "Say hi.", "output": "Hi there."}, indent=4) + ",\n").encode()
        _repeat(fh, row, 300 * MiB)
        fh.write(GOOD.encode() + b"\n  ]\n}\n")


def csv_1m_columns(path: Path) -> None:
    with path.open("w") as fh:
        fh.write(",".join(f"c{i}" for i in range(1_000_000)) + "\n")
        fh.write(",".join("x" for _ in range(1_000_000)) + "\n")


def _parquet_row_groups(path: Path, columns: int) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 100_000
    cols = {"instruction": [f"Say hi, number {i}." for i in range(n)], "output": [f"Hi there, {i}." for i in range(n)]}
    for c in range(columns - 2):
        cols[f"extra_{c}"] = [f"v{i}" for i in range(n)]
    pq.write_table(pa.table(cols), path, row_group_size=1)


def parquet_100k_row_groups(path: Path) -> None:
    _parquet_row_groups(path, 2)


def parquet_100k_row_groups_8_columns(path: Path) -> None:
    _parquet_row_groups(path, 8)


CASES: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "peer: two rows": ("two.jsonl", two_rows, "-"),
    "line_200mb_jsonl": ("line.jsonl", line_200mb_jsonl, "2 x max_line_bytes + 1 MiB read buffer"),
    "element_200mb_json": ("element.json", element_200mb_json, "max_line_bytes + 2 MiB of buffer"),
    "unterminated_1gb_jsonl": ("open.jsonl", unterminated_1gb_jsonl, "2 x max_line_bytes + 1 MiB read buffer"),
    "unterminated_1gb_json": ("open.json", unterminated_1gb_json, "max_line_bytes + 2 MiB of buffer"),
    "document_300mb_json": ("doc.json", document_300mb_json, "file size checked before reading (.gz: read up to the limit)"),
    "csv_1m_columns": ("wide.csv", csv_1m_columns, "~3 x the header line (checked on the raw line)"),
    "parquet_100k_row_groups": ("rg.parquet", parquet_100k_row_groups, "~10 x the footer (23 MiB here)"),
    "parquet_100k_row_groups_8_columns": ("rg8.parquet", parquet_100k_row_groups_8_columns,
                                          "footer size read from the last 8 bytes, then refused"),
}


def run_case(work: Path, name: str) -> dict:
    filename, _, bound = CASES[name]
    src, out = work / filename, work / f"out-{name}"
    t = time.perf_counter()
    # generated in a process of its own: a child's peak RSS counts the parent's memory at fork time
    subprocess.run([sys.executable, __file__, "--make", name, str(src)], check=True)
    gen_s = time.perf_counter() - t
    size = src.stat().st_size
    t = time.perf_counter()
    with (work / "stdout").open("w") as so, (work / "stderr").open("w") as se:
        proc = subprocess.Popen([SFTFLOW, "ingest", str(src), "--out", str(out)], stdout=so, stderr=se, cwd=work,
                                env={**os.environ, "PYTHONPATH": str(REPO)})
        _, status, usage = os.wait4(proc.pid, 0)  # the child's own peak RSS and CPU time
    wall = time.perf_counter() - t
    src.unlink()
    code = os.waitstatus_to_exitcode(status)
    stderr = (work / "stderr").read_text()
    errors = [ln for ln in stderr.splitlines() if ln.startswith("error:")]
    if (out / "ledger.parquet").exists():
        import pyarrow.parquet as pq

        reasons = Counter(pq.read_table(out / "ledger.parquet", columns=["reason"]).column("reason").to_pylist())
        kept = pq.ParquetFile(out / "output.parquet").metadata.num_rows
        outcome = f"{kept:,} rows kept; ledger: {dict(reasons) or 'none'}"
    else:
        outcome = errors[0][:200] if errors else f"exit {code}: {stderr.strip()[-200:]}"
    return {"case": name, "size_mib": size / MiB, "gen_s": gen_s, "wall_s": wall,
            "cpu_s": usage.ru_utime + usage.ru_stime, "peak_rss_mib": usage.ru_maxrss / 1024,
            "exit": code, "outcome": outcome, "bound": bound}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated case names")
    ap.add_argument("--work", help="folder for the temp files (default: a temp folder)")
    ap.add_argument("--make", nargs=2, metavar=("CASE", "PATH"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.make:
        CASES[args.make[0]][1](Path(args.make[1]))
        return
    names = ["peer: two rows"] + [n for n in args.cases.split(",") if n and n != "peer: two rows"]
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise SystemExit(f"unknown cases {unknown}; choose from {', '.join(CASES)}")
    print(f"load average {os.getloadavg()[0]:.1f}\n")
    print("| case | input | outcome | exit | wall s | CPU s | peak RSS MiB | memory bound |")
    print("|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory(prefix="sftflow-hostile-", dir=args.work) as tmp:
        for name in names:
            r = run_case(Path(tmp), name)
            print(f"| {r['case']} | {r['size_mib']:,.1f} MiB | {r['outcome']} | {r['exit']} | {r['wall_s']:.1f} | "
                  f"{r['cpu_s']:.1f} | {r['peak_rss_mib']:,.0f} | {r['bound']} |", flush=True)


if __name__ == "__main__":
    main()
