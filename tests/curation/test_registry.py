"""Registries resolve names lazily and fail with one readable line."""

from __future__ import annotations

import pytest

from curation.errors import ConfigError, SftflowError
from curation.registry import STAGES, Registry


def test_string_targets_import_on_first_use_and_objects_pass_through() -> None:
    reg = Registry("thing")
    reg.register("path_join", "os.path:join")
    reg.register("obj", len)
    import os.path

    assert reg.resolve("path_join") is os.path.join
    assert reg.resolve("obj") is len
    assert sorted(reg.names()) == ["obj", "path_join"]


def test_unknown_name_is_a_user_error_listing_what_is_known() -> None:
    reg = Registry("scorer", "registered by flows/")
    reg.register("ifd", "nowhere:thing")
    with pytest.raises(ConfigError) as e:
        reg.resolve("judge")
    assert isinstance(e.value, SftflowError)
    assert "unknown scorer 'judge'; known: ifd (registered by flows/)" == str(e.value)


def test_a_taken_name_is_not_silently_replaced() -> None:
    reg = Registry("stage")
    reg.register("a", "x:y")
    reg.register("a", "x:y")  # same target again: fine (idempotent imports)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a", "x:z")
    reg.register("a", "x:z", replace=True)
    assert reg["a"] == "x:z"


def test_every_builtin_stage_resolves_to_a_stage_class() -> None:
    from curation.stage import Stage

    for name in STAGES.names():
        cls = STAGES.resolve(name)
        assert issubclass(cls, Stage) and cls.name == name


class _Loaded:
    made = 0

    def __init__(self, model: str = "m"):
        type(self).made += 1
        self.model = model


def test_instance_is_built_once_per_process_and_config() -> None:
    """A model-backed scorer asked for by every shard / batch is loaded once per process."""
    reg = Registry("scorer")
    reg.register("slow", f"{__name__}:_Loaded")
    a = reg.instance("slow", model="x")
    assert reg.instance("slow", model="x") is a and _Loaded.made == 1
    assert reg.instance("slow", model="y") is not a and _Loaded.made == 2
