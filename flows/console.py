"""The CLI's shared parts: the typer app, the two consoles, the command-line error, progress bars.

``flows.cli`` defines the core commands and ``flows.ops_commands`` the operations ones; both register
on :data:`app` from here, so neither imports the other's module for it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

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
