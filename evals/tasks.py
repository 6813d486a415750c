"""Benchmark specs: one declarative YAML per task (``evals/tasks/<name>.yaml``), lm-eval style.

A spec names where the data comes from (a local copy relative to ``data_dir``, a project file, or a
hub id read through ``datasets``), and Jinja templates that turn one source row ("doc") into a prompt,
its choices and its answer. Adding a benchmark needs a YAML file, no code. Suites
(``evals/tasks/suites.yaml``) are named lists of tasks with an item budget each.

Output types (what the scorer does with an item):

- ``multiple_choice``: one context, several continuations; predicted = highest summed log-likelihood
  (``acc``) or highest log-likelihood per character of the choice (``acc_norm``, as lm-eval).
  With ``doc_to_contexts`` the choices are contexts and the continuation is shared (WinoGrande).
  ``metric: mc2`` scores the normalised probability mass on the true answers (TruthfulQA MC2).
- ``loglikelihood``: one context, one target; correct when the target is the greedy continuation
  (LAMBADA); also gives perplexity.
- ``generate_until``: greedy generation cut at stop sequences, exact match on the extracted answer.
- ``perplexity``: plain-text snippets; log-prob per token and bits per byte, plus KL to the base.
"""

from __future__ import annotations

import csv
import json
import os
import random
import re
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from curation.errors import SftflowError

TASKS_DIR = Path(__file__).resolve().parent / "tasks"
REPO_ROOT = Path(__file__).resolve().parents[1]

OutputType = Literal["multiple_choice", "loglikelihood", "generate_until", "perplexity"]


class TaskSpecError(SftflowError, ValueError):
    """A task spec or its data is wrong; the message names the file and field."""


class DataUnavailableError(SftflowError, RuntimeError):
    """The task's data is neither in ``data_dir`` nor reachable on the hub (offline)."""


class HubSource(BaseModel):
    """A hub dataset (``datasets.load_dataset(path, name, split=split)``) and the templates for its fields."""

    model_config = ConfigDict(extra="forbid")
    path: str
    name: str | None = None
    split: str
    doc_to_text: str | None = None
    doc_to_contexts: str | list[str] | None = None
    doc_to_choice: str | list[str] | None = None
    doc_to_target: str | None = None
    labels: str | None = None
    filter: str | None = None


class Source(BaseModel):
    """Where the rows come from. ``path`` is relative to ``data_dir``; ``repo_path`` to the sftflow checkout."""

    model_config = ConfigDict(extra="forbid")
    path: str | None = None
    repo_path: str | None = None
    #: jsonl | json (a list of objects) | csv | csv_dir (every ``*.csv`` under path, ``subject`` = stem) |
    #: text_snippets (a text file cut into snippets of about ``snippet_chars`` at line ends)
    format: Literal["jsonl", "json", "csv", "csv_dir", "text_snippets"] = "jsonl"
    #: a plain-text file of labels aligned line by line with the rows (PIQA), stored as field ``label``
    labels_path: str | None = None
    snippet_chars: int = 1000
    hub: HubSource | None = None


class TaskSpec(BaseModel):
    """One benchmark. Templates are Jinja; ``doc_to_choice``/``doc_to_target`` may also name a field."""

    model_config = ConfigDict(extra="forbid")
    task: str
    description: str = ""
    lang: str = "en"
    output_type: OutputType
    source: Source
    #: a field naming each row (default: the row's position in the source)
    doc_to_id: str | None = None
    #: keep only rows where this Jinja expression renders true (e.g. MMLU-Redux error_type == ok)
    filter: str | None = None
    doc_to_text: str = ""
    doc_to_contexts: str | list[str] | None = None
    doc_to_choice: str | list[str] | None = None
    doc_to_target: str | None = None
    #: for ``metric: mc2``: a field / template giving 0/1 truth labels aligned with the choices
    labels: str | None = None
    target_delimiter: str = " "
    fewshot_delimiter: str = "\n\n"
    #: the first ``num_fewshot`` rows are exemplars (prepended to every prompt) and never scored
    num_fewshot: int = 0
    #: template of an exemplar's answer (default: the target / the correct choice)
    fewshot_target: str | None = None
    metric: Literal["acc", "acc_norm", "mc2", "exact_match", "bits_per_byte"] = "acc"
    #: generate_until: stop sequences and a regex whose first group is the answer (else the last number)
    until: list[str] = field(default_factory=list)
    answer_regex: str | None = None
    max_new_tokens: int = 128
    #: False for tasks that are reported but never decide the verdict (perplexity signals)
    gated: bool = True
    #: items are sampled with this seed before ``limit`` applies, so a subset spans the whole set
    sample_seed: int = 1234


@dataclass(slots=True)
class Item:
    """One scored question, already rendered: the scorer never sees templates."""

    task: str
    id: str
    #: one entry per choice: (context, continuation); loglikelihood/perplexity items have one entry
    requests: list[tuple[str, str]]
    #: the choice strings whose character length ``acc_norm`` divides by (lm-eval's ``doc_to_choice``)
    choice_texts: list[str] = field(default_factory=list)
    gold: int | str = 0
    #: mc2: 0/1 truth label per choice
    labels: list[int] | None = None
    #: generate_until: the prompt, stop sequences, answer extraction
    prompt: str = ""


# ------------------------------------------------------------------------------------------------
# spec loading


def available_tasks() -> list[str]:
    """Names of the task specs shipped in ``evals/tasks``."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml") if p.stem != "suites")


@cache
def load_task_spec(name: str) -> TaskSpec:
    """The spec of task ``name`` (a shipped name or a path to a YAML file)."""
    path = Path(name) if name.endswith((".yaml", ".yml")) else TASKS_DIR / f"{name}.yaml"
    if not path.exists():
        raise TaskSpecError(f"unknown eval task {name!r}; known tasks: {', '.join(available_tasks())}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise TaskSpecError(f"{path}: not valid YAML ({e})") from None
    try:
        return TaskSpec.model_validate(raw)
    except ValidationError as e:
        errs = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors())
        raise TaskSpecError(f"{path}: {errs}") from None


@dataclass(frozen=True, slots=True)
class SuitePlan:
    """What a suite runs: per task an item cap (None = all), and how the gated tasks share items.

    ``budget``: items per model shared by the gated tasks that turn out informative (each gets an equal
    share, up to its cap; a task that cannot use its share leaves it to the others). ``screen``: items the
    base model answers first, per gated task, to tell whether the task is informative (its accuracy above
    chance). Both None = every task runs its cap.
    """

    tasks: dict[str, int | None]
    budget: int | None = None
    screen: int | None = None


def _suite_entry(name: str, raw: Any) -> SuitePlan:
    where = f"{TASKS_DIR / 'suites.yaml'}: suite {name}"
    if not isinstance(raw, dict):
        raise TaskSpecError(f"{where}: expected a mapping of task -> items")
    if "tasks" in raw:
        unknown = set(raw) - {"tasks", "budget", "screen"}
        if unknown:
            raise TaskSpecError(f"{where}: unknown keys {sorted(unknown)} (allowed: tasks, budget, screen)")
        tasks, budget, screen = raw["tasks"], raw.get("budget"), raw.get("screen")
    else:
        tasks, budget, screen = raw, None, None
    return SuitePlan(
        {t: (n if n is None else int(n)) for t, n in (tasks or {}).items()},
        None if budget is None else int(budget),
        None if screen is None else int(screen),
    )


def load_suite_plans() -> dict[str, SuitePlan]:
    """Every suite of ``evals/tasks/suites.yaml``."""
    raw = yaml.safe_load((TASKS_DIR / "suites.yaml").read_text(encoding="utf-8"))
    return {name: _suite_entry(name, entry) for name, entry in raw.items()}


def load_suites() -> dict[str, dict[str, int | None]]:
    """``{suite: {task: item cap or None for all}}`` from ``evals/tasks/suites.yaml``."""
    return {name: plan.tasks for name, plan in load_suite_plans().items()}


def suite_plan(suite: str, limit: int | None = None) -> SuitePlan:
    """The plan of a suite name or a comma-separated list of task names (no budget, no screening).

    ``limit`` caps every task (it replaces the suite's cap when smaller, or fills it when unset).
    """
    plans = load_suite_plans()
    if suite in plans:
        plan = plans[suite]
        tasks = dict(plan.tasks)
    else:
        names = [s.strip() for s in suite.split(",") if s.strip()]
        if not names:
            raise TaskSpecError(f"empty eval suite {suite!r}")
        for n in names:
            load_task_spec(n)  # clear error for an unknown name
        plan = SuitePlan({})
        tasks = dict.fromkeys(names)
    if limit is not None:
        tasks = {t: (limit if n is None else min(n, limit)) for t, n in tasks.items()}
    return SuitePlan(tasks, plan.budget, plan.screen)


def resolve_suite(suite: str, limit: int | None = None) -> dict[str, int | None]:
    """Tasks and per-task item caps for a suite name or a comma-separated list of task names."""
    return suite_plan(suite, limit).tasks


# ------------------------------------------------------------------------------------------------
# rendering


@lru_cache(maxsize=1)
def _envs():
    import jinja2
    from jinja2.nativetypes import NativeEnvironment

    # Undefined names fail loudly: a typo in a template must not silently render "".
    text_env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    native_env = NativeEnvironment(undefined=jinja2.StrictUndefined)
    return text_env, native_env


@lru_cache(maxsize=512)
def _compile(template: str, native: bool):
    text_env, native_env = _envs()
    return (native_env if native else text_env).from_string(template)


def render_text(template: str, doc: dict[str, Any]) -> str:
    return _compile(template, False).render(**doc)


def render_value(template: str | list[str], doc: dict[str, Any]) -> Any:
    """A field name → the field; a list → each element rendered as text; else a native-typed Jinja render."""
    if isinstance(template, list):
        return [render_text(t, doc) for t in template]
    if template in doc:
        return doc[template]
    return _compile(template, True).render(**doc)


def _spec_view(spec: TaskSpec, hub: bool) -> dict[str, Any]:
    """The templates to use: the spec's own, overridden by the hub block's when reading the hub."""
    fields = ("doc_to_text", "doc_to_contexts", "doc_to_choice", "doc_to_target", "labels", "filter")
    view = {f: getattr(spec, f) for f in fields}
    if hub and spec.source.hub is not None:
        for f in fields:
            override = getattr(spec.source.hub, f)
            if override is not None:
                view[f] = override
    return view


def _as_int(value: Any, where: str) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise TaskSpecError(f"{where}: answer {value!r} is not an index") from None


def build_item(
    spec: TaskSpec, doc: dict[str, Any], doc_id: str, fewshot_prefix: str = "", hub: bool = False
) -> Item:
    """Render one source row into an :class:`Item` for the scorer."""
    view = _spec_view(spec, hub)
    where = f"task {spec.task}, row {doc_id}"
    try:
        text = (
            fewshot_prefix + render_text(view["doc_to_text"], doc) if view["doc_to_text"] else fewshot_prefix
        )
        if spec.output_type == "multiple_choice":
            delim = spec.target_delimiter
            if view["doc_to_contexts"] is not None:
                contexts = [fewshot_prefix + c for c in render_value(view["doc_to_contexts"], doc)]
                cont = render_value(view["doc_to_choice"], doc)
                cont = cont[0] if isinstance(cont, list) else str(cont)
                requests = [(c, delim + cont) for c in contexts]
                choice_texts = contexts
            else:
                choices = [str(c) for c in render_value(view["doc_to_choice"], doc)]
                requests = [(text, delim + c) for c in choices]
                choice_texts = choices
            labels = None
            if spec.metric == "mc2":
                labels = [int(x) for x in render_value(view["labels"], doc)]
                gold = 0
            else:
                gold = _as_int(render_value(view["doc_to_target"], doc), where)
            if not 0 <= gold < len(requests):
                raise TaskSpecError(f"{where}: answer index {gold} outside {len(requests)} choices")
            return Item(spec.task, doc_id, requests, choice_texts, gold, labels)
        if spec.output_type == "loglikelihood":
            target = str(render_value(view["doc_to_target"], doc))
            return Item(spec.task, doc_id, [(text, target)], [target], 0)
        if spec.output_type == "generate_until":
            target = str(render_value(view["doc_to_target"], doc)).strip()
            return Item(spec.task, doc_id, [], [], target, prompt=text)
        # perplexity: the whole text is the continuation of an empty context (the prefix token)
        return Item(spec.task, doc_id, [("", text)], [text], 0)
    except TaskSpecError:
        raise
    except Exception as e:  # jinja errors, missing fields, bad types
        raise TaskSpecError(f"{where}: cannot render ({type(e).__name__}: {e})") from None


# ------------------------------------------------------------------------------------------------
# data loading


def default_data_dir() -> str | None:
    return os.environ.get("SFTFLOW_DATA_DIR") or None


def _read_rows(spec: TaskSpec, data_dir: str | None) -> tuple[list[dict[str, Any]], bool]:
    """All rows of the task's source and whether they came from the hub."""
    src = spec.source
    if src.repo_path is not None:
        return _read_file_rows(spec, REPO_ROOT / src.repo_path), False
    if src.path is not None and data_dir is not None:
        path = Path(data_dir) / src.path
        if path.exists():
            return _read_file_rows(spec, path), False
    if src.hub is not None:
        return _read_hub_rows(spec, data_dir), True
    where = f"{Path(data_dir) / src.path}" if data_dir and src.path else "no data_dir given"
    raise DataUnavailableError(
        f"task {spec.task}: local copy not found ({where}) and the spec has no hub source"
    )


def _read_hub_rows(spec: TaskSpec, data_dir: str | None) -> list[dict[str, Any]]:
    hub = spec.source.hub
    assert hub is not None
    local = (
        f" (local copy {Path(data_dir) / spec.source.path} not found)"
        if data_dir and spec.source.path
        else ""
    )
    try:
        import datasets

        ds = datasets.load_dataset(hub.path, hub.name, split=hub.split)
    except Exception as e:
        offline = os.environ.get("HF_DATASETS_OFFLINE") == "1" or os.environ.get("HF_HUB_OFFLINE") == "1"
        hint = (
            "; offline mode is on, so point data_dir / SFTFLOW_DATA_DIR at local benchmark copies"
            if offline
            else "; set data_dir / SFTFLOW_DATA_DIR to local benchmark copies to run offline"
        )
        raise DataUnavailableError(
            f"task {spec.task}: cannot load hub dataset {hub.path}"
            f"{'/' + hub.name if hub.name else ''} split {hub.split}{local}: "
            f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}{hint}"
        ) from None
    return [dict(r) for r in ds]


def _read_file_rows(spec: TaskSpec, path: Path) -> list[dict[str, Any]]:
    src = spec.source
    fmt = src.format
    try:
        if fmt == "jsonl":
            rows = []
            with open(path, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        try:
                            rows.append(json.loads(line))
                        except json.JSONDecodeError as e:
                            raise TaskSpecError(f"{path}:{n}: not valid JSON ({e})") from None
        elif fmt == "json":
            rows = json.loads(path.read_text(encoding="utf-8"))
        elif fmt == "csv":
            with open(path, encoding="utf-8", newline="") as fh:
                rows = list(csv.DictReader(fh))
        elif fmt == "csv_dir":
            rows = []
            for f in sorted(path.glob("*.csv")):
                with open(f, encoding="utf-8", newline="") as fh:
                    rows.extend({**r, "subject": f.stem} for r in csv.DictReader(fh))
        else:
            rows = [{"text": s} for s in text_snippets(path.read_text(encoding="utf-8"), src.snippet_chars)]
    except OSError as e:
        raise DataUnavailableError(f"task {spec.task}: cannot read {path} ({e})") from None
    if src.labels_path is not None:
        labels_file = path.parent / Path(src.labels_path).name
        labels = [ln.strip() for ln in labels_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if len(labels) != len(rows):
            raise TaskSpecError(f"{labels_file}: {len(labels)} labels for {len(rows)} rows of {path}")
        rows = [{**r, "label": lab} for r, lab in zip(rows, labels, strict=True)]
    return rows


_HEADING = re.compile(r"^ = [^=].* = $")


def text_snippets(text: str, snippet_chars: int) -> list[str]:
    """Cut text into snippets of whole lines, about ``snippet_chars`` each, never across an article heading.

    WikiText headings (`` = Title = ``) start a new snippet, so a snippet never mixes two articles.
    """
    snippets: list[str] = []
    cur: list[str] = []
    size = 0
    for line in text.splitlines():
        if not line.strip():
            continue
        if cur and (_HEADING.match(line) or size + len(line) > snippet_chars):
            snippets.append("\n".join(cur))
            cur, size = [], 0
        if len(line) > snippet_chars:  # one long paragraph: cut at a word boundary
            line = line[:snippet_chars].rsplit(" ", 1)[0]
        cur.append(line)
        size += len(line) + 1
    if cur:
        snippets.append("\n".join(cur))
    # headings alone say little; keep snippets with some running text
    return [s for s in snippets if len(s) >= min(200, snippet_chars // 4)]


def _fewshot_example(spec: TaskSpec, doc: dict[str, Any], hub: bool) -> str:
    """A solved exemplar: the prompt followed by its answer (``fewshot_target`` when given, e.g. a worked solution)."""
    item = build_item(spec, doc, "fewshot", hub=hub)
    if spec.fewshot_target is not None:
        return (
            render_text(spec.doc_to_text, doc) + spec.target_delimiter + render_text(spec.fewshot_target, doc)
        )
    if spec.output_type == "generate_until":
        return item.prompt + spec.target_delimiter + str(item.gold)
    context, continuation = item.requests[int(item.gold)]
    return context + continuation


class TaskData:
    """The rows of one task, read once: filtered, few-shot exemplars set aside, ready to sample and render."""

    def __init__(self, name: str, data_dir: str | None = None):
        self.spec = load_task_spec(name)
        rows, self.hub = _read_rows(self.spec, data_dir if data_dir is not None else default_data_dir())
        view = _spec_view(self.spec, self.hub)
        indexed = list(enumerate(rows))
        if view["filter"]:
            kept = []
            for i, r in indexed:
                try:
                    ok = render_value(view["filter"], r)
                except Exception as e:
                    raise TaskSpecError(
                        f"task {self.spec.task}, row {i}: filter cannot render ({e})"
                    ) from None
                if ok is True or str(ok).strip().lower() == "true":
                    kept.append((i, r))
            indexed = kept
        self.prefix = ""
        if self.spec.num_fewshot:
            shots, indexed = indexed[: self.spec.num_fewshot], indexed[self.spec.num_fewshot :]
            self.prefix = "".join(
                _fewshot_example(self.spec, r, self.hub) + self.spec.fewshot_delimiter for _, r in shots
            )
        self._rows = indexed
        # one seeded order of all rows: a sample of k is its first k, so smaller samples nest in larger
        self._order = random.Random(self.spec.sample_seed).sample(range(len(indexed)), len(indexed))

    @property
    def size(self) -> int:
        """Scorable items (after the filter and the few-shot exemplars)."""
        return len(self._rows)

    def items(self, limit: int | None = None) -> list[Item]:
        """A seeded sample of ``limit`` items (all when None), in source order."""
        chosen = (
            self._rows
            if limit is None or limit >= self.size
            else [self._rows[i] for i in sorted(self._order[:limit])]
        )
        spec = self.spec
        return [
            build_item(
                spec, r, str(r[spec.doc_to_id]) if spec.doc_to_id else str(i), self.prefix, hub=self.hub
            )
            for i, r in chosen
        ]


def load_items(name: str, data_dir: str | None = None, limit: int | None = None) -> list[Item]:
    """The rendered items of task ``name``: filtered, few-shot exemplars removed, a seeded sample of ``limit``.

    Samples nest: the items of a smaller ``limit`` are among those of a larger one.
    """
    return TaskData(name, data_dir).items(limit)
