"""Ingest: any instruction data → :class:`~curation.records.Record`, streaming, with a ledger row for every bad line.

Three parts, one module each: :mod:`~curation.ingest.readers` (sources → raw rows: JSON Lines,
JSON, CSV, parquet, ``.gz``, folders, globs, ``hf://`` hub datasets), :mod:`~curation.ingest.formats`
(raw row → record: OpenAI, ShareGPT, alpaca, dolly, self-instruct, BELLE, prompt/completion, text,
or an explicit field map) and :mod:`~curation.ingest.driver` (the ingest stage: ids, ledger, stats).

Every input row ends up either in ``output.parquet`` or in ``ledger.parquet`` with one of these
reasons (the detail names the source, line and field): ``bad_json``, ``bad_csv``, ``invalid_utf8``,
``nested_too_deep``, ``not_an_object``, ``unknown_format``, ``unsupported_format``,
``missing_field``, ``null_field``, ``wrong_type``, ``bad_role``, ``empty_content``, ``too_large``,
``duplicate_id``.

A source that cannot be read at all (missing file, corrupt gzip/parquet, duplicate CSV header,
offline hub id) raises :class:`SourceError` and no output is published. Sources where no row
survived are listed in the figures' ``sources_all_bad``, sources without any row (empty file, empty
directory, glob without matches) in ``empty_sources``; :meth:`IngestResult.problems` words both for
the CLI, which exits non-zero when no row survived.
"""

from curation.ingest.base import CANONICAL_FIELDS, IngestConfig, RowError, SourceError
from curation.ingest.driver import (
    IngestFigures,
    IngestResult,
    IngestStage,
    ingest,
    iter_records,
    sources_fingerprint,
)
from curation.ingest.formats import detect_format, row_to_record
from curation.ingest.readers import SUFFIXES, expand_sources, iter_raw_rows

__all__ = [
    "CANONICAL_FIELDS", "IngestConfig", "IngestFigures", "IngestResult", "IngestStage", "RowError", "SUFFIXES",
    "SourceError", "detect_format", "expand_sources", "ingest", "iter_raw_rows", "iter_records", "row_to_record",
    "sources_fingerprint",
]
