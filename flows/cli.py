"""``sftflow``: the command line.

Single-stage commands (ingest, dedup, quality, score, select, mix, train, merge, eval) call the
stage cores directly and need no Prefect; ``curate``, ``run`` and ``demo`` run the Prefect flows
(``--local`` runs the same steps without Prefect). Errors in recipes or inputs end with one clear
message and exit code 2, not a traceback.
"""

from __future__ import annotations

import json
import os
import sys

# OpenMP threads sleep rather than spin while waiting: with anything else on the CPU (the Prefect server,
# a second job) spinning made torch on 2 cores up to ~10x slower here. Set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
from pathlib import Path
from typing import Any, Literal

import typer

from curation.errors import SftflowError
from flows.console import UserError, app, console, library_output_to, out_console, progress_bars

REPO = Path(__file__).resolve().parents[1]
WORKERS_HELP = "worker processes for per-row stages (default: $SFTFLOW_WORKERS, else one per core)"
DEMO_RECIPE = REPO / "configs" / "demo.yaml"


def main() -> None:
    """The ``sftflow`` entry point: a user error is one line on stderr and its exit code (2), never a traceback."""
    try:
        app()
    except SftflowError as e:
        console.print(f"[bold red]error:[/] {e}", soft_wrap=True, highlight=False)
        sys.exit(e.exit_code)
    except Exception as e:
        # a full disk in a write that does not name its file (training, caches): still one line
        if not _disk_full(e):
            raise
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        console.print(f"[bold red]error:[/] no space left on device{where}: {e}. Free some space and run the same "
                      "command again (--resume skips what is finished)", soft_wrap=True, highlight=False)
        sys.exit(2)


def _disk_full(e: BaseException) -> bool:
    from curation.io import is_disk_full

    sqlite3 = sys.modules.get("sqlite3")
    return is_disk_full(e) or (sqlite3 is not None and isinstance(e, sqlite3.OperationalError)
                               and "disk is full" in str(e))


def _run_single_stage(name: str, files: list[str], out: Path, config: dict[str, Any], sets: list[str],
                      workers: int | None = None) -> None:
    """One stage as a one-stage curation: ``out`` gets the steps' folders, output, the whole ledger, summary."""
    from curation.pipeline import curate, is_records_file
    from curation.workers import local_executor
    from flows.recipe import apply_overrides, parse_overrides
    from flows.summary import print_curation

    config = apply_overrides(config, parse_overrides(sets))
    records = files[0] if len(files) == 1 and is_records_file(files[0]) else None
    with progress_bars() as pf, local_executor(workers) as executor:
        summary = curate(files, [(name, config)], out, records=records, progress_factory=pf, executor=executor)
    print_curation(summary, out_console)
    out_console.print(f"output: {out / 'output.parquet'}; ledger: {out / 'ledger.parquet'}")


def _kv(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        for part in item.split(","):
            if "=" not in part:
                raise UserError(f"--field-map {part!r}: expected canonical=source, e.g. instruction=question")
            k, v = part.split("=", 1)
            out[k.strip()] = v.strip()
    return out


# ------------------------------------------------------------------------------------------------
# curation commands


@app.command()
def ingest(
    files: list[str] = typer.Argument(..., help="files, folders, globs or hf://owner/name?split=train"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    field_map: list[str] = typer.Option([], "--field-map", help="canonical=source, e.g. instruction=question"),
) -> None:
    """Read instruction data of any supported format into the record schema (+ ledger)."""
    from curation.errors import format_validation_error
    from curation.ingest import IngestConfig, expand_sources
    from curation.ingest import ingest as run_ingest

    try:
        cfg = IngestConfig(field_map=_kv(field_map))
    except Exception as e:  # pydantic ValidationError
        raise UserError(format_validation_error(e) if hasattr(e, "errors") else str(e)) from None
    expand_sources(files)  # a missing file fails here, before any work
    with progress_bars() as pf:
        res = run_ingest(files, out, cfg, progress=pf("ingest", None))
    st = res.stats
    out_console.print(f"ingest: {st.rows_in} rows in → {st.rows_out} records in {res.output}")
    out_console.print(f"dropped: {st.dropped_by_reason or 'none'} (ledger: {res.ledger})")
    for line in res.problems():
        console.print(f"[yellow]warning:[/] {line}", soft_wrap=True, highlight=False)
    if st.rows_in > 0 and st.rows_out == 0:
        console.print("[bold red]error:[/] no row could be read; see the ledger for the reason of each")
        raise typer.Exit(1)
    if st.rows_in == 0:
        console.print("[bold red]error:[/] the sources contain no rows")
        raise typer.Exit(1)


@app.command()
def dedup(
    files: list[str] = typer.Argument(...),
    out: Path = typer.Option(..., "--out"),
    threshold: float | None = typer.Option(None, "--threshold", help="Jaccard threshold for near duplicates"),
    num_perm: int | None = typer.Option(None, "--num-perm"),
    ngram: int | None = typer.Option(None, "--ngram"),
    index: str | None = typer.Option(None, "--index", help="persistent index folder or redis://host:port/db"),
    sets: list[str] = typer.Option([], "--set", help="key=value config overrides"),
) -> None:
    """Exact + MinHash-LSH near-duplicate removal."""
    cfg = {k: v for k, v in dict(threshold=threshold, num_perm=num_perm, ngram=ngram, index=index).items()
           if v is not None}
    _run_single_stage("dedup", files, out, cfg, sets)


@app.command()
def quality(
    files: list[str] = typer.Argument(..., help="input files, or the word 'train' to train the classifier"),
    out: Path = typer.Option(..., "--out", help="output folder (or the model path with 'train')"),
    model: str | None = typer.Option(None, "--model", help="fastText quality model to apply"),
    pos: list[str] = typer.Option([], "--pos", help="with 'train': files of good examples"),
    neg: list[str] = typer.Option([], "--neg", help="with 'train': files of bad examples"),
    sets: list[str] = typer.Option([], "--set"),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """Rule heuristics + fastText quality filter. `sftflow quality train --pos F --neg F --out MODEL` trains one."""
    if files and files[0] == "train":
        from curation.quality_model import train_classifier

        if not pos or not neg:
            raise UserError("quality train needs --pos and --neg files")
        metrics = train_classifier(pos, neg, str(out))
        out_console.print(json.dumps(metrics, indent=2, ensure_ascii=False, default=str))
        return
    cfg = {"model": model} if model else {}
    _run_single_stage("quality", files, out, cfg, sets, workers)


@app.command()
def decontam(
    files: list[str] = typer.Argument(..., help="records parquet or any ingestable files"),
    out: Path = typer.Option(..., "--out", help="output folder"),
    suite: str = typer.Option("full", "--suite", help="eval suite (or comma-separated tasks): every item is checked"),
    data_dir: str | None = typer.Option(
        None, "--data-dir", help="local benchmark copies, as for eval (default $SFTFLOW_DATA_DIR, else the hub)"
    ),
    skip_missing: bool = typer.Option(False, "--skip-missing", help="skip (and report) benchmarks without data"),
    sets: list[str] = typer.Option([], "--set", help="key=value config overrides, e.g. ngram=10"),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """Drop rows containing an item of any benchmark of an eval suite (reason `contaminated`)."""
    cfg: dict[str, Any] = {"suite": suite}
    if data_dir:
        cfg["data_dir"] = str(Path(data_dir).expanduser().resolve())
    if skip_missing:
        cfg["skip_missing"] = True
    _run_single_stage("decontam", files, out, cfg, sets, workers)
    from curation.decontam import DecontamFigures
    from curation.io import read_json
    from flows.summary import print_contamination

    stats_files = sorted(out.glob("*_decontam/stats.json"))
    if stats_files:
        extra = read_json(stats_files[-1]).get("extra", {})
        print_contamination(DecontamFigures.model_validate(extra), out_console)


@app.command()
def score(files: list[str] = typer.Argument(...), out: Path = typer.Option(..., "--out"),
          sets: list[str] = typer.Option([], "--set"),
          workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP)) -> None:
    """Complexity, task type and diversity features for every record."""
    _run_single_stage("score", files, out, {}, sets, workers)


@app.command()
def select(files: list[str] = typer.Argument(...), out: Path = typer.Option(..., "--out"),
           budget: int | None = typer.Option(None, "--budget"), sets: list[str] = typer.Option([], "--set")) -> None:
    """Keep the hardest, best and most varied records within a budget."""
    _run_single_stage("select", files, out, {"budget": budget} if budget else {}, sets)


@app.command()
def mix(
    task: list[str] = typer.Option(..., "--task", help="task data (records parquet or any ingestable file)"),
    general: list[str] = typer.Option(..., "--general", help="general-data pool files"),
    ratio: float = typer.Option(0.2, "--ratio", help="share of the final mixture that is general data"),
    out: Path = typer.Option(..., "--out"),
    by: str = typer.Option("rows", "--by", help="rows or tokens"),
    seed: int = typer.Option(0, "--seed"),
    sets: list[str] = typer.Option([], "--set"),
) -> None:
    """Mix general data back in (replay) against catastrophic forgetting."""
    _run_single_stage("mix", task, out, {"general": general, "ratio": ratio, "by": by, "seed": seed}, sets)


@app.command()
def curate(
    recipe: Path = typer.Option(..., "--recipe"),
    out: str | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, "--resume", help="skip stages already done with the same input+config"),
    sets: list[str] = typer.Option([], "--set"),
    local: bool = typer.Option(False, "--local", help="run without Prefect"),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """Ingest + every curation stage of a recipe."""
    _run_recipe(recipe, out, resume, sets, local, upto="curate", workers=workers)


# ------------------------------------------------------------------------------------------------
# training and eval


@app.command()
def train(
    model: str = typer.Option(..., "--model", help="hub id, local folder, or alias (smollm2-135m-instruct, tiny-random-llama)"),
    data: list[str] = typer.Option(..., "--data", help="training data: a records parquet (a curation output) or "
                                                        "any file ingest reads (jsonl, json, csv, parquet, hf://...)"),
    method: str = typer.Option("lora", "--method", help="lora, ia3, bitfit, adapter or full"),
    out: Path = typer.Option(..., "--out"),
    precision: str = typer.Option("auto", "--precision", help="auto, fp32, bf16 or fp16"),
    max_steps: int | None = typer.Option(None, "--max-steps"),
    resume: bool = typer.Option(False, "--resume"),
    sets: list[str] = typer.Option([], "--set"),
) -> None:
    """Supervised fine-tuning (no Prefect needed)."""
    from curation.errors import format_validation_error
    from curation.io import folder_lock
    from curation.memory import tune_allocator
    from curation.pipeline import records_input
    from curation.rundir import TrainDir
    from flows.recipe import parse_overrides
    from flows.runner import step_bar
    from training.config import TrainConfig
    from training.models import resolve_model
    from training.sft import train as run_train

    cfg: dict[str, Any] = {"model": model, "method": method, "precision": precision, **parse_overrides(sets)}
    if max_steps is not None:
        cfg["max_steps"] = max_steps
    try:
        tc = TrainConfig.model_validate(cfg)
    except Exception as e:
        raise UserError(format_validation_error(e, "train") if hasattr(e, "errors") else str(e)) from None
    resolve_model(tc.model)  # an unknown model fails here, before the data is read
    tune_allocator()  # freed activations go back to the OS (curation/memory.py)
    with folder_lock(out), progress_bars() as pf:
        records = records_input(data, TrainDir(out).data.root, progress_factory=pf)
        summary = run_train(tc, records, out, resume=resume, progress=step_bar(pf("train steps", tc.max_steps)))
    # id lists stay in summary.json; the terminal gets the figures
    compact = {k: v for k, v in summary.items() if not isinstance(v, (list, dict)) or k == "dropped_by_reason"}
    out_console.print(json.dumps(compact, indent=2, default=str))
    out_console.print(f"outputs: {out}")


@app.command()
def merge(base: str = typer.Option(..., "--base"), adapter: Path = typer.Option(..., "--adapter"),
          out: Path = typer.Option(..., "--out")) -> None:
    """Merge a trained adapter into its base model (a full safetensors model folder)."""
    from training.merge import merge as run_merge

    run_merge(base, adapter, out)
    out_console.print(f"merged model: {out}")


@app.command("eval")
def eval_cmd(
    base: str = typer.Option(..., "--base"),
    adapter: str | None = typer.Option(None, "--adapter", help="a training output folder"),
    suite: str = typer.Option("quick", "--suite", help="quick, full, or comma-separated task names"),
    out: Path = typer.Option(..., "--out"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="local benchmark copies (else the hub)"),
    limit: int | None = typer.Option(None, "--limit", help="items per task"),
    target_data: list[str] = typer.Option([], "--target-data", help="held-out target-task data (any file ingest "
                                                                      "reads): the gain fine-tuning brought"),
    sets: list[str] = typer.Option([], "--set"),
) -> None:
    """Before/after general-capability eval with paired statistics; writes verdict.json."""
    from curation.errors import MissingFileError, format_validation_error
    from curation.io import folder_lock
    from curation.memory import tune_allocator
    from curation.pipeline import records_input
    from curation.rundir import EvalDir
    from evals.run import EvalConfig, evaluate
    from flows.recipe import parse_overrides
    from flows.runner import eval_bars
    from flows.summary import print_verdict

    cfg: dict[str, Any] = {"suite": suite, **parse_overrides(sets)}
    if data_dir:
        cfg["data_dir"] = data_dir
    if limit is not None:
        cfg["limit"] = limit
    try:
        ec = EvalConfig.model_validate(cfg)
    except Exception as e:
        raise UserError(format_validation_error(e, "eval") if hasattr(e, "errors") else str(e)) from None
    if adapter is not None and not Path(adapter).exists():
        raise MissingFileError(f"--adapter {adapter}: no such folder")
    tune_allocator()
    with folder_lock(out), progress_bars() as pf:
        if target_data:
            ec = ec.model_copy(update={"target_data": str(records_input(target_data, EvalDir(out).target_data.root,
                                                                         progress_factory=pf))})
        verdict = evaluate(ec, base, adapter, out, progress=eval_bars(pf))
    print_verdict(verdict, out_console)
    out_console.print(f"verdict: {EvalDir(out).verdict}")


# ------------------------------------------------------------------------------------------------
# whole runs


@app.command()
def run(
    recipe: Path = typer.Option(..., "--recipe"),
    out: str | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, "--resume"),
    sets: list[str] = typer.Option([], "--set"),
    local: bool = typer.Option(False, "--local", help="run without Prefect"),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """curate → SFT → before/after eval → gate, as one Prefect flow."""
    _run_recipe(recipe, out, resume, sets, local, workers=workers)


@app.command()
def demo(
    out: str | None = typer.Option(None, "--out"),
    sets: list[str] = typer.Option([], "--set"),
    local: bool = typer.Option(False, "--local"),
    workers: int | None = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
) -> None:
    """The whole pipeline on the embedded demo data and SmolLM2-135M (offline, CPU ≤ 15 min)."""
    _run_recipe(DEMO_RECIPE, out, False, sets, local, workers=workers)


@app.command()
def experiment(
    recipe: Path = typer.Option(..., "--recipe", help="an experiment recipe, e.g. configs/experiments/replay.yaml"),
    out: str | None = typer.Option(None, "--out", help="run folder (reuse one to reuse its finished arms)"),
    sets: list[str] = typer.Option([], "--set"),
    search: str | None = typer.Option(None, "--search", help="replay: raise the replay ratio step by step "
                                      "(experiment.search) until an arm PASSes"),
) -> None:
    """Experiments: replay ratios, the replay search, named arms (e.g. selection by IFD / complexity / random),
    curated vs raw data; every arm compared with the first on the same items."""
    from flows.experiments import arms_flow, curation_flow, replay_flow, replay_setup
    from flows.recipe import load_recipe

    r = load_recipe(recipe, sets)
    if search is not None and search != "replay":
        raise UserError(f"--search {search}: the only search is `replay`")
    if search is None and r.experiment is None:
        raise UserError(f"{recipe}: no `experiment:` section (or use --search replay)")
    if search is not None or r.experiment.kind == "replay":  # type: ignore[union-attr]
        try:
            replay_setup(r)  # a missing general pool is one line now, not after curation
        except SftflowError as e:
            raise UserError(f"{recipe}: {e}") from None
    from flows.server import own_ephemeral_server

    own_ephemeral_server()  # watched: a killed experiment leaves no Prefect server behind
    cmd = " ".join(["sftflow experiment --recipe", str(recipe), *[f"--set {s}" for s in sets]]
                   + (["--search", search] if search else []))
    if search is None and r.experiment is not None and r.experiment.kind == "curation":
        res = curation_flow(r, out, command=cmd)
    elif search is None and r.experiment is not None and r.experiment.kind == "arms":
        res = arms_flow(r, out, command=cmd)
    else:
        res = replay_flow(r, out, command=cmd, search=search is not None)
    out_console.print(res["markdown"])
    out_console.print(f"run folder: {res['run_dir']}")


def _run_recipe(recipe: Path, out: str | None, resume: bool, sets: list[str], local: bool,
                upto: Literal["curate", "gate"] = "gate", workers: int | None = None) -> None:
    """A recipe through :func:`flows.runner.run`: as Prefect flows, or here with progress bars (``--local``)."""
    from flows import runner
    from flows.recipe import load_recipe

    r = load_recipe(recipe, sets)
    rd = runner.new_run_dir(r, out)
    failed: Exception | None = None
    if not local:
        from flows.server import own_ephemeral_server

        own_ephemeral_server()
    try:
        with library_output_to(rd.library_log):
            if local:
                with progress_bars() as pf:
                    runner.run(r, rd.root, resume=resume, steps=runner.ProgressSteps(pf, workers), upto=upto)
            elif upto == "curate":
                from flows.flows import curate_flow

                curate_flow(r, str(rd), resume, workers=workers)
            else:
                from flows.flows import pipeline_flow

                pipeline_flow(r, str(rd), resume, workers=workers)
    except runner.GateFailed as e:
        failed = e
    _finish(rd, failed)


def _finish(rd, failed: Exception | None) -> None:
    """What the run left in its folder, in the terminal: funnel, SFT line, verdict, report; exit 3 on a failed gate."""
    from curation.io import read_json
    from curation.pipeline import CurateSummary
    from flows.summary import print_curation, print_verdict

    if rd.curate.summary.exists():
        print_curation(CurateSummary.model_validate(read_json(rd.curate.summary)), out_console)
    tr = read_json(rd.train.summary) if rd.train.summary.exists() else None
    if tr:
        def f(v: Any, d: int = 3) -> str:
            return f"{v:.{d}f}" if isinstance(v, float) else str(v)

        out_console.print(
            f"SFT: {tr.get('method')} {tr.get('steps')} steps, loss {f(tr.get('first_loss'))} → "
            f"{f(tr.get('final_loss'))}, {f(tr.get('tokens_per_s'), 0)} tokens/s ({tr.get('precision')}, "
            f"{tr.get('device')}); outputs in {rd.train.root}"
        )
    if rd.eval.verdict.exists():
        from evals.verdict import Verdict

        print_verdict(Verdict.load(rd.eval.verdict), out_console)
    from flows.report import build_report

    report = build_report(rd.root)
    out_console.print(f"run folder: {rd}")
    out_console.print(f"report: {report}")
    if failed is not None:
        console.print(f"[bold red]{failed}[/]")
        raise typer.Exit(3)


# Operations commands (report, serve, ...) live in their own module and register on `app`.
from flows import ops_commands  # noqa: E402,F401

if __name__ == "__main__":  # pragma: no cover
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
