"""The one error type a user sees.

Every problem the user can fix — a bad recipe key, an unreadable source, a missing model or file,
a benchmark with no items — is raised as a :class:`SftflowError` (or a subclass) whose message is
one line naming the file, row and field where there is one. The CLI catches exactly this class,
prints the message and exits with code 2; anything else is a bug and keeps its traceback.

It lives in ``curation`` (the lowest layer) so that every layer can raise it.
"""

from __future__ import annotations

from typing import Any


class SftflowError(Exception):
    """A problem the user can fix; ``str(error)`` is the one line the CLI prints (exit code 2)."""

    exit_code = 2


class ConfigError(SftflowError, ValueError):
    """A recipe / stage config problem, phrased for the user (file, key, problem)."""


class MissingFileError(SftflowError, FileNotFoundError):
    """A file or folder the user named is not there."""


def format_validation_error(err: Any, prefix: str = "") -> str:
    """A pydantic ``ValidationError`` as one line: ``key.path: problem (got value)`` per problem."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        key = ".".join(p for p in (prefix, loc) if p)
        got = e.get("input")
        got_s = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{key}: {e['msg']}{got_s}")
    return "; ".join(lines)


__all__ = ["SftflowError", "ConfigError", "MissingFileError", "format_validation_error"]
