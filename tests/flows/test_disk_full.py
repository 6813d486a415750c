"""A disk that fills up mid-stage: one-line error, nothing partial visible, and the next run resumes.

The disk is a real tmpfs of a few MB, mounted in a private mount namespace (``unshare``; root, or
unprivileged user namespaces), so no mount is left behind and nothing else on the machine sees it.
It holds a filler file, and is sized so that ingest fits and the quality stage's output does not:
the first run fails while writing it; deleting the filler frees the space and the rerun with
``--resume`` keeps ingest's finished folder and produces the same bytes as a run on a roomy disk.
"""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SFTFLOW = str(Path(sys.executable).parent / "sftflow")
PAGE = 4096


def _namespace_prefix() -> list[str] | None:
    """An ``unshare`` command line that gives a private mount namespace in which we may mount, or None."""
    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "--mount", "--propagation", "private"], ["unshare", "-r", "-m"]):
        probe = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                                "{ d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d; }"],
                               capture_output=True)
        if probe.returncode == 0:
            return prefix
    return None


NAMESPACE = _namespace_prefix()
pytestmark = pytest.mark.skipif(NAMESPACE is None, reason="cannot mount a tmpfs here (no unshare/mount rights)")


def _pages(n: int) -> int:
    return -(-n // PAGE) * PAGE


def _write_data(path: Path, rows: int = 10_000) -> None:
    rng = random.Random(7)
    words = [f"{a}{b}" for a in ("ka", "lo", "mi", "ne", "su", "ta", "ri", "po") for b in
             ("ran", "vel", "mot", "sen", "dir", "gal", "fin", "bor", "cut", "pel")]
    with path.open("w") as fh:
        for i in range(rows):
            q = " ".join(rng.choices(words, k=rng.randint(6, 14))).capitalize() + f" number {i}?"
            a = ". ".join(" ".join(rng.choices(words, k=rng.randint(8, 16))).capitalize() for _ in range(4)) + "."
            fh.write(json.dumps({"instruction": q, "output": a}) + "\n")


def test_disk_full_mid_stage_then_resume(tmp_path):
    data = tmp_path / "data.jsonl"
    _write_data(data)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: full-disk\nsources: [{data}]\nstages:\n  - quality: {{}}\n")

    # the same run on a roomy disk: what the resumed run must reproduce, and the sizes to aim at
    ref = tmp_path / "ref"
    res = subprocess.run([SFTFLOW, "curate", "--local", "--recipe", str(recipe), "--out", str(ref)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stderr
    ingest_bytes = sum(_pages(f.stat().st_size) for f in (ref / "curate" / "00_ingest").iterdir())
    quality_out = (ref / "curate" / "01_quality" / "output.parquet").stat().st_size
    assert quality_out > 6 * PAGE, "the quality output must span several pages to fill the disk mid-way"
    filler = _pages(2 * sum(f.stat().st_size for f in ref.rglob("*") if f.is_file()))  # room for the rest
    # ingest fits, half of quality's output does not
    size = filler + ingest_bytes + _pages(quality_out // 2)

    mnt, out = tmp_path / "mnt", tmp_path / "results"
    mnt.mkdir()
    out.mkdir()
    run = mnt / "run"
    script = f"""
set -u
mount -t tmpfs -o size={size} tmpfs {mnt}
head -c {filler} /dev/zero > {mnt}/filler
cd {tmp_path}
{SFTFLOW} curate --local --recipe {recipe} --out {run} > {out}/out1 2> {out}/err1; echo $? > {out}/rc1
find {run} -name '*' -type f | sort > {out}/files1
rm {mnt}/filler
{SFTFLOW} curate --local --resume --recipe {recipe} --out {run} > {out}/out2 2> {out}/err2; echo $? > {out}/rc2
cp -r {run} {out}/run
"""
    res = subprocess.run([*NAMESPACE, "bash", "-c", script], capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr

    # first run: exit 2 and one line naming the file being written
    assert (out / "rc1").read_text().strip() == "2", (out / "err1").read_text()[-3000:]
    err_lines = [ln for ln in (out / "err1").read_text().splitlines() if ln.startswith("error:")]
    assert len(err_lines) == 1, (out / "err1").read_text()[-3000:]
    assert "no space left on device" in err_lines[0]
    assert f"{run}/curate/01_quality/" in err_lines[0]
    assert "Traceback" not in (out / "err1").read_text()
    # nothing partial visible: no temp files left, ingest complete, quality and the run not published
    files = [Path(p).relative_to(run).as_posix() for p in (out / "files1").read_text().split()]
    assert not [f for f in files if f.endswith(".tmp")], files
    assert {"curate/00_ingest/output.parquet", "curate/00_ingest/ledger.parquet",
            "curate/00_ingest/stats.json"} <= set(files)
    assert not [f for f in files if f.startswith("curate/01_quality/") and f.endswith(("output.parquet", "stats.json"))]
    assert "curate/output.parquet" not in files and "curate/summary.json" not in files

    # after freeing space the rerun resumes (ingest reused) and writes the reference bytes
    assert (out / "rc2").read_text().strip() == "0", (out / "err2").read_text()[-3000:]
    summary = json.loads((out / "run" / "curate" / "summary.json").read_text())
    assert [s["cached"] for s in summary["stages"]] == [True, False]
    for name in ("output.parquet", "ledger.parquet"):
        assert (out / "run" / "curate" / name).read_bytes() == (ref / "curate" / name).read_bytes(), name
