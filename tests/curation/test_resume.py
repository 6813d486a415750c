"""Crash safety: a curate run killed at any point resumes to exactly the output of an uninterrupted run.

Two ways to kill:

- deterministic points via the test hook ``SFTFLOW_CRASH_AFTER=<stage>:<point>`` (see
  :func:`curation.stage.crash_point`): the process ends with ``os._exit(137)`` there, as ``kill -9``
  would, with temp files half written;
- real ``SIGKILL`` after seeded random delays, on the ``sftflow curate --local --resume`` command.

After each kill we check that no partial file is visible under a final name, resume, and compare
``output.parquet`` and ``ledger.parquet`` byte for byte with a clean run. The real stages of the demo
recipe are used (select with hashing embeddings, so no neural model is loaded); toy stages exercise
the runner with many batches, a fit pass and added rows in well under a second per run.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from pydantic import BaseModel

import flows  # noqa: F401  (registers the services the demo stages ask for, e.g. decontam's benchmarks)
from curation import pipeline
from curation.records import Record
from curation.registry import STAGES
from curation.stage import CRASH_ENV, Drop, Stage, StageOutput, stage_class

REPO = Path(__file__).resolve().parents[2]
DEMO_RECIPE = REPO / "configs" / "demo.yaml"
KILLED = (137, -signal.SIGKILL)
FINAL_FILES = ("output.parquet", "ledger.parquet")


# --------------------------------------------------------------------------------------------------
# toy stages: a per-batch filter, a fit-then-select stage and a stage that adds rows


class MinCharsConfig(BaseModel):
    min_chars: int = 12


class KeepLong(Stage):
    name = "keep_long"
    Config = MinCharsConfig
    attr_fields = {"resp_len": pa.int64()}

    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        for r in batch:
            n = len(r.response())
            if n < self.config.min_chars:
                out.dropped.append(Drop(r, "too_short", f"{n} < {self.config.min_chars}"))
            else:
                r.attrs["resp_len"] = n
                out.kept.append(r)
        return out


class TopKConfig(BaseModel):
    k: int = 20


class TopK(Stage):
    """Keeps the k longest responses (ties by id): needs the whole input first, keeps only (len, id)."""

    name = "top_k"
    Config = TopKConfig
    needs_fit = True

    def fit(self, batches) -> None:
        keys = sorted((-r.attrs["resp_len"], r.id) for b in batches for r in b)
        self.chosen = {rid for _, rid in keys[: self.config.k]}

    def process(self, batch: list[Record]) -> StageOutput:
        out = StageOutput()
        for r in batch:
            if r.id in self.chosen:
                out.kept.append(r)
            else:
                out.dropped.append(Drop(r, "not_selected"))
        return out


class PadConfig(BaseModel):
    extra: int = 5


class Pad(Stage):
    """Adds ``extra`` rows of its own after the input (like the mixer's replay rows)."""

    name = "pad"
    Config = PadConfig
    attr_fields = {"mix_source": pa.string()}

    def process(self, batch: list[Record]) -> StageOutput:
        for r in batch:
            r.attrs["mix_source"] = "task"
        return StageOutput(kept=list(batch))

    def added(self):
        yield [
            Record(id=f"pad-{i}", text=f"padding row {i}", source="pad", attrs={"mix_source": "general"})
            for i in range(self.config.extra)
        ]


TOY_STAGES = {name: f"{__name__}:{cls.__name__}" for name, cls in
              (("keep_long", KeepLong), ("top_k", TopK), ("pad", Pad))}
TOY_RECIPE = [["keep_long", {"min_chars": 12}], ["top_k", {"k": 20}], ["pad", {"extra": 5}]]

# Runs pipeline.curate in a child process (so os._exit / SIGKILL end only the child).
DRIVER = """
import json, sys
import flows  # registers the services stages ask for (decontam's benchmark documents), as every entry point does
from curation import pipeline
from curation.registry import STAGES
args = json.loads(sys.argv[1])
STAGES.update(args["register"])
pipeline.curate(args["sources"], [tuple(s) for s in args["stages"]], args["run"], resume=True,
                batch_size=args["batch_size"])
"""


def _write_source(path: Path, n: int = 60) -> Path:
    rows = [{"instruction": f"question {i}", "output": "ok " * (i % 9) + f"answer {i}"} for i in range(n)]
    lines = [json.dumps(r) for r in rows]
    lines[7] = "{not json"  # an ingest ledger row
    lines.append(json.dumps({"instruction": "question 3", "output": "ok ok ok answer 3"}))  # an exact repeat
    path.write_text("\n".join(lines) + "\n")
    return path


def _drive(run: Path, sources: list[str], stages: list, batch_size: int, crash: str | None = None,
           register: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    args = {"run": str(run), "sources": sources, "stages": stages, "batch_size": batch_size,
            "register": register if register is not None else TOY_STAGES}
    return subprocess.run([sys.executable, "-c", DRIVER, json.dumps(args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def _assert_no_partial_file_visible(run: Path) -> None:
    """Every file under a final name is complete: parquet footers read, JSON parses."""
    for p in run.rglob("*"):
        if p.name.startswith(".") or not p.is_file():
            continue
        if p.suffix == ".parquet":
            pq.read_metadata(p)  # raises on a truncated file
        elif p.suffix == ".json":
            json.loads(p.read_text())


def _assert_same_output(run: Path, clean: Path) -> None:
    for name in FINAL_FILES:
        assert (run / name).read_bytes() == (clean / name).read_bytes(), f"{name} differs from the clean run"
    got, want = json.loads((run / "summary.json").read_text()), json.loads((clean / "summary.json").read_text())
    for key in ("rows_in", "rows_added", "rows_out", "rows_dropped", "balanced"):
        assert got[key] == want[key]
    assert not list(run.rglob(".*.tmp")), "temp files left behind after the resumed run"


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict:
    base = tmp_path_factory.mktemp("toy")
    src = str(_write_source(base / "src.jsonl"))
    clean = base / "clean"
    proc = _drive(clean, [src], TOY_RECIPE, batch_size=8)
    assert proc.returncode == 0, proc.stderr
    return {"base": base, "src": src, "clean": clean}


TOY_POINTS = [
    "ingest:published", "ingest:done",
    "keep_long:3", "keep_long:published",
    "top_k:fit", "top_k:2", "top_k:done",
    "pad:1", "pad:published",
    "final:output", "final:ledger",
]


@pytest.mark.parametrize("point", TOY_POINTS)
def test_kill_at_each_point_then_resume_gives_the_clean_output(toy, point):
    run = toy["base"] / f"run-{point.replace(':', '-')}"
    killed = _drive(run, [toy["src"]], TOY_RECIPE, batch_size=8, crash=point)
    assert killed.returncode in KILLED, f"crash point {point} never reached: {killed.stderr[-2000:]}"
    assert not (run / "summary.json").exists()  # an unfinished run never looks finished
    _assert_no_partial_file_visible(run)

    resumed = _drive(run, [toy["src"]], TOY_RECIPE, batch_size=8)
    assert resumed.returncode == 0, resumed.stderr
    _assert_same_output(run, toy["clean"])
    # stages that had finished (stats.json written) before the kill were not run again
    stage, _, where = point.partition(":")
    summary = json.loads((run / "summary.json").read_text())
    cached = {s["stage"]: s["cached"] for s in summary["stages"]}
    order = ["ingest", "keep_long", "top_k", "pad"]
    if stage in order:
        done_before = order[: order.index(stage) + (1 if where == "done" else 0)]
        assert all(cached[s] for s in done_before), cached
        assert not any(cached[s] for s in order[len(done_before):]), cached
    else:  # killed while publishing the final files: every stage was done
        assert all(cached.values()), cached


def test_kill_after_a_config_change_never_reuses_the_old_marker(toy):
    """Run A finishes; run B (other threshold) dies after publishing the stage's files but before its
    stats.json; resuming with A's config must rebuild the stage, not trust A's stale stats.json."""
    run = toy["base"] / "stale"
    assert _drive(run, [toy["src"]], TOY_RECIPE, batch_size=8).returncode == 0
    other = [["keep_long", {"min_chars": 30}], *TOY_RECIPE[1:]]
    killed = _drive(run, [toy["src"]], other, batch_size=8, crash="keep_long:published")
    assert killed.returncode in KILLED
    assert _drive(run, [toy["src"]], TOY_RECIPE, batch_size=8).returncode == 0
    _assert_same_output(run, toy["clean"])


@pytest.fixture
def toy_stages(monkeypatch):
    for name, target in TOY_STAGES.items():
        monkeypatch.setitem(STAGES, name, target)


def test_changing_a_later_threshold_reruns_only_that_stage_onward(toy, toy_stages, tmp_path):
    run = tmp_path / "run"
    stages = [(n, dict(c)) for n, c in TOY_RECIPE]
    pipeline.curate([toy["src"]], stages, run, batch_size=8)
    stages[1] = ("top_k", {"k": 10})
    summary = pipeline.curate([toy["src"]], stages, run, resume=True, batch_size=8)
    assert [s.cached for s in summary.stages] == [True, True, False, False]
    assert summary.rows_out == 10 + 5
    stages[2] = ("pad", {"extra": 2})
    summary = pipeline.curate([toy["src"]], stages, run, resume=True, batch_size=8)
    assert [s.cached for s in summary.stages] == [True, True, True, False]
    assert summary.rows_out == 10 + 2


def test_a_stage_whose_files_went_missing_is_rebuilt(toy, toy_stages, tmp_path):
    """A cache hit needs the stage's files with the row counts its stats.json names, not just the stats."""
    run = tmp_path / "run"
    stages = [(n, dict(c)) for n, c in TOY_RECIPE]
    pipeline.curate([toy["src"]], stages, run, batch_size=8)
    (run / "02_top_k" / "output.parquet").unlink()
    (run / "01_keep_long" / "ledger.parquet").write_bytes((run / "00_ingest" / "ledger.parquet").read_bytes())
    summary = pipeline.curate([toy["src"]], stages, run, resume=True, batch_size=8)
    assert [s.cached for s in summary.stages] == [True, False, False, True]
    _assert_same_output(run, toy["clean"])


# --------------------------------------------------------------------------------------------------
# the real stages of the demo recipe


def _demo_stages(**override: dict) -> list[list]:
    """The demo recipe's stages with absolute paths; select uses hashing embeddings (no model)."""

    recipe = yaml.safe_load(DEMO_RECIPE.read_text())
    recipe = {k: recipe[k] for k in ("name", "sources", "stages")}
    for entry in recipe["stages"]:
        (name, cfg) = next(iter(entry.items()))
        if name == "select":
            cfg["embeddings"] = "hashing"
        cfg.update(override.get(name, {}))
    missing = [n for e in recipe["stages"] for n in e if not _importable(n)]
    if missing:
        pytest.skip(f"stage modules not written yet: {missing}")
    return recipe


def _importable(stage: str) -> bool:
    try:
        stage_class(stage)
    except ImportError:
        return False
    return True


def _write_recipe(path: Path, recipe: dict) -> Path:
    # sources/general resolve against the recipe folder: point them at the repo's demo data
    data = REPO / "data" / "demo"
    recipe = json.loads(json.dumps(recipe))
    recipe["sources"] = [str((DEMO_RECIPE.parent / s).resolve()) for s in recipe["sources"]]
    for entry in recipe["stages"]:
        cfg = next(iter(entry.values()))
        if "general" in cfg:
            cfg["general"] = [str((DEMO_RECIPE.parent / g).resolve()) for g in cfg["general"]]
    assert all(Path(s).exists() for s in recipe["sources"]), f"demo data missing in {data}"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True))
    return path


def _sftflow_curate(recipe: Path, out: Path, crash: str | None = None, popen: bool = False):
    cmd = [str(Path(sys.executable).parent / "sftflow"), "curate", "--recipe", str(recipe), "--out", str(out),
           "--local", "--resume"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.pop(CRASH_ENV, None)
    if crash:
        env[CRASH_ENV] = crash
    if popen:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> dict:
    """The demo recipe's sources and stages, written as a curation-only recipe."""
    base = tmp_path_factory.mktemp("demo")
    recipe = _write_recipe(base / "recipe.yaml", _demo_stages())
    data = yaml.safe_load(recipe.read_text())
    stages = [list(next(iter(e.items()))) for e in data["stages"]]
    return {"base": base, "recipe": recipe, "sources": data["sources"], "stages": stages,
            "names": [n for n, _ in stages]}


@pytest.fixture(scope="module")
def demo_clean(demo) -> dict:
    """An uninterrupted `sftflow curate --local` run of the demo stages (and how long it took)."""
    clean = demo["base"] / "clean"
    started = time.perf_counter()
    proc = _sftflow_curate(demo["recipe"], clean)
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"clean": clean / "curate", "seconds": seconds}


@pytest.mark.slow
def test_demo_stages_killed_in_every_stage_resume_to_the_clean_output(demo, demo_clean):
    """sftflow curate --local --resume, killed inside every stage in turn (one folder, each kill
    resuming the previous one), then after publishing, then finished."""
    run = demo["base"] / "chain"
    points = ["ingest:published", *(f"{name}:1" for name in demo["names"]), "final:output"]
    for point in points:
        killed = _sftflow_curate(demo["recipe"], run, crash=point)
        assert killed.returncode in KILLED, f"{point}: {killed.stderr[-2000:]}"
        _assert_no_partial_file_visible(run)
    assert _sftflow_curate(demo["recipe"], run).returncode == 0
    _assert_same_output(run / "curate", demo_clean["clean"])


@pytest.mark.slow
def test_demo_stages_with_many_batches_resume_to_the_clean_output(demo, tmp_path):
    """The real stages at batch size 32, killed between batches, after fit passes and after
    publishing, stage after stage in one folder; then resumed to the end."""
    clean = tmp_path / "clean"
    assert _drive(clean, demo["sources"], demo["stages"], batch_size=32, register={}).returncode == 0
    run = tmp_path / "run"
    points = []
    for i, name in enumerate(demo["names"]):
        if stage_class(name).needs_fit:
            points.append(f"{name}:fit")
        points.append(f"{name}:{2 + i % 2}" if i % 2 else f"{name}:published")
    for point in points:
        killed = _drive(run, demo["sources"], demo["stages"], batch_size=32, crash=point, register={})
        assert killed.returncode in KILLED, f"{point}: {killed.stderr[-2000:]}"
        _assert_no_partial_file_visible(run)
    assert _drive(run, demo["sources"], demo["stages"], batch_size=32, register={}).returncode == 0
    _assert_same_output(run, clean)


@pytest.mark.slow
def test_sigkill_after_random_delays_then_resume(demo, demo_clean):
    """Real SIGKILLs at seeded random moments of `sftflow curate --local --resume`, in one folder."""
    run = demo["base"] / "random"
    rng = random.Random(9)
    kills = 0
    for _ in range(6):
        proc = _sftflow_curate(demo["recipe"], run, popen=True)
        time.sleep(rng.uniform(0.5, max(1.0, demo_clean["seconds"])))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        _assert_no_partial_file_visible(run)
    assert kills >= 3  # the delays must actually land inside runs
    assert _sftflow_curate(demo["recipe"], run).returncode == 0
    _assert_same_output(run / "curate", demo_clean["clean"])


def test_editing_the_general_pool_reruns_the_mixer(demo, tmp_path):
    """The mixer's config names a file: its content, not just its name, belongs in the fingerprint."""
    if demo["names"][-1:] != ["mix"]:
        pytest.skip("the demo recipe does not end with a mix stage")
    pool = tmp_path / "general.jsonl"
    pool.write_bytes((REPO / "data" / "demo" / "general.jsonl").read_bytes())
    stages = [(n, {**c, "general": [str(pool)]} if n == "mix" else c) for n, c in demo["stages"]]
    run = tmp_path / "run"
    pipeline.curate(demo["sources"], stages, run)
    again = pipeline.curate(demo["sources"], stages, run, resume=True)
    assert all(s.cached for s in again.stages)
    lines = pool.read_text().splitlines()
    pool.write_text("\n".join(reversed(lines)) + "\n")  # same name, same rows, other bytes
    changed = pipeline.curate(demo["sources"], stages, run, resume=True)
    assert [s.cached for s in changed.stages] == [True] * len(stages) + [False]


def test_demo_threshold_change_reruns_from_that_stage(demo, tmp_path):
    names = demo["names"]
    if "dedup" not in names:
        pytest.skip("the demo recipe has no dedup stage")
    run = tmp_path / "run"
    first = pipeline.curate(demo["sources"], demo["stages"], run)
    stages = [(n, {**c, "threshold": 0.95} if n == "dedup" else c) for n, c in demo["stages"]]
    summary = pipeline.curate(demo["sources"], stages, run, resume=True)
    at = names.index("dedup") + 1  # +1: ingest comes first
    assert [s.cached for s in summary.stages] == [True] * at + [False] * (len(names) + 1 - at)
    near = [s.dropped_by_reason.get("near_duplicate", 0) for s in (first, summary)
            for s in s.stages if s.stage == "dedup"]
    assert near[1] < near[0]  # the new threshold took effect


@pytest.mark.slow
def test_dedup_index_survives_a_kill_between_commit_and_publish(demo, tmp_path):
    """With a persistent index, dedup commits this run's rows to the index while processing its last
    batch. A kill before the stage's stats.json is written makes the resume rerun dedup against an
    index that already holds the run's own rows: they must not count as earlier runs' rows."""
    if "dedup" not in demo["names"]:
        pytest.skip("the demo recipe has no dedup stage")

    def with_index(index: Path) -> list:
        return [[n, {**c, "index": str(index)} if n == "dedup" else c] for n, c in demo["stages"]]

    clean = tmp_path / "clean"
    assert _drive(clean, demo["sources"], with_index(tmp_path / "index-clean"), 2048, register={}).returncode == 0
    run = tmp_path / "run"
    index = tmp_path / "index-run"
    killed = _drive(run, demo["sources"], with_index(index), 2048, crash="dedup:published", register={})
    assert killed.returncode in KILLED
    resumed = _drive(run, demo["sources"], with_index(index), 2048, register={})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_same_output(run, clean)
