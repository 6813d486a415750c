"""Recipes: one YAML file describes a whole run (sources → stages → SFT → eval → gate).

```yaml
name: demo
sources: [../data/demo/instructions.jsonl]     # relative paths resolve against the recipe's folder
ingest: {field_map: {}}
stages:                                         # data-juicer style: one entry per stage, in order
  - dedup: {threshold: 0.8}
  - quality: {}
train: {model: smollm2-135m-instruct, method: lora, max_steps: 30}
eval: {suite: quick}
gate: {on_regressed: fail}
export: {license: cc-by-sa-3.0}                 # curated rows + dataset card into RUN/export (optional)
```

Every part is a pydantic model owned by its package (``IngestConfig`` by curation, ``TrainConfig``
by training, ``EvalConfig`` by evals); this module only composes them, applies ``--set key=value``
overrides and turns validation errors into one line per problem naming the file and the key.
Importing this module does not import Prefect.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from curation.errors import ConfigError, format_validation_error
from curation.ingest import IngestConfig
from curation.registry import STAGES
from curation.stage import stage_class
from flows.export import ExportConfig


class HeldoutConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(0.05, ge=0, lt=1, description="share of curated task rows held out for the target eval")
    max_rows: int = Field(64, ge=0)
    seed: int = 0


class GateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    on_regressed: Literal["fail", "warn"] = "fail"
    on_inconclusive: Literal["fail", "warn"] = "warn"


class ExperimentConfig(BaseModel):
    """``experiment:`` section of an experiment recipe (see flows/experiments.py).

    ``kind: replay``: the same SFT at several replay ratios (``ratios``, ``general``, ``by``); ``search``
    is the schedule ``sftflow experiment --search replay`` walks. ``kind: arms``: named arms, each a list of
    stages run on the run's training split before that arm trains (e.g. a ``select`` per arm: the same
    budget chosen by different scores). ``kind: curation``: the same SFT on the raw sources and on the
    curated data. Every arm trains with the same settings and seed and is evaluated on the same held-out rows.
    """

    model_config = ConfigDict(extra="forbid")
    kind: Literal["replay", "arms", "curation"] = "replay"
    ratios: list[float] = Field(default_factory=lambda: [0.0, 0.1, 0.3])
    search: list[float] = Field(default_factory=lambda: [0.0, 0.05, 0.1, 0.2, 0.3],
                                description="replay ratios the search tries in order (--search replay)")
    general: list[str] = Field(default_factory=list, description="general-data pool replayed into the task data")
    by: Literal["rows", "tokens"] = "rows"
    seed: int = 0
    arms: dict[str, list[dict[str, dict[str, Any] | None]]] = Field(
        default_factory=dict, description="kind arms: arm name -> stages run on the training split for that arm"
    )

    @field_validator("arms")
    @classmethod
    def _arms(cls, v: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
        for name, entries in v.items():
            if not name or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"arm {name!r}: use letters, digits, - and _ (it names a folder)")
            _one_key_per_stage(entries)
        return v

    @model_validator(mode="after")
    def _kind_has_its_settings(self) -> ExperimentConfig:
        if self.kind == "arms" and len(self.arms) < 2:
            raise ValueError("kind arms needs at least two arms (arms: {name: [stages...], ...})")
        return self

    @field_validator("ratios", "search")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if not v or any(not 0 <= r < 1 for r in v):
            raise ValueError("ratios must be a non-empty list of numbers in [0, 1)")
        return v


class Recipe(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = "run"
    sources: list[str] = Field(default_factory=list)
    ingest: IngestConfig = Field(default_factory=IngestConfig)
    stages: list[dict[str, dict[str, Any] | None]] = Field(default_factory=list)
    heldout: HeldoutConfig = Field(default_factory=HeldoutConfig)
    train: dict[str, Any] | None = None
    eval: dict[str, Any] | None = None
    gate: GateConfig = Field(default_factory=GateConfig)
    experiment: ExperimentConfig | None = None
    #: export the curated rows + a dataset card at the end of the run (``sftflow export``'s options)
    export: ExportConfig | None = None
    runs_dir: str = "runs"
    #: folder the recipe came from (relative paths resolve against it); not part of the YAML
    base_dir: str = "."

    @field_validator("stages")
    @classmethod
    def _one_key_per_stage(cls, v: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return _one_key_per_stage(v)

    # --- typed views (validated lazily so a curation-only recipe never imports torch) ----------
    def stage_list(self) -> list[tuple[str, BaseModel]]:
        return self._validated(self.stages, "stages")

    def arm_stage_list(self, arm: str) -> list[tuple[str, BaseModel]]:
        """The validated stages of one arm of an ``experiment: {kind: arms}`` recipe."""
        if self.experiment is None or arm not in self.experiment.arms:
            raise ConfigError(f"experiment.arms: no arm {arm!r}")
        return self._validated(self.experiment.arms[arm], f"experiment.arms.{arm}")

    def _validated(self, entries: list[dict[str, Any]], where: str) -> list[tuple[str, BaseModel]]:
        out = []
        decontam = self.decontam_settings()
        for i, entry in enumerate(entries):
            (name, cfg) = next(iter(entry.items()))
            cfg = self._stage_config(name, cfg)
            cls = stage_class(name)
            if name == "mix" and decontam is not None and "decontam" not in cfg:
                cfg["decontam"] = decontam  # the general pool is checked against the same benchmarks
            try:
                out.append((name, cls.Config.model_validate(cfg)))
            except ValidationError as e:
                raise ConfigError(format_validation_error(e, prefix=f"{where}[{i}].{name}")) from None
        return out

    def _stage_config(self, name: str, cfg: dict[str, Any] | None) -> dict[str, Any]:
        cfg = dict(cfg or {})
        for key in _path_keys(stage_class(name).Config):
            if cfg.get(key):
                cfg[key] = self.resolve_paths(cfg[key])
        if name == "decontam" and not cfg.get("data_dir") and (self.eval or {}).get("data_dir"):
            # the benchmark copies the eval reads are the ones to keep out of the training data
            cfg["data_dir"] = str(self.resolve(self.eval["data_dir"]))
        return cfg

    def decontam_settings(self) -> dict[str, Any] | None:
        """The (first) decontam stage's settings, paths resolved; None when the recipe has no decontam stage.

        A mix stage (and an experiment's replay mix) decontaminates its general pool with them.
        """
        for entry in self.stages:
            (name, cfg) = next(iter(entry.items()))
            if name == "decontam":
                return self._stage_config(name, cfg)
        return None

    def train_config(self, **overrides: Any):
        from training.config import TrainConfig

        data = {**(self.train or {}), **overrides}
        try:
            return TrainConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, prefix="train")) from None

    def eval_config(self, **overrides: Any):
        from evals.run import EvalConfig

        data = {**(self.eval or {}), **overrides}
        if data.get("data_dir"):
            data["data_dir"] = str(self.resolve(data["data_dir"]))
        try:
            return EvalConfig.model_validate(data)
        except ValidationError as e:
            raise ConfigError(format_validation_error(e, prefix="eval")) from None

    def resolve(self, p: str) -> Path:
        if p.startswith("hf://"):
            return Path(p)
        path = Path(p).expanduser()
        return path if path.is_absolute() else (Path(self.base_dir) / path).resolve()

    def resolve_paths(self, v: Any) -> Any:
        if isinstance(v, str):
            return v if v.startswith(("hf://", "redis://")) else str(self.resolve(v))
        if isinstance(v, list):
            return [self.resolve_paths(x) for x in v]
        return v

    def source_paths(self) -> list[str]:
        return [self.resolve_paths(s) for s in self.sources]

    def validate_all(self) -> None:
        """Validate every part now (the CLI does this before starting a long run)."""
        self.stage_list()
        for arm in self.experiment.arms if self.experiment is not None else ():
            self.arm_stage_list(arm)
        if self.train is not None:
            self.train_config()
        if self.eval is not None:
            self.eval_config()


def _one_key_per_stage(v: list[dict[str, Any]]) -> list[dict[str, Any]]:
    for i, entry in enumerate(v):
        if len(entry) != 1:
            raise ValueError(f"entry {i} must have exactly one stage name as key, got {list(entry)}")
        (name,) = entry
        if name not in STAGES:
            raise ValueError(f"entry {i}: unknown stage {name!r} (known: {', '.join(STAGES)})")
    return v


def _path_keys(config_cls: type[BaseModel]) -> list[str]:
    """Config fields that hold file paths (resolved against the recipe folder)."""
    return [k for k in ("general", "index", "model", "data_dir") if k in config_cls.model_fields]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["train.max_steps=10", "stages.dedup.threshold=0.7"]`` → nested dict (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        out[key.strip()] = value
    return out


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    data = copy.deepcopy(data)
    for key, value in overrides.items():
        parts = key.split(".")
        if parts[0] == "stages" and len(parts) >= 3:
            # stages.<name>.<key...>: the (first) stage of that name
            name = parts[1]
            entry = next((e for e in data.setdefault("stages", []) if name in e), None)
            if entry is None:
                raise ConfigError(f"--set {key}: the recipe has no stage {name!r}")
            node = entry[name] if entry[name] is not None else entry.setdefault(name, {})
            if entry[name] is None:
                entry[name] = node = {}
            parts = parts[2:]
        else:
            node = data
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return data


def _merge(base: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in child.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _extend(path: Path, data: dict[str, Any], depth: int = 0) -> dict[str, Any]:
    """``extends: other.yaml``: that recipe (same folder, so relative paths mean the same), with this one's
    sections merged over it (mappings key by key, anything else replaced)."""
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if depth > 4:
        raise ConfigError(f"{path}: extends: more than 5 levels (a loop?)")
    ppath = path.parent / str(parent)
    if not ppath.exists() or ppath.resolve().parent != path.resolve().parent:
        raise ConfigError(f"{path}: extends: {parent!r} is not a recipe file in the same folder")
    return _merge(_extend(ppath, _read_yaml(ppath), depth + 1), data)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read, override and validate a recipe; errors name the file and the key."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: recipe file not found")
    data = _extend(path, _read_yaml(path))
    data = apply_overrides(data, parse_overrides(overrides or []))
    data["base_dir"] = str(path.resolve().parent)
    try:
        recipe = Recipe.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"{path}: {format_validation_error(e)}") from None
    try:
        recipe.validate_all()
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return recipe
