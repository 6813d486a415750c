"""Typed stage statistics: what every ``stats.json`` holds, and how the figures of shards merge.

Every stage run ends in one :class:`StageStats` — the generic counts (rows in / added / out /
dropped, drops per reason, time) every stage has, the stage's own figures in ``extra``, and the
fingerprint that makes ``stats.json`` the stage's completion marker. Shard results merge into one
(:meth:`StageStats.merge`): counts add, and the stage's figures merge by the rule each field
declares (datatrove's mergeable ``Stats``, typed).

A stage declares its figures as a :class:`Figures` model whose fields carry a merge rule::

    class QualityFigures(Figures):
        rules_fired: Annotated[dict[str, int], Sum] = {}
        score_histogram: Histogram = Histogram()
        dropped_examples: Annotated[dict[str, list[dict]], Concat(cap="examples_per_reason")] = {}
        mean_quality: Annotated[float | None, Mean] = None
        threshold: Annotated[float, Same] = 0.5

``Sum`` adds numbers, per key for dicts and element-wise for lists (histogram counts); ``Mean`` is
weighted by each shard's rows in; ``Concat`` joins lists (per key for dicts) up to a cap (a number
or the name of a config field); ``Same`` is a value every shard must agree on (a config echo, bin
edges). A nested :class:`Figures` merges field by field. A field without a rule must be equal in
every shard, or the merge fails naming it: a new figure cannot be merged by accident.

A stage whose ``stats()`` returns a plain dict (no :class:`Figures`) is never sharded: nothing
guesses how its figures would merge.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

# ------------------------------------------------------------------------------------------------
# merge rules


@dataclass(frozen=True)
class MergeRule:
    """How one figure of several shards becomes one value (see the module docstring)."""

    kind: str
    cap: int | str | None = None

    def __call__(self, values: list[Any], weights: list[int], config: Any = None, where: str = "") -> Any:
        present = [(v, w) for v, w in zip(values, weights, strict=True) if v is not None]
        if not present:
            return None
        vals = [v for v, _ in present]
        if self.kind == "same":
            if any(v != vals[0] for v in vals[1:]):
                raise ValueError(f"{where}: shards disagree on a value declared Same: {vals[:3]}")
            return vals[0]
        if self.kind == "sum":
            return _add(vals, where)
        if self.kind == "mean":
            total = sum(w for _, w in present)
            if not total:
                return vals[0]
            return round(sum(float(v) * w for v, w in present) / total, 6)
        if self.kind == "max":
            return max(vals)
        if self.kind == "min":
            return min(vals)
        if self.kind == "concat":
            cap = getattr(config, self.cap, None) if isinstance(self.cap, str) else self.cap
            if all(isinstance(v, dict) for v in vals):
                keys = list(dict.fromkeys(k for v in vals for k in v))
                return {k: _concat([v.get(k) or [] for v in vals], cap) for k in keys}
            return _concat(vals, cap)
        raise ValueError(f"{where}: unknown merge rule {self.kind!r}")


def _concat(lists: list[list], cap: int | None) -> list:
    out = [x for v in lists for x in v]
    return out if cap is None else out[:cap]


def _add(vals: list[Any], where: str) -> Any:
    first = vals[0]
    if all(isinstance(v, dict) for v in vals):
        keys = list(dict.fromkeys(k for v in vals for k in v))
        return {k: _add([v[k] for v in vals if k in v], f"{where}.{k}") for k in keys}
    if all(isinstance(v, list) for v in vals):
        if len({len(v) for v in vals}) != 1:
            raise ValueError(f"{where}: lists of different lengths cannot be added")
        return [_add(list(xs), where) for xs in zip(*vals, strict=True)]
    if all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
        total = sum(vals)
        return round(total, 6) if isinstance(total, float) else total
    raise ValueError(f"{where}: cannot add {type(first).__name__} values")


Sum = MergeRule("sum")
Mean = MergeRule("mean")
Same = MergeRule("same")
Max = MergeRule("max")
Min = MergeRule("min")


def Concat(cap: int | str | None = None) -> MergeRule:  # noqa: N802 - reads like the other rules
    """Lists joined in shard order, cut to ``cap`` (a number, or the name of a config field)."""
    return MergeRule("concat", cap)


class Figures(BaseModel):
    """Base class of a stage's own figures (``stats.json`` ``extra``), mergeable field by field."""

    model_config = ConfigDict(extra="forbid")

    @classmethod
    def merge(cls, parts: Sequence[Figures], weights: Sequence[int], config: Any = None) -> Figures:
        """One value per field from the shards' ``parts`` (``weights``: their rows in)."""
        if not parts:
            return cls()
        merged: dict[str, Any] = {}
        for name, info in cls.model_fields.items():
            values = [getattr(p, name) for p in parts]
            rule = next((m for m in info.metadata if isinstance(m, MergeRule)), None)
            where = f"{cls.__name__}.{name}"
            if rule is not None:
                merged[name] = rule(values, list(weights), config, where)
            elif _figures_type(info.annotation) is not None and all(v is not None for v in values):
                merged[name] = _figures_type(info.annotation).merge(values, weights, config)
            elif all(v == values[0] for v in values[1:]):
                merged[name] = values[0]
            else:
                raise ValueError(f"{where}: shards differ and the field declares no merge rule")
        return cls.model_validate(merged)

    def to_json(self) -> dict[str, Any]:
        """The figures as ``stats.json`` holds them (by alias; a figure not measured is left out)."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


def _figures_type(annotation: Any) -> type[Figures] | None:
    if isinstance(annotation, type) and issubclass(annotation, Figures):
        return annotation
    if get_origin(annotation) is not None:  # Optional[SomeFigures]
        found = [a for a in get_args(annotation) if isinstance(a, type) and issubclass(a, Figures)]
        return found[0] if len(found) == 1 else None
    return None


F = TypeVar("F", bound=Figures)


class Histogram(Figures):
    """Counts per bin; bin edges are the same in every shard."""

    edges: Annotated[list[float], Same] = Field(default_factory=list)
    counts: Annotated[list[int], Sum] = Field(default_factory=list)


# ------------------------------------------------------------------------------------------------
# the stats every stage has


class LedgerBalanceError(RuntimeError):
    """A stage lost or invented rows: a bug, never a user error."""


class StageStats(BaseModel):
    """One stage run: ``stats.json`` (written last, so it is the stage's completion marker)."""

    model_config = ConfigDict(extra="ignore")  # a stats.json of an older version still reads

    stage: str
    rows_in: int = 0
    #: rows the stage brought in from outside its input (the mixer's replay rows)
    rows_added: int = 0
    rows_out: int = 0
    rows_dropped: int = 0
    dropped_by_reason: dict[str, int] = Field(default_factory=dict)
    seconds: float = 0.0
    rows_per_s: float | None = None
    #: the stage's own figures (its :class:`Figures` as JSON, or a plain dict)
    extra: dict[str, Any] = Field(default_factory=dict)
    #: input content + stage config (+ the files the config names); a rerun with the same one is cached
    fingerprint: str = ""
    #: how many shards the stage ran on (absent: one piece)
    shards: int | None = None
    #: True when this result was read back from an earlier run (never written to stats.json)
    cached: bool = Field(False, exclude=True)

    @classmethod
    def build(cls, stage: str, rows_in: int, rows_out: int, reasons: dict[str, int], seconds: float,
              rows_added: int = 0, extra: dict[str, Any] | None = None) -> StageStats:
        """Stats from the counts of a run; raises :class:`LedgerBalanceError` when rows were lost."""
        stats = cls(
            stage=stage,
            rows_in=rows_in,
            rows_added=rows_added,
            rows_out=rows_out,
            rows_dropped=sum(reasons.values()),
            dropped_by_reason=dict(sorted(reasons.items())),
            seconds=round(seconds, 3),
            rows_per_s=round(rows_in / seconds, 1) if seconds > 0 else None,
            extra=extra or {},
        )
        stats.check_balance()
        return stats

    def check_balance(self) -> None:
        """rows in + rows added = rows out + rows dropped, or a :class:`LedgerBalanceError`."""
        if self.rows_in + self.rows_added != self.rows_out + self.rows_dropped:
            raise LedgerBalanceError(
                f"stage {self.stage!r}: {self.rows_in} in + {self.rows_added} added != "
                f"{self.rows_out} kept + {self.rows_dropped} dropped"
            )

    @classmethod
    def merge(cls, parts: Sequence[StageStats], figures: type[Figures] | None = None, config: Any = None,
              seconds: float | None = None) -> StageStats:
        """The stats of one stage run on contiguous shards, from the shards' stats.

        Counts add; the figures merge by the rules of ``figures`` (the stage's :class:`Figures`).
        """
        if not parts:
            raise ValueError("no shard stats to merge")
        if figures is None:
            raise ValueError(f"stage {parts[0].stage!r} declares no Figures: its figures cannot be merged")
        reasons: dict[str, int] = {}
        for p in parts:
            for k, v in p.dropped_by_reason.items():
                reasons[k] = reasons.get(k, 0) + v
        weights = [p.rows_in for p in parts]
        typed = [figures.model_validate(p.extra) for p in parts]
        extra = figures.merge(typed, weights, config).to_json()
        merged = cls.build(
            parts[0].stage,
            sum(p.rows_in for p in parts),
            sum(p.rows_out for p in parts),
            reasons,
            sum(p.seconds for p in parts) if seconds is None else seconds,
            sum(p.rows_added for p in parts),
            extra,
        )
        merged.shards = len(parts)
        return merged

    def to_json(self) -> dict[str, Any]:
        """What ``stats.json`` holds."""
        return self.model_dump(mode="json", exclude={"cached"} | ({"shards"} if self.shards is None else set()))

    def figures(self, model: type[F]) -> F:
        """The stage's figures read as ``model`` (its :class:`Figures` class)."""
        return model.model_validate(self.extra)

