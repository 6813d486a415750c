"""The CLI's shared parts: the typer app, the two consoles, the command-line error, progress bars.

``flows.cli`` defines the core commands and ``flows.ops_commands`` the operations ones; both register
on :data:`app` from here, so neither imports the other's module for it.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from curation.errors import SftflowError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="sftflow: instruction-data curation + SFT, with a built-in \"did it get dumber?\" regression gate.",
)
#: messages, warnings, errors, progress (stderr)
console = Console(stderr=True)
#: results (stdout)
out_console = Console()

ProgressFactory = Callable[[str, int | None], Callable[[int], None]]


class UserError(SftflowError):
    """A bad command line (a flag's value, a missing file named on it)."""


@contextmanager
def progress_bars() -> Iterator[ProgressFactory]:
    """A rich progress display; yields a factory (name, total) → callback(n_rows)."""
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
        console=console, transient=False,
    ) as prog:

        def factory(name: str, total: int | None) -> Callable[[int], None]:
            # a new step starts when the previous one ended: close open-ended bars (unknown totals)
            for t in prog.tasks:
                if t.total is None:
                    prog.update(t.id, total=t.completed)
            tid = prog.add_task(name, total=total)
            return lambda n: prog.advance(tid, n)

        yield factory


#: libraries whose log records (weight-loading notes, deprecations, tokenizer and dictionary messages) go to the
#: run's library log instead of the terminal
LIBRARY_LOGGERS = ("py.warnings", "transformers", "datasets", "huggingface_hub", "peft", "accelerate", "torch",
                   "sentence_transformers", "jieba", "numba", "filelock", "urllib3", "fsspec")


@contextmanager
def library_output_to(path: str | os.PathLike) -> Iterator[Path]:
    """Library warnings and log records, and their progress bars (weight loading, dataset maps), go to ``path``
    (appended) while the block runs, so what a person reads between sftflow's own lines is sftflow's.

    sftflow's bars (one per long step) and Prefect's log lines are untouched; ``warnings.warn`` calls become
    ``py.warnings`` records in the file, each with its category and location.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    loggers = [logging.getLogger(name) for name in LIBRARY_LOGGERS]
    saved = [(lg, lg.handlers[:], lg.propagate) for lg in loggers]
    saved_env = {k: os.environ.get(k) for k in ("HF_HUB_DISABLE_PROGRESS_BARS", "HF_DATASETS_DISABLE_PROGRESS_BARS")}
    # read when these libraries are imported (later, lazily) ...
    os.environ.update(dict.fromkeys(saved_env, "1"))
    # ... or switched off now when they already are (and on again after, if they were on)
    hf = sys.modules["transformers"].utils.logging if "transformers" in sys.modules else None
    hf_bars = hf is not None and hf.is_progress_bar_enabled()
    if hf is not None:
        hf.disable_progress_bar()
    ds = sys.modules.get("datasets")
    ds_bars = ds is not None and ds.is_progress_bar_enabled()
    if ds is not None:
        ds.disable_progress_bars()
    for lg in loggers:
        lg.handlers = [handler]
        lg.propagate = False
    logging.captureWarnings(True)
    try:
        yield path
    finally:
        logging.captureWarnings(False)
        for lg, handlers, propagate in saved:
            lg.handlers = handlers
            lg.propagate = propagate
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if hf_bars:
            hf.enable_progress_bar()
        if ds_bars:
            ds.enable_progress_bars()
        handler.close()
