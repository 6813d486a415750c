"""Start-up: `sftflow --help` and the stage commands import only what they use.

A stage command that imported torch, transformers, Prefect or sentence-transformers would pay
seconds of start-up and hundreds of MB for nothing; these tests run the CLI in a fresh interpreter and
read ``sys.modules`` after the command has finished. (How long start-up takes is measured by
``bench/startup.py``, not asserted here.)
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "prefect", "sentence_transformers", "datasets", "peft", "dask", "sklearn")

# Runs the real CLI entry point, then prints which heavy packages ended up imported.
PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["sftflow", *json.loads(sys.argv[1])]
from flows.cli import main
try:
    main()
except SystemExit as e:
    code = e.code
else:
    code = 0
print("IMPORTED=" + json.dumps([m for m in heavy if m in sys.modules] + [code]))
"""


def _imported(*args: str) -> tuple[list[str], int]:
    res = subprocess.run([sys.executable, "-c", PROBE, json.dumps(args), json.dumps(HEAVY)], capture_output=True,
                         text=True, cwd=REPO, timeout=300)
    line = [x for x in res.stdout.splitlines() if x.startswith("IMPORTED=")]
    assert line, res.stderr[-2000:]
    *mods, code = json.loads(line[-1].removeprefix("IMPORTED="))
    return mods, code


def test_help_imports_nothing_heavy():
    mods, code = _imported("--help")
    assert code == 0
    assert mods == []


@pytest.mark.parametrize("command", ["ingest", "dedup", "quality", "score", "mix"])
def test_stage_commands_import_nothing_heavy(tmp_path, command):
    src = tmp_path / "d.jsonl"
    src.write_text("".join(json.dumps({"instruction": f"Question number {i} about rivers and lakes?",
                                       "output": f"Answer {i}: rivers flow into lakes and seas over many years."})
                           + "\n" for i in range(30)))
    args = [command, str(src), "--out", str(tmp_path / "out")]
    if command == "mix":
        args = ["mix", "--task", str(src), "--general", str(src), "--out", str(tmp_path / "out")]
    mods, code = _imported(*args)
    assert code in (0, None)
    assert mods == [], f"`sftflow {command}` imported {mods}"
