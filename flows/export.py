"""``sftflow export``: a curated run as a dataset someone else can train on.

The curated rows (``split/train.parquet`` + ``split/heldout.parquet`` when the run was split for
training, else ``curate/output.parquet`` as one ``train`` split) are written in the chat ``messages``
form TRL, LLaMA-Factory and axolotl read, as parquet (``--format hf``, the hub's own layout) or JSON
lines, with a dataset card (``README.md``, :mod:`flows.card`) whose YAML ``configs`` make
``datasets.load_dataset(DIR)`` load it offline::

    DIR/README.md
    DIR/data/train-00000-of-00001.parquet    (or data/train.jsonl)
    DIR/data/test-00000-of-00001.parquet     the held-out split, when the run has one

The held-out split is called ``test`` (the name trainers and the hub expect for an evaluation split).
Columns: ``id``, ``messages`` (list of ``{role, content}``), ``text`` (only when the run holds plain-text
rows: general replay data; their ``messages`` is null), ``source`` (the file name or hub id, not the
local path), ``lang``, ``meta`` and the attributes the stages added (``quality``, ``complexity``,
``task_type``, ``mix_source``, ...). ``push_to_hub`` uploads the folder with ``huggingface_hub``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.errors import SftflowError
from curation.io import atomic_dir, count_rows, read_json
from curation.rundir import RunDir

#: ledger/provenance columns that say where the row sat on this machine: not part of a shared dataset
_LOCAL_COLUMNS = ("line",)
#: columns holding a source file's path: shared as the file name
_PATH_COLUMNS = ("source", "mix_origin")
#: split name in the export → where the run keeps it
SPLITS = ("train", "test")
FORMATS = ("hf", "jsonl")


class ExportError(SftflowError):
    """A run that cannot be exported (not a run folder, curation unfinished, a failed upload)."""


class ExportConfig(BaseModel):
    """The recipe's ``export:`` section (and ``sftflow export``'s options)."""

    model_config = ConfigDict(extra="forbid")

    out: str | None = Field(None, description="export folder (default: RUN/export); relative to the recipe")
    format: Literal["hf", "jsonl"] = Field("hf", description="hf: parquet files (the hub's layout); jsonl")
    license: list[str] = Field(default_factory=list,
                               description="license id(s) of the sources (hub ids: cc-by-sa-3.0, apache-2.0, ...)")
    pretty_name: str | None = None
    push_to_hub: str | None = Field(None, description="owner/name of a hub dataset repo to upload to")
    private: bool = True

    @field_validator("license", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("push_to_hub")
    @classmethod
    def _repo_id(cls, v: str | None) -> str | None:
        if v is not None and (v.count("/") != 1 or not all(v.split("/"))):
            raise ValueError(f"expected owner/name, got {v!r}")
        return v


def check_run(run_dir: str | os.PathLike) -> RunDir:
    """``run_dir`` as a :class:`RunDir` whose curation finished, or an :class:`ExportError` saying why not."""
    rd = RunDir(Path(run_dir))
    if not rd.root.is_dir():
        raise ExportError(f"{rd.root}: no such folder")
    if not rd.curate.root.is_dir() and not rd.info.exists():
        raise ExportError(f"{rd.root}: not an sftflow run folder (no curate/ or run.json); "
                          "export takes the folder `sftflow curate` / `run` wrote")
    if not rd.curate.summary.exists() or not rd.curate.output.exists():
        raise ExportError(f"{rd.root}: its curation did not finish (no {rd.curate.summary.relative_to(rd.root)}); "
                          "run `sftflow curate --resume` into it first")
    return rd


def split_files(rd: RunDir) -> dict[str, Path]:
    """The run's curated rows by export split: the training split (and held-out) when the run made them from
    this curation, else the whole curated output as ``train``."""
    if rd.split_train.exists() and rd.split_heldout.exists():
        held = count_rows(rd.split_heldout)
        # a split made from an earlier curation of this folder would not add up to this one's rows
        if count_rows(rd.split_train) + held == count_rows(rd.curate.output):
            return {"train": rd.split_train, **({"test": rd.split_heldout} if held else {})}
    return {"train": rd.curate.output}


def _shared_source(source: str | None) -> str | None:
    """The file name of a local source (a path on this machine means nothing to a reader); hub ids as they are."""
    if not source or "://" in source:
        return source
    return Path(source).name


def _export_table(batch: pa.RecordBatch, keep_text: bool) -> pa.Table:
    table = pa.Table.from_batches([batch])
    drop = [c for c in _LOCAL_COLUMNS if c in table.column_names]
    if not keep_text and "text" in table.column_names:
        drop.append("text")
    table = table.drop_columns(drop)
    for col in _PATH_COLUMNS:
        if col in table.column_names:
            i = table.column_names.index(col)
            table = table.set_column(i, col, pa.array([_shared_source(s) for s in table.column(col).to_pylist()],
                                                      pa.string()))
    return table


def _has_text_rows(paths: list[Path]) -> bool:
    for p in paths:
        if "text" not in pq.read_schema(p).names:
            continue
        for rb in pq.ParquetFile(p).iter_batches(batch_size=8192, columns=["text"]):
            if rb.column(0).null_count < rb.num_rows:
                return True
    return False


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    yield from pq.ParquetFile(path).iter_batches(batch_size=4096)


def write_split(src: Path, dst: Path, fmt: str, keep_text: bool) -> int:
    """Stream one split from the run's parquet to ``dst``; returns its rows."""
    n = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "jsonl":
        with dst.open("w", encoding="utf-8") as f:
            for rb in _batches(src):
                for row in _export_table(rb, keep_text).to_pylist():
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    n += 1
        return n
    writer: pq.ParquetWriter | None = None
    try:
        for rb in _batches(src):
            table = _export_table(rb, keep_text)
            if writer is None:
                writer = pq.ParquetWriter(dst, table.schema)
            writer.write_table(table)
            n += table.num_rows
        if writer is None:  # an empty split still gets a file with the schema
            pq.write_table(_export_table(pa.RecordBatch.from_pylist([], schema=pq.read_schema(src)), keep_text), dst)
    finally:
        if writer is not None:
            writer.close()
    return n


def data_file(split: str, fmt: str) -> str:
    """Where a split lives inside the export folder (what the card's ``configs`` name)."""
    return f"data/{split}-00000-of-00001.parquet" if fmt == "hf" else f"data/{split}.jsonl"


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
               config: ExportConfig | None = None) -> Path:
    """Write the curated rows of ``run_dir`` and their dataset card to ``out`` (default ``RUN/export``),
    atomically (a folder that is either the old export or the new one); then push it when configured."""
    from flows.card import dataset_card

    cfg = config or ExportConfig()
    rd = check_run(run_dir)
    if not cfg.license:  # the recipe's export section, when the run's recipe has one
        recipe_export = ((read_json(rd.info) if rd.info.exists() else {}).get("recipe") or {}).get("export") or {}
        cfg = cfg.model_copy(update={"license": ExportConfig.model_validate(
            {"license": recipe_export.get("license") or []}).license})
    dest = Path(out) if out is not None else (Path(cfg.out) if cfg.out else rd.root / "export")
    splits = split_files(rd)
    keep_text = _has_text_rows(list(splits.values()))
    with atomic_dir(dest) as tmp:
        rows = {name: write_split(src, tmp / data_file(name, cfg.format), cfg.format, keep_text)
                for name, src in splits.items()}
        card = dataset_card(rd, {name: data_file(name, cfg.format) for name in splits}, rows, licenses=cfg.license,
                            pretty_name=cfg.pretty_name, repo_id=cfg.push_to_hub, text_rows=keep_text)
        (tmp / "README.md").write_text(card, encoding="utf-8")
    if cfg.push_to_hub:
        push_to_hub(dest, cfg.push_to_hub, private=cfg.private)
    return dest


def push_to_hub(folder: str | os.PathLike, repo_id: str, *, private: bool = True) -> str:
    """Upload an export folder as the hub dataset ``repo_id`` (created when missing); returns its URL.

    Needs the network and a token (``HF_TOKEN`` or ``huggingface-cli login``); any failure — offline mode,
    no token, no permission — is one line naming the repo.
    """
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset",
                          commit_message="sftflow export")
    except Exception as e:  # noqa: BLE001 - offline, auth, HTTP: all one line for the user
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"push to hf://datasets/{repo_id} failed: {type(e).__name__}: {msg}") from None
    return f"https://huggingface.co/datasets/{repo_id}"


__all__ = ["ExportConfig", "ExportError", "check_run", "data_file", "export_run", "push_to_hub", "split_files"]
