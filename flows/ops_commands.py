"""Operations commands registered on the ``sftflow`` CLI: ``report`` and ``serve``.

``sftflow report RUN`` rebuilds ``RUN/report.html`` and prints the same run in the terminal
(``--serve`` also serves the folder on 127.0.0.1). ``sftflow serve --recipe R --cron "0 3 * * *"``
schedules a recipe with Prefect's ``flow.serve``: one command, no work pool or worker needed.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from flows.console import UserError, app, out_console


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="a run folder (runs/<name>-<time>)"),
    serve: bool = typer.Option(False, "--serve", help="serve the run folder on 127.0.0.1 until Ctrl-C"),
    port: int = typer.Option(8765, "--port", help="port for --serve (0: any free port)"),
    history: bool = typer.Option(True, "--history/--no-history", help="record this run in its recipe's trend"),
) -> None:
    """Rebuild a run's HTML report (RUN/report.html) and print its summary here."""
    from flows.report import build_report, history_path, load_run, read_history

    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: no such run folder")
    path = build_report(run_dir, history=history)
    run = load_run(run_dir)
    print_run(run, read_history(history_path(run_dir, run["name"])))
    out_console.print(f"report: {path.resolve()}")
    if serve:
        serve_folder(run_dir, port)



@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="a curated run folder (runs/<name>-<time>)"),
    out: Path | None = typer.Option(None, "--out", help="export folder (default RUN/export)"),
    fmt: str = typer.Option("hf", "--format", help="hf (parquet, the hub's layout) or jsonl"),
    licenses: list[str] = typer.Option([], "--license", help="license id of the sources (repeatable); default: "
                                                             "the recipe's export.license"),
    push_to_hub: str | None = typer.Option(None, "--push-to-hub", help="owner/name: upload as a hub dataset"),
    public: bool = typer.Option(False, "--public", help="with --push-to-hub: a public repo (default private)"),
) -> None:
    """The curated rows (chat `messages` form) + a dataset card, loadable with datasets.load_dataset(DIR)."""
    from curation.errors import format_validation_error
    from flows.export import ExportConfig, export_run

    try:
        cfg = ExportConfig(format=fmt, license=licenses, push_to_hub=push_to_hub, private=not public)
    except Exception as e:  # pydantic ValidationError
        raise UserError(format_validation_error(e) if hasattr(e, "errors") else str(e)) from None
    dest = export_run(run_dir, out, cfg)
    out_console.print(f"dataset: {dest} (load with datasets.load_dataset({str(dest)!r}))")
    out_console.print(f"card: {dest / 'README.md'}")
    if push_to_hub:
        out_console.print(f"pushed: https://huggingface.co/datasets/{push_to_hub}")

def print_run(run: dict, history: list[dict]) -> None:
    """The run in the terminal: funnel, top drop reasons, training, verdict, trend."""
    from rich.table import Table

    from flows.report import fmt, key_figures
    from flows.summary import print_curation, print_verdict

    if run["summary"]:
        print_curation(run["summary"], out_console)
    elif run["stages"]:
        out_console.print("curation did not finish; stages done: "
                          + ", ".join(f"{s.stage} ({s.rows_in} → {s.rows_out})" for s in run["stages"]))
    else:
        out_console.print("curation: not run")
    fig = key_figures(run)
    out_console.print(
        f"duplicate rate {fmt(fig['duplicate_rate'])}, mean quality {fmt(fig['mean_quality'])}, "
        f"task-type entropy {fmt(fig['task_type_entropy'])} bits"
    )
    tr = run["train"] or {}
    if tr:
        out_console.print(f"SFT: {tr.get('method')} {tr.get('steps')} steps, loss {fmt(tr.get('first_loss'))} → "
                          f"{fmt(tr.get('final_loss'))}, {fmt(tr.get('tokens_per_s'))} tokens/s")
    else:
        out_console.print("SFT: not run")
    if run["verdict"]:
        print_verdict(run["verdict"], out_console)
    else:
        out_console.print("eval: not run")
    if len(history) > 1:
        t = Table(title=f"Trend of {run['name']} (last {min(len(history), 10)} runs)")
        for col in ("run", "in", "out", "dup rate", "mean quality", "entropy", "final loss", "verdict"):
            t.add_column(col, justify="left" if col in ("run", "verdict") else "right")
        for h in history[-10:]:
            t.add_row(str(h.get("run")), fmt(h.get("rows_in")), fmt(h.get("rows_out")), fmt(h.get("duplicate_rate")),
                      fmt(h.get("mean_quality")), fmt(h.get("task_type_entropy")), fmt(h.get("final_loss")),
                      str(h.get("verdict") or ""))
        out_console.print(t)


def serve_folder(folder: Path, port: int) -> None:
    """Serve ``folder`` over HTTP on 127.0.0.1 only (never all interfaces) until interrupted."""
    from functools import partial
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    class QuietHandler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args) -> None:  # noqa: A002 - the stdlib's name
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", port), partial(QuietHandler, directory=str(folder)))
    out_console.print(f"serving http://127.0.0.1:{httpd.server_address[1]}/report.html (Ctrl-C to stop)")
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


@app.command()
def serve(
    recipe: Path = typer.Option(..., "--recipe", help="the recipe to run on a schedule"),
    cron: str | None = typer.Option(None, "--cron", help='cron schedule, e.g. "0 3 * * *" (default: on demand)'),
    interval: int | None = typer.Option(None, "--interval", help="or: every N seconds"),
    flow: str = typer.Option("curate", "--flow", help="curate (curation only) or pipeline (curate → SFT → eval)"),
    name: str | None = typer.Option(None, "--name", help="deployment name (default: the recipe name)"),
    timezone: str | None = typer.Option(None, "--timezone", help="time zone of --cron, e.g. Europe/Berlin"),
    sets: list[str] = typer.Option([], "--set", help="key=value recipe overrides, passed to every run"),
) -> None:
    """Schedule a recipe with Prefect (flow.serve): runs every --cron / --interval until Ctrl-C."""
    from flows.deploy import serve_recipe
    from flows.recipe import load_recipe

    if cron and interval:
        raise UserError("give --cron or --interval, not both")
    if flow not in ("curate", "pipeline"):
        raise UserError(f"--flow {flow!r}: expected curate or pipeline")
    r = load_recipe(recipe, sets)  # a bad recipe fails here, not at 3 am
    if not os.environ.get("PREFECT_API_URL"):
        out_console.print("note: PREFECT_API_URL is not set, so runs go to a temporary local server. To see them in "
                          "the UI: `prefect server start --host 127.0.0.1` and export "
                          "PREFECT_API_URL=http://127.0.0.1:4200/api")
    from flows.server import own_ephemeral_server

    own_ephemeral_server()
    serve_recipe(recipe.resolve(), flow=flow, name=name or r.name, cron=cron, interval=interval, timezone=timezone,
                 overrides=sets)


@app.command("curate-sharded")
def curate_sharded(
    recipe: Path = typer.Option(..., "--recipe"),
    shards: int = typer.Option(4, "--shards", min=1, help="shards per per-row stage (quality, score)"),
    out: str | None = typer.Option(None, "--out", help="run folder (default runs/<name>-<time>)"),
    resume: bool = typer.Option(False, "--resume"),
    sets: list[str] = typer.Option([], "--set"),
) -> None:
    """Curate with per-row stages sharded over a Dask cluster (SFTFLOW_DASK_ADDRESS, else a local one)."""
    from curation.rundir import RunDir
    from flows.recipe import load_recipe
    from flows.scaleout import sharded_curate_flow
    from flows.server import own_ephemeral_server
    from flows.summary import print_curation

    r = load_recipe(recipe, sets)
    own_ephemeral_server()
    res = sharded_curate_flow(r, out, shards, resume)
    print_curation(res["curate"], out_console)
    out_console.print(f"sharded stages: {', '.join(res['sharded_stages']) or 'none'}; run folder: {res['run_dir']}")
    report = RunDir(Path(res["run_dir"])).report
    if report.exists():
        out_console.print(f"report: {report}")
