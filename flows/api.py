"""The notebook API: a stage, or a recipe's curation, on a pandas DataFrame or a ``datasets.Dataset``.

::

    import sftflow
    kept, ledger = sftflow.stage("dedup", df, threshold=0.7)      # kept: a DataFrame again
    kept, ledger = sftflow.curate(ds, recipe="configs/demo.yaml")  # kept: a datasets.Dataset again

There is no second implementation here: the rows are written to a parquet file in a work folder and
run through the same code as the CLI — :func:`curation.pipeline.curate` for stages (what
``sftflow dedup …`` runs), :func:`flows.runner.run` for a recipe (what ``sftflow curate --local``
runs) — then the curated output comes back in the type it came in, and the ledger (every dropped
row with its stage, reason and detail) as a DataFrame. Rows in any format ingest reads (alpaca
columns, ``messages``, ``prompt``/``completion``, ``text``, ...) are ingested first; rows that are
already records (a ``kept`` from an earlier call) are used as they are, so calls chain. ``out=``
keeps the work folder (stage folders, ``summary.json``, the report's inputs); by default it is a
temporary folder removed afterwards. Importing this module imports neither Prefect nor pandas.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.parquet as pq

from curation.errors import ConfigError
from curation.rundir import CurateDir

#: what the input rows are called in ``source`` (instead of the temporary file's path)
INPUT_NAME = "dataframe"


class Curated(NamedTuple):
    """What a call returns: the kept rows (the input's type) and the ledger (a pandas DataFrame)."""

    kept: Any
    ledger: Any


def _to_arrow(data: Any) -> tuple[pa.Table, str]:
    """``data`` as an Arrow table, and the kind to give back (``pandas`` / ``datasets`` / ``arrow``)."""
    if isinstance(data, pa.Table):
        return data, "arrow"
    mod = type(data).__module__.split(".")[0]
    if mod == "datasets" and hasattr(data, "data"):
        if getattr(data, "_indices", None) is not None:
            data = data.flatten_indices()  # a filtered / shuffled Dataset: its rows, not the underlying table
        return data.data.table, "datasets"
    if mod == "pandas" and hasattr(data, "columns"):
        return pa.Table.from_pandas(data, preserve_index=False), "pandas"
    raise ConfigError(f"expected a pandas DataFrame, a datasets.Dataset or a pyarrow Table, got {type(data).__name__}")


def _from_arrow(table: pa.Table, kind: str) -> Any:
    if kind == "arrow":
        return table
    if kind == "datasets":
        import datasets

        return datasets.Dataset(table)
    return table.to_pandas()


def _named(table: pa.Table, path: Path) -> pa.Table:
    """``source`` says ``dataframe``, not the temporary file the rows were passed through."""
    if "source" not in table.column_names:
        return table
    i = table.column_names.index("source")
    values = [INPUT_NAME if s == str(path) else s for s in table.column("source").to_pylist()]
    return table.set_column(i, "source", pa.array(values, pa.string()))


@contextmanager
def _work_folder(out: str | os.PathLike | None) -> Iterator[Path]:
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        yield Path(out)
        return
    with tempfile.TemporaryDirectory(prefix="sftflow-api-") as tmp:
        yield Path(tmp)


def _results(folder: CurateDir, src: Path, kind: str) -> Curated:
    kept = _named(pq.read_table(folder.output), src)
    ledger = _named(pq.read_table(folder.ledger), src)
    return Curated(_from_arrow(kept, kind), ledger.to_pandas())


def _write_input(data: Any, folder: Path) -> tuple[Path, str]:
    table, kind = _to_arrow(data)
    src = folder / f"{INPUT_NAME}.parquet"
    pq.write_table(table, src)
    return src, kind


def stage(name: str, data: Any, *, out: str | os.PathLike | None = None, **config: Any) -> Curated:
    """Run the stage ``name`` (``dedup``, ``quality``, ``decontam``, ``score``, ``select``, ``mix``, or any
    registered one) on ``data`` with ``config`` (its recipe keys: ``threshold=0.7``); see :func:`stages`."""
    return stages([(name, config)], data, out=out)


def stages(steps: Sequence[tuple[str, dict[str, Any]]], data: Any, *, out: str | os.PathLike | None = None
           ) -> Curated:
    """Run ``steps`` ((name, config) pairs, in order) on ``data``: ingest first unless the rows are records.

    Returns ``(kept, ledger)``: the kept rows in ``data``'s type, every dropped row as a DataFrame.
    """
    from curation.pipeline import curate, is_records_file

    with _work_folder(out) as work:
        src, kind = _write_input(data, work)
        folder = CurateDir(work / "curate")
        records = src if is_records_file(src) else None
        curate([str(src)], list(steps), folder.root, records=records)
        return _results(folder, src, kind)


def curate(data: Any, recipe: str | os.PathLike | Any, *, overrides: Sequence[str] = (),
           out: str | os.PathLike | None = None, upto: str = "curate") -> Curated:
    """A recipe's curation (``upto="gate"``: the whole run, training and the gate included) on ``data``
    instead of the recipe's sources, through :func:`flows.runner.run`, without Prefect.

    ``recipe``: a recipe file or a :class:`flows.recipe.Recipe`; ``overrides``: ``--set`` items.
    """
    from flows import runner
    from flows.recipe import Recipe, apply_overrides, load_recipe, parse_overrides

    if isinstance(recipe, Recipe):
        r = Recipe.model_validate(apply_overrides(recipe.model_dump(), parse_overrides(list(overrides))))
    else:
        r = load_recipe(recipe, list(overrides))
    with _work_folder(out) as work:
        src, kind = _write_input(data, work)
        r = r.model_copy(update={"sources": [str(src)], "export": None})
        rd = runner.new_run_dir(r, work / "run")
        runner.run(r, rd.root, upto=upto)  # type: ignore[arg-type]
        return _results(rd.curate, src, kind)


__all__ = ["Curated", "curate", "stage", "stages"]
