"""A run's steps as plain functions (no Prefect here), and :func:`run`, the one place they are wired.

curate → split → train → eval → gate, into one run folder (:class:`curation.rundir.RunDir`)::

    RUN/curate/...        (see curation.pipeline)
    RUN/split/train.parquet, heldout.parquet
    RUN/train/...         (see training.artifacts)
    RUN/eval/verdict.json (see evals.run)
    RUN/run.json          what ran, with which recipe, and the outcome

:func:`run` is used by everything that runs a recipe: the Prefect flows (``flows.flows``: each step a
task, artifacts after each), ``--local`` (progress bars), the sharded flow (a sharded executor) and
the experiments (curate + split, then their arms). What differs between them is a :class:`Steps`
object — how each step is executed and what is published after it — never the wiring.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

from curation.io import folder_lock, read_json, write_json
from curation.memory import release_memory, tune_allocator
from curation.pipeline import CurateSummary, curate, records_input, split_heldout
from curation.rundir import RunDir
from curation.runner import Executor
from curation.workers import local_executor
from evals.verdict import Contamination, Verdict
from flows.recipe import Recipe

STEPS = ("curate", "split", "train", "eval", "gate")
Step = Literal["curate", "split", "train", "eval", "gate"]
#: what :meth:`Steps.after` is called with: a step, or ``export`` (when the recipe has an ``export:`` section)
Published = Literal["curate", "split", "train", "eval", "export"]


class GateFailed(RuntimeError):
    """The regression gate said the tuned model got worse (or could not tell) and the recipe says fail."""


def new_run_dir(recipe: Recipe, out: str | os.PathLike | None = None) -> RunDir:
    """``out``, or a new time-stamped folder under the recipe's ``runs_dir``."""
    if out:
        return RunDir(Path(out))
    base = Path(recipe.runs_dir)
    return RunDir.new(recipe.name, base if base.is_absolute() else Path.cwd() / base)


# ------------------------------------------------------------------------------------------------
# the steps


def step_curate(recipe: Recipe, rd: RunDir, resume: bool = False, progress_factory=None, on_stage=None,
                executor: Executor | None = None, workers: int | None = None) -> CurateSummary:
    """Curate on ``executor``, or else on ``workers`` local processes (None: ``$SFTFLOW_WORKERS``, else one
    per core); the models curation loaded are freed when it ends (training and eval do not use them)."""
    try:
        with contextlib.nullcontext(executor) if executor is not None else local_executor(workers) as ex:
            return curate(
                recipe.source_paths(),
                recipe.stage_list(),
                rd.curate.root,
                ingest_config=recipe.ingest,
                resume=resume,
                progress_factory=progress_factory,
                on_stage=on_stage,
                executor=ex,
            )
    finally:
        release_memory()


def step_split(recipe: Recipe, rd: RunDir) -> dict:
    h = recipe.heldout
    train_p, held_p, n_held = split_heldout(rd.curate.output, rd.split, h.fraction, h.max_rows, h.seed)
    return {"train": str(train_p), "heldout": str(held_p), "heldout_rows": n_held}


def step_train(recipe: Recipe, data: str | os.PathLike, rd: RunDir, resume: bool = False, progress=None) -> dict:
    from training.sft import train

    tune_allocator()  # the step's freed activations go back to the OS (curation/memory.py)
    try:
        return train(recipe.train_config(), data, rd.train.root, resume=resume, progress=progress)
    finally:
        release_memory()  # the trained model: eval loads what it needs itself


def step_eval(recipe: Recipe, rd: RunDir, heldout: str | os.PathLike | None, progress=None,
              curation: Sequence[str | os.PathLike] | None = None) -> Verdict:
    """Evaluate ``rd``'s trained model; the verdict gets a ``contamination`` block from the stages that made
    the training data (``curation``: stage folders, default ``rd``'s curation) and is rewritten with it."""
    from evals.run import evaluate
    from flows.contamination import verdict_contamination

    overrides: dict[str, Any] = {}
    target = (recipe.eval or {}).get("target_data")
    if target is not None:  # the recipe's own target data: any source ingest reads
        overrides["target_data"] = str(records_input([str(recipe.resolve(target))], rd.eval.target_data.root))
    elif heldout:
        overrides["target_data"] = str(heldout)
    cfg = recipe.eval_config(**overrides)
    tune_allocator()
    try:
        verdict = evaluate(cfg, recipe.train_config().model, str(rd.train.root), rd.eval.root, progress=progress)
    finally:
        release_memory()
    stage_dirs = rd.curate.stages() if curation is None else curation
    block = verdict_contamination(stage_dirs, list(verdict.tasks))
    verdict = verdict.model_copy(update={"contamination": Contamination.model_validate(block)})
    verdict.write(rd.eval.verdict)
    return verdict


def step_export(recipe: Recipe, rd: RunDir) -> Path:
    """The recipe's ``export:``: the curated rows + dataset card (default into ``RUN/export``); returns the folder."""
    from flows.export import export_run

    cfg = recipe.export
    assert cfg is not None, "step_export needs a recipe with an export section"
    return export_run(rd.root, recipe.resolve(cfg.out) if cfg.out else None, cfg)


def gate(recipe: Recipe, verdict: Verdict) -> str:
    """Apply the recipe's gate to a verdict: returns 'ok' / 'warn', raises GateFailed on 'fail'."""
    v = verdict.verdict
    action = {"REGRESSED": recipe.gate.on_regressed, "INCONCLUSIVE": recipe.gate.on_inconclusive}.get(v)
    if action == "fail":
        rec = verdict.recommendation or ""
        raise GateFailed(f"regression gate: verdict {v}. {rec}".strip())
    return "warn" if action == "warn" else "ok"


def write_run_info(rd: RunDir | Path, recipe: Recipe, **info: Any) -> None:
    """Merge ``info`` (and the recipe) into ``run.json``."""
    path = RunDir(Path(rd)).info
    prev = read_json(path) if path.exists() else {}
    prev.update({"recipe": recipe.model_dump(mode="json"), **info})
    write_json(path, prev)


class Steps:
    """How each step of a run is executed, and what happens after it; the base class runs them plainly.

    Subclasses wrap the steps (Prefect tasks in ``flows.flows``, progress bars in the CLI) and publish
    after each (:meth:`after`: artifacts, the report); ``executor`` runs the curation stages, or when it is
    None a pool of ``workers`` local processes (None: ``$SFTFLOW_WORKERS``, else one per core).
    """

    executor: Executor | None = None
    workers: int | None = None

    def curate(self, recipe: Recipe, rd: RunDir, resume: bool) -> CurateSummary:
        return step_curate(recipe, rd, resume, executor=self.executor, workers=self.workers)

    def split(self, recipe: Recipe, rd: RunDir) -> dict:
        return step_split(recipe, rd)

    def train(self, recipe: Recipe, data: str, rd: RunDir, resume: bool) -> dict:
        return step_train(recipe, data, rd, resume)

    def eval(self, recipe: Recipe, rd: RunDir, heldout: str | None) -> Verdict:
        return step_eval(recipe, rd, heldout)

    def export(self, recipe: Recipe, rd: RunDir) -> Path:
        return step_export(recipe, rd)

    def gate(self, recipe: Recipe, verdict: Verdict) -> str:
        return gate(recipe, verdict)

    def after(self, step: Published, recipe: Recipe, rd: RunDir, result: Any) -> None:
        """Called after each step with its result (``run.json`` is already updated)."""

    def finish(self, recipe: Recipe, rd: RunDir, out: dict[str, Any]) -> None:
        """Called once when every step that ran has finished (before the gate decides)."""

    def gate_outcome(self, recipe: Recipe, verdict: Verdict, outcome: str) -> None:
        """Called when the gate passed or warned (a failed gate raises :class:`GateFailed`)."""


class ProgressSteps(Steps):
    """The plain steps, reporting progress: ``factory(name, total)`` returns a callback that takes counts
    (the CLI's progress bars)."""

    def __init__(self, factory: Callable[[str, int | None], Callable[[int], None]], workers: int | None = None):
        self.factory = factory
        self.workers = workers

    def curate(self, recipe: Recipe, rd: RunDir, resume: bool) -> CurateSummary:
        return step_curate(recipe, rd, resume, progress_factory=self.factory, executor=self.executor,
                           workers=self.workers)

    def train(self, recipe: Recipe, data: str, rd: RunDir, resume: bool) -> dict:
        bar = step_bar(self.factory("train steps", recipe.train_config().max_steps))
        return step_train(recipe, data, rd, resume, progress=bar)

    def eval(self, recipe: Recipe, rd: RunDir, heldout: str | None) -> Verdict:
        return step_eval(recipe, rd, heldout, progress=eval_bars(self.factory))


def step_bar(advance: Callable[[int], None]) -> Callable[[int], None]:
    """Training reports the step number; the bar advances one per step."""
    return lambda step: advance(1)


def eval_bars(factory: Callable[[str, int | None], Callable[[int], None]]) -> Callable[[str, int, int], None]:
    """Eval reports (stage, done, total): one bar per stage."""
    bars: dict[str, tuple[Callable[[int], None], list[int]]] = {}

    def report(stage: str, done: int, total: int) -> None:
        if stage not in bars:
            bars[stage] = (factory(f"eval {stage}", total), [0])
        advance, seen = bars[stage]
        advance(done - seen[0])
        seen[0] = done

    return report


def run(
    recipe: Recipe,
    run_dir: str | os.PathLike | None = None,
    *,
    resume: bool = False,
    steps: Steps | None = None,
    start: Step = "curate",
    upto: Step = "gate",
) -> dict[str, Any]:
    """curate → split → train → eval → gate for ``recipe`` in one run folder (held locked), as far as
    the recipe goes (no ``train:`` section: curation only; no ``eval:``: no eval) and ``upto`` says.

    ``start="split"`` fine-tunes an already curated folder;
    ``start="eval"`` evaluates an already trained one. Returns what each step returned:
    ``{"run_dir", "curate", "split", "train", "verdict", "export", "gate"}`` (the steps that ran). With an
    ``export:`` section the run exports its curated rows and dataset card after its last step (not when it
    stops at ``train``), before the gate decides. Raises
    :class:`GateFailed` when the gate fails — after everything, the report included, is written.
    """
    steps = steps or Steps()
    rd = RunDir(Path(run_dir)) if run_dir is not None else new_run_dir(recipe)
    wanted = STEPS[STEPS.index(start): STEPS.index(upto) + 1]
    out: dict[str, Any] = {"run_dir": str(rd)}
    with folder_lock(rd.root):
        if "curate" in wanted:
            out["curate"] = steps.curate(recipe, rd, resume)
            write_run_info(rd, recipe, curate=out["curate"])
            steps.after("curate", recipe, rd, out["curate"])
        if recipe.train is not None:
            _train_and_eval(recipe, rd, steps, wanted, resume, out)
        # the export's card carries what ran before it (the verdict too); a run that stops at train does not export
        if recipe.export is not None and upto in ("curate", "gate"):
            out["export"] = str(steps.export(recipe, rd))
            write_run_info(rd, recipe, export=out["export"])
            steps.after("export", recipe, rd, out["export"])
        steps.finish(recipe, rd, out)
        if "gate" in wanted and "verdict" in out:
            out["gate"] = steps.gate(recipe, out["verdict"])  # raises GateFailed → the flow run fails
            steps.gate_outcome(recipe, out["verdict"], out["gate"])
    return out


def _train_and_eval(recipe: Recipe, rd: RunDir, steps: Steps, wanted: Sequence[str], resume: bool,
                    out: dict[str, Any]) -> None:
    if "split" in wanted:
        out["split"] = steps.split(recipe, rd)
        write_run_info(rd, recipe, split=out["split"])
        steps.after("split", recipe, rd, out["split"])
    if "train" in wanted:
        out["train"] = steps.train(recipe, str(rd.split_train), rd, resume)
        write_run_info(rd, recipe, train=out["train"])
        steps.after("train", recipe, rd, out["train"])
    if recipe.eval is not None and "eval" in wanted:
        heldout = str(rd.split_heldout) if rd.split_heldout.exists() else None
        out["verdict"] = steps.eval(recipe, rd, heldout)
        write_run_info(rd, recipe, verdict=out["verdict"].verdict)
        steps.after("eval", recipe, rd, out["verdict"])
