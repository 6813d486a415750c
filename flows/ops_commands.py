"""Operations commands registered on the ``sftflow`` CLI: report, serve (and friends)."""

from __future__ import annotations

from flows.cli import app  # noqa: F401  (commands below register on it)
