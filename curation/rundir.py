"""The layout of sftflow's folders, in one place: nobody else spells ``eval/verdict.json``.

A **run folder** (:class:`RunDir`) holds a whole run: ``curate/`` (a :class:`CurateDir`),
``split/{train,heldout}.parquet``, ``train/`` (a :class:`TrainDir`), ``eval/`` (an
:class:`EvalDir`), ``report.html`` and ``run.json``. A **curate folder** is what a curation run or
a single stage command writes: ``NN_<stage>/{output,ledger}.parquet + stats.json`` per stage
(``00_ingest`` first when the sources are ingested), then ``output.parquet`` (the curated
records), ``ledger.parquet`` (every dropped row of every stage) and ``summary.json`` (the funnel,
written last: a finished run). A **training folder** is what ``train`` writes (its formats are
:mod:`training.artifacts`'), an **eval folder** what ``eval`` writes.

Only paths live here — no reading or writing — so every layer can use it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class _Folder:
    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    def __fspath__(self) -> str:
        return str(self.root)

    def __str__(self) -> str:
        return str(self.root)


@dataclass(frozen=True)
class CurateDir(_Folder):
    """A curation output folder (a run's ``curate/``, or a stage command's ``--out``)."""

    def stage(self, index: int, name: str) -> Path:
        """The folder of the ``index``-th step (0 = ingest) named ``name``."""
        return self.root / f"{index:02d}_{name}"

    def stages(self) -> list[Path]:
        """The step folders there are, in order."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.iterdir() if p.is_dir() and re.match(r"^\d\d_", p.name))

    @property
    def output(self) -> Path:
        return self.root / "output.parquet"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"


@dataclass(frozen=True)
class TrainDir(_Folder):
    """A training output folder (see :mod:`training.artifacts` for what each file holds)."""

    @property
    def adapter(self) -> Path:
        return self.root / "adapter"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def config(self) -> Path:
        return self.root / "train_config.json"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def log(self) -> Path:
        return self.root / "train_log.jsonl"

    @property
    def dropped(self) -> Path:
        return self.root / "dropped.jsonl"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def data(self) -> CurateDir:
        """Where training data given as raw files (jsonl, csv...) is ingested first."""
        return CurateDir(self.root / "data")


@dataclass(frozen=True)
class EvalDir(_Folder):
    """An eval output folder."""

    @property
    def verdict(self) -> Path:
        return self.root / "verdict.json"

    @property
    def items(self) -> Path:
        """One row per task item: both models' predictions and scores (``evals.run``)."""
        return self.root / "items.parquet"

    @property
    def target_data(self) -> CurateDir:
        """Where target-task data given as raw files is ingested first."""
        return CurateDir(self.root / "target_data")


@dataclass(frozen=True)
class RunDir(_Folder):
    """A whole run: curate → split → train → eval (+ report, run.json)."""

    @classmethod
    def new(cls, name: str, runs_dir: str | Path) -> RunDir:
        """``<runs_dir>/<name>-<YYYYmmdd-HHMMSS>``."""
        stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
        return cls(Path(runs_dir) / f"{name}-{stamp}")

    @property
    def curate(self) -> CurateDir:
        return CurateDir(self.root / "curate")

    @property
    def split(self) -> Path:
        return self.root / "split"

    @property
    def split_train(self) -> Path:
        return self.split / "train.parquet"

    @property
    def split_heldout(self) -> Path:
        return self.split / "heldout.parquet"

    @property
    def train(self) -> TrainDir:
        return TrainDir(self.root / "train")

    @property
    def eval(self) -> EvalDir:
        return EvalDir(self.root / "eval")

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def info(self) -> Path:
        """``run.json``: the recipe and what came out."""
        return self.root / "run.json"

    @property
    def library_log(self) -> Path:
        """``library.log``: the libraries' warnings and progress bars, kept off the terminal."""
        return self.root / "library.log"

    @property
    def mix(self) -> Path:
        """An experiment arm's mix step (task rows + replayed general rows)."""
        return self.root / "mix"

    def arm(self, ratio: float) -> RunDir:
        """The folder of one arm of a replay experiment."""
        return RunDir(self.root / f"ratio_{ratio:g}")

    def arm_named(self, name: str) -> RunDir:
        """The folder of one named arm of an experiment (``raw``, ``curated``, an arms experiment's arm: its stages under ``curate/``)."""
        return RunDir(self.root / f"arm_{name}")

    @property
    def arm_key(self) -> Path:
        """An experiment arm's settings fingerprint: a finished arm with the same key is reused."""
        return self.root / "arm.json"

    def experiment_json(self, kind: str) -> Path:
        """An experiment's comparison (``replay.json``, ``arms.json``, ``curation.json``)."""
        return self.root / f"{kind}.json"

    def experiment_md(self, kind: str) -> Path:
        """An experiment's comparison tables as markdown."""
        return self.root / f"{kind}.md"

    def experiment_png(self, kind: str) -> Path:
        """An experiment's plot."""
        return self.root / f"{kind}.png"

    @property
    def replay_json(self) -> Path:
        return self.experiment_json("replay")

    @property
    def replay_md(self) -> Path:
        return self.experiment_md("replay")

    @property
    def replay_png(self) -> Path:
        return self.experiment_png("replay")


__all__ = ["CurateDir", "EvalDir", "RunDir", "TrainDir"]
