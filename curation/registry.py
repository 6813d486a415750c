"""Named registries: how a name in a recipe finds its implementation.

``curation`` is the lowest layer and never imports ``training``, ``evals`` or ``flows``. When a stage
needs something only a higher layer has — a model-backed scorer from ``training``, the benchmark
items of an eval suite from ``evals`` — it asks a registry for it by name, and ``flows`` (the top
layer, which may import everything) registers the implementation. The floors stay floors and the
dependency is still explicit: one registration line in ``flows``.

A target is either an object or a ``"module:attribute"`` string, imported on first use: registering
costs no import (the CLI starts fast) and a stage's heavy dependencies load only when it runs.
"""

from __future__ import annotations

import json
import threading
from importlib import import_module
from typing import Any

from curation.errors import ConfigError


class Registry(dict):
    """``name -> target`` (an object or a ``"module:attribute"`` string), resolved by :meth:`resolve`.

    A plain dict underneath, so tests can ``monkeypatch.setitem`` an entry.
    """

    def __init__(self, kind: str, hint: str = ""):
        super().__init__()
        self.kind = kind
        #: said when a name is missing (e.g. which layer provides these entries)
        self.hint = hint

    def register(self, name: str, target: Any, *, replace: bool = False) -> Any:
        """Add ``name``; registering a different target under a taken name needs ``replace=True``."""
        if not replace and name in self and self[name] != target:
            raise ValueError(f"{self.kind} {name!r} is already registered as {self[name]!r}")
        self[name] = target
        return target

    def resolve(self, name: str) -> Any:
        """The implementation registered as ``name`` (imported now if it was given as a string)."""
        if name not in self:
            known = ", ".join(sorted(self)) or "none"
            hint = f" ({self.hint})" if self.hint else ""
            raise ConfigError(f"unknown {self.kind} {name!r}; known: {known}{hint}")
        target = self[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            obj: Any = import_module(module)
            for part in attr.split(".") if attr else ():
                obj = getattr(obj, part)
            return obj
        return target

    def names(self) -> list[str]:
        return list(self)

    def instance(self, name: str, **config: Any) -> Any:
        """``resolve(name)(**config)``, built once per process and then shared.

        How a model-backed scorer loads its model once per process, however many shards and
        batches that process runs (a worker of a process pool or a Dask cluster builds a fresh stage
        per shard; the scorer it asks for here is the one already loaded). ``config`` must be JSON.
        """
        key = (self.kind, name, json.dumps(config, sort_keys=True, default=str))
        with _INSTANCES_LOCK:
            if key not in _INSTANCES:
                _INSTANCES[key] = self.resolve(name)(**config)
            return _INSTANCES[key]


#: objects built by :meth:`Registry.instance`, per process
_INSTANCES: dict[tuple[str, str, str], Any] = {}
_INSTANCES_LOCK = threading.Lock()


def clear_instances() -> None:
    """Forget every object built by :meth:`Registry.instance` (a later call builds it again): how a finished
    step frees the models it loaded (:func:`curation.memory.release_memory`)."""
    with _INSTANCES_LOCK:
        _INSTANCES.clear()


#: curation stages by recipe key (``stages: [- quality: {...}]``)
STAGES = Registry("stage")
STAGES.register("dedup", "curation.dedup:DedupStage")
STAGES.register("quality", "curation.quality:QualityStage")
STAGES.register("score", "curation.score:ScoreStage")
STAGES.register("select", "curation.select:SelectStage")
STAGES.register("mix", "curation.mix:MixStage")
STAGES.register("decontam", "curation.decontam:DecontamStage")
STAGES.register("exclude", "curation.exclude:ExcludeStage")

#: model-backed or external scores the score stage can compute (registered by flows/)
SCORERS = Registry("scorer", "model-backed scorers are registered by flows/ (import flows first)")

#: resources a stage needs from a higher layer, e.g. the benchmark items of an eval suite
SERVICES = Registry("service", "services are registered by flows/ (import flows first)")

__all__ = ["Registry", "STAGES", "SCORERS", "SERVICES", "clear_instances"]
