"""Files: one writer per output folder (the lock), with a real second process; the column-wise record
conversions every stage reads and writes through equal the per-row ones."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from curation.io import (
    LOCK_NAME,
    FolderInUse,
    batch_records,
    folder_lock,
    record_schema,
    records_table,
    rows_table,
)
from curation.records import Record

REPO = Path(__file__).resolve().parents[2]
HOLDER = """
import sys, time
from curation.io import folder_lock
with folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(120)
"""


def _hold(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], cwd=REPO, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_process_is_refused_and_a_dead_holders_lock_is_taken_over(tmp_path):
    folder = tmp_path / "out"
    holder = _hold(folder)
    try:
        with pytest.raises(FolderInUse, match=rf"out: folder in use by another sftflow run \(pid {holder.pid} on "):
            with folder_lock(folder):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)  # dies holding the lock: the file stays, the flock goes
        holder.wait(timeout=30)
    assert (folder / LOCK_NAME).exists()
    with folder_lock(folder):
        assert f"pid {os.getpid()} " in (folder / LOCK_NAME).read_text()


def test_the_lock_is_reentrant_within_a_process_and_released_after(tmp_path):
    with folder_lock(tmp_path / "a"), folder_lock(tmp_path / "a"), folder_lock(tmp_path / "b"):
        pass
    holder = _hold(tmp_path / "a")  # released: another process can take it
    holder.kill()
    holder.wait(timeout=30)


def test_release_happens_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError), folder_lock(tmp_path / "a"):
        raise RuntimeError("boom")
    holder = _hold(tmp_path / "a")  # _hold waits until the other process has it
    holder.kill()
    holder.wait(timeout=30)


def test_atomic_dir_replaces_a_folder_whole_or_not_at_all(tmp_path):
    import errno

    from curation.io import DiskFullError, atomic_dir

    target = tmp_path / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v2")
        assert (target / "weights").read_text() == "v1"  # the old folder stays until the new one is complete
    assert (target / "weights").read_text() == "v2"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed while writing")
    assert (target / "weights").read_text() == "v2"
    with pytest.raises(DiskFullError, match="adapter"), atomic_dir(target):
        raise OSError(errno.ENOSPC, "No space left on device")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter"]  # no temp folder left behind


RECORDS = [
    Record("a", [{"role": "user", "content": "Say hi."}, {"role": "assistant", "content": "Hi."}], None, "s.jsonl",
           "en", 1, {}, {"quality": 0.5, "flags": "x"}),
    Record("b", None, "plain text 中文", "t.jsonl", "zh", None, {"category": "qa", "n": 3}, {"quality": None}),
    Record("c", [{"role": "system", "content": ""}, {"role": "user", "content": "?"}], None, "", "other", 7,
           {"nested": {"k": [1, 2]}}, {}),
]
SCHEMA = record_schema({"quality": pa.float64(), "flags": pa.string()})


def test_records_table_is_rows_table_of_to_row():
    assert records_table(RECORDS, SCHEMA).equals(rows_table([r.to_row() for r in RECORDS], SCHEMA))


def test_batch_records_is_from_row_of_each_row():
    table = records_table(RECORDS, SCHEMA)
    expected = [Record.from_row(r) for r in table.to_pylist()]
    got = batch_records(table)
    assert got == expected
    # attributes: every schema column, null where a record had none (as from_row gives)
    assert got[2].attrs == {"quality": None, "flags": None}
    assert got[1].meta == {"category": "qa", "n": 3} and got[0].meta == {}
