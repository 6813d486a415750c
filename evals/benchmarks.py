"""The benchmark documents of an eval suite: what the decontamination stage must keep out of training data.

Scoring samples a suite's items; decontamination must cover **every** item of every benchmark in the
suite, read from the same local copies (``data_dir`` / ``$SFTFLOW_DATA_DIR``) or hub ids the eval uses.
:func:`benchmark_documents` resolves where each benchmark's data comes from *without reading it* (so a
cached index can be keyed on the files' bytes and a missing file is reported up front) and then yields,
per item, the texts worth matching:

===================  ==========================================================================
benchmark            texts (field names)
===================  ==========================================================================
ARC, MMLU-Redux,     ``question``, and ``question_choices``: the question with its lettered choices
CommonsenseQA,       as the eval shows them (``A. ...``). Many questions are stems whose content is in
OpenBookQA, CMMLU,   the choices ("下列说法正确的是", "Which of the following is true?"); the
probe                stage does not match such template wording alone, so the item is found with
                     its choices
TruthfulQA           ``question`` (open questions; the answer options are not the item)
BoolQ                ``question``: the passage is given in the prompt at eval time, so a training row
                     quoting the same Wikipedia paragraph leaks nothing; the question does
HellaSwag            ``completion``: context + the correct ending (contexts alone are fragments)
PIQA                 ``completion`` (goal + the correct solution) and ``goal``
WinoGrande           ``sentence``: the sentence with the blank filled by the correct option
LAMBADA              ``passage``: context + the final word
GSM8K                ``question`` and ``answer`` (the worked solution, calculator annotations removed)
WikiText-2           ``text``: each snippet the eval scores, de-tokenised (``@-@`` → ``-``, `` 's`` → ``'s``)
other tasks          ``text``: the rendered prompt without few-shot exemplars and without the template's
                     boilerplate (the prefix and suffix every item of the task shares)
===================  ==========================================================================

Rows the task's ``filter`` rejects are never scored and are left out; few-shot exemplars are shown in
every prompt and are kept. Item ids are the eval's (``items.parquet``): the ``doc_to_id`` field or the
row's position in the source.

The stage in :mod:`curation.decontam` reaches this through ``curation.registry.SERVICES``
(``benchmark_documents``), registered in :mod:`flows.plugins`; ``curation`` never imports ``evals``.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.tasks import (
    REPO_ROOT,
    TASKS_DIR,
    DataUnavailableError,
    TaskSpec,
    build_item,
    default_data_dir,
    load_task_spec,
    render_value,
    resolve_suite,
)

# The row readers are the eval's own (same files, same parsing, same hub fallback), not a second copy.
from evals.tasks import _read_rows as read_task_rows
from evals.tasks import _spec_view as spec_view

#: identifies the texts extracted per benchmark (part of the decontamination index's cache key): the
#: version, and this module's source, so editing an extractor never reuses an index built by the old one
DOCUMENTS_VERSION = f"1:{hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]}"


@dataclass(frozen=True, slots=True)
class BenchmarkDocument:
    """One text of one benchmark item."""

    benchmark: str
    item: str
    field: str
    text: str


@dataclass(frozen=True)
class BenchmarkSource:
    """Where one benchmark of the suite is read from."""

    benchmark: str
    #: ``local`` (a file or folder), ``repo`` (shipped with sftflow) or ``hub``
    kind: str
    #: the path, or ``hf://path[/name]?split=...`` for a hub dataset
    location: str
    #: local files whose bytes define the documents (the task spec included); empty for the hub part
    files: tuple[str, ...]
    lang: str
    #: the task name or spec file the suite names (what :func:`evals.tasks.load_task_spec` takes)
    spec: str = ""


@dataclass
class SuiteDocuments:
    """The benchmarks of one suite: where each comes from, which are missing, and their documents."""

    suite: str
    data_dir: str | None
    sources: list[BenchmarkSource]
    #: benchmark → why it is missing (only with ``skip_missing``; otherwise missing data raises)
    skipped: dict[str, str] = field(default_factory=dict)
    version: str = DOCUMENTS_VERSION

    @property
    def benchmarks(self) -> list[str]:
        return [s.benchmark for s in self.sources]

    def documents(self, benchmark: str) -> Iterator[BenchmarkDocument]:
        """Every text of every item of ``benchmark``; raises :class:`DataUnavailableError` if it cannot be read."""
        spec = next((s.spec for s in self.sources if s.benchmark == benchmark), benchmark)
        yield from _task_documents(load_task_spec(spec or benchmark), self.data_dir)

    def __iter__(self) -> Iterator[BenchmarkDocument]:
        for s in self.sources:
            yield from self.documents(s.benchmark)


def benchmark_documents(
    suite: str = "full", data_dir: str | None = None, *, skip_missing: bool = False
) -> SuiteDocuments:
    """The benchmarks of ``suite`` (a suite name or comma-separated task names) with their sources.

    ``data_dir`` defaults to ``$SFTFLOW_DATA_DIR`` (as the eval's). A benchmark with no local copy and no
    hub source raises :class:`DataUnavailableError` naming the file, or with ``skip_missing`` is listed
    in ``skipped``. Hub sources are only opened when the documents are read.
    """
    data_dir = data_dir if data_dir is not None else default_data_dir()
    sources: list[BenchmarkSource] = []
    skipped: dict[str, str] = {}
    for task in resolve_suite(suite):
        spec = load_task_spec(task)
        spec_file = Path(task) if task.endswith((".yaml", ".yml")) else TASKS_DIR / f"{task}.yaml"
        try:
            sources.append(locate(spec, data_dir, spec_file=str(spec_file), spec_ref=task))
        except DataUnavailableError as e:
            if not skip_missing:
                raise
            skipped[spec.task] = str(e)
    return SuiteDocuments(suite, data_dir, sources, skipped)


def locate(
    spec: TaskSpec, data_dir: str | None, *, spec_file: str | None = None, spec_ref: str | None = None
) -> BenchmarkSource:
    """Where the eval reads ``spec``'s rows from (the same choice as :func:`evals.tasks.load_items`)."""
    src = spec.source
    spec_file = spec_file or str(TASKS_DIR / f"{spec.task}.yaml")
    ref = spec_ref or spec.task
    if src.repo_path is not None:
        path = REPO_ROOT / src.repo_path
        if not path.exists():
            raise DataUnavailableError(f"task {spec.task}: project file {path} not found")
        return BenchmarkSource(spec.task, "repo", str(path), (spec_file, str(path)), spec.lang, ref)
    if src.path is not None and data_dir is not None:
        path = Path(data_dir) / src.path
        if path.exists():
            files = [spec_file, str(path)]
            if src.labels_path is not None:
                files.append(str(path.parent / Path(src.labels_path).name))
            return BenchmarkSource(spec.task, "local", str(path), tuple(files), spec.lang, ref)
    if src.hub is not None:
        hub = src.hub
        loc = f"hf://{hub.path}{'/' + hub.name if hub.name else ''}?split={hub.split}"
        return BenchmarkSource(spec.task, "hub", loc, (spec_file,), spec.lang, ref)
    if src.path is not None and data_dir is not None:
        where = f"{Path(data_dir) / src.path} not found"
    elif src.path is not None:
        where = f"{src.path} not found: no data_dir given (set --data-dir or SFTFLOW_DATA_DIR)"
    else:
        where = "no source path"
    raise DataUnavailableError(f"task {spec.task}: benchmark file {where}, and the spec has no hub source")


# ------------------------------------------------------------------------------------------------
# per-task texts: each function sees one source row (local copy or hub row) and yields (field, text)

Fields = Callable[[dict[str, Any]], list[tuple[str, str]]]


def _strip_prefix(text: str, prefix: str) -> str:
    return text[len(prefix) :] if text.startswith(prefix) else text


def _question(row: dict[str, Any]) -> str:
    """The question of an ARC / CommonsenseQA style row (hub: ``question``; local: ``query`` minus its template)."""
    if "question" in row and isinstance(row["question"], str):
        return row["question"]
    q = _strip_prefix(row["query"], "Question: ")
    return q.split("\nChoices:")[0].removesuffix("\nAnswer:")


def _with_choices(question: str, choices: list[str]) -> list[tuple[str, str]]:
    lettered = "\n".join(f"{chr(65 + i)}. {c}" for i, c in enumerate(choices))
    return [("question", question), ("question_choices", f"{question}\n{lettered}")]


def _choice_texts(row: dict[str, Any]) -> list[str]:
    choices = row["choices"]
    if isinstance(choices, dict):  # hub ARC / CommonsenseQA / OpenBookQA: {text: [...], label: [...]}
        return [str(c) for c in choices["text"]]
    return [str(c) for c in choices]


def _mc_question(row: dict[str, Any]) -> list[tuple[str, str]]:
    """ARC / MMLU / probe: the question, and the question with its choices."""
    return _with_choices(_question(row), _choice_texts(row))


def _commonsense_qa(row: dict[str, Any]) -> list[tuple[str, str]]:
    if "question" in row:
        return _with_choices(row["question"], _choice_texts(row))
    # the local copy renders the lettered choices into the query already
    q = _strip_prefix(row["query"], "Question: ").removesuffix("\nAnswer:")
    question, _, choices = q.partition("\nChoices:\n")
    return [("question", question), ("question_choices", f"{question}\n{choices.strip()}")]


def _choice(choices: Any, gold: Any) -> str:
    if isinstance(choices, dict):  # hub ARC / OpenBookQA: {text: [...], label: [...]}
        return str(choices["text"][choices["label"].index(str(gold).strip())])
    return str(choices[int(gold)])


def _boolq(row: dict[str, Any]) -> list[tuple[str, str]]:
    if "question" in row:
        return [("question", row["question"])]
    return [("question", row["query"].rpartition("\nQuestion: ")[2])]


def _hellaswag(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [("completion", f"{row['ctx']} {row['endings'][int(row['label'])]}")]


def _piqa(row: dict[str, Any]) -> list[tuple[str, str]]:
    sol = row["sol1"] if int(row["label"]) == 0 else row["sol2"]
    return [("completion", f"{row['goal']} {sol}"), ("goal", row["goal"])]


def _openbookqa(row: dict[str, Any]) -> list[tuple[str, str]]:
    if "question_stem" in row:
        stem, answer = row["question_stem"], _choice(row["choices"], row["answerKey"])
    else:
        stem, answer = row["query"], _choice(row["choices"], row["gold"])
    return [("completion", f"{stem} {answer}"), *_with_choices(stem, _choice_texts(row))]


def _winogrande(row: dict[str, Any]) -> list[tuple[str, str]]:
    if "sentence" in row:
        option = row["option1"] if str(row["answer"]).strip() == "1" else row["option2"]
        return [("sentence", row["sentence"].replace("_", option, 1))]
    return [("sentence", f"{row['context_options'][int(row['gold'])]} {row['continuation']}")]


def _lambada(row: dict[str, Any]) -> list[tuple[str, str]]:
    if "text" in row:
        return [("passage", row["text"])]
    return [("passage", f"{row['context']} {row['continuation']}")]


_CALC = re.compile(r"<<[^<>]*>>")


def _gsm8k(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [("question", row["question"]), ("answer", _CALC.sub("", row["answer"]))]


_WT_JOINER = re.compile(r" @(.)@ ")
_WT_CLITIC = re.compile(r" (['’](?:s|re|ve|ll|d|m)\b|n't\b)")


def wikitext_detokenize(text: str) -> str:
    """WikiText's ``guest @-@ starring`` / ``Teddy 's`` / ``did n't`` back to running text."""
    return _WT_CLITIC.sub(r"\1", _WT_JOINER.sub(r"\1", text))


def _wikitext(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [("text", wikitext_detokenize(row["text"]))]


def _cmmlu(row: dict[str, Any]) -> list[tuple[str, str]]:
    return _with_choices(row["Question"].strip(), [row[k] for k in "ABCD"])


def _question_field(row: dict[str, Any]) -> list[tuple[str, str]]:
    return [("question", _question(row))]


#: the shipped benchmarks; any other task gets :func:`_generic_documents`
TASK_FIELDS: dict[str, Fields] = {
    "general_probe": _mc_question,
    "arc_easy": _mc_question,
    "arc_challenge": _mc_question,
    "commonsense_qa": _commonsense_qa,
    "mmlu_redux": _mc_question,
    "truthfulqa_mc1": _question_field,
    "truthfulqa_mc2": _question_field,
    "boolq": _boolq,
    "hellaswag": _hellaswag,
    "piqa": _piqa,
    "openbookqa": _openbookqa,
    "winogrande": _winogrande,
    "lambada": _lambada,
    "gsm8k": _gsm8k,
    "wikitext2": _wikitext,
    "cmmlu": _cmmlu,
}


def _scored_rows(spec: TaskSpec, data_dir: str | None) -> tuple[list[tuple[str, dict[str, Any]]], bool]:
    """(item id, row) for every row the eval can show: the filter applied, few-shot exemplars kept."""
    rows, hub = read_task_rows(spec, data_dir)
    flt = spec_view(spec, hub)["filter"]
    out = []
    for i, r in enumerate(rows):
        if flt:
            ok = render_value(flt, r)
            if not (ok is True or str(ok).strip().lower() == "true"):
                continue
        out.append((str(r[spec.doc_to_id]) if spec.doc_to_id else str(i), r))
    return out, hub


def _task_documents(spec: TaskSpec, data_dir: str | None) -> Iterator[BenchmarkDocument]:
    rows, hub = _scored_rows(spec, data_dir)
    fields = TASK_FIELDS.get(spec.task)
    if fields is None:
        yield from _generic_documents(spec, rows, hub)
        return
    for item, row in rows:
        try:
            pairs = fields(row)
        except (KeyError, IndexError, ValueError, TypeError) as e:
            raise DataUnavailableError(
                f"task {spec.task}, row {item}: unexpected row shape for decontamination ({type(e).__name__}: {e})"
            ) from None
        for name, text in pairs:
            if text and text.strip():
                yield BenchmarkDocument(spec.task, item, name, text)


def _generic_documents(
    spec: TaskSpec, rows: list[tuple[str, dict[str, Any]]], hub: bool
) -> Iterator[BenchmarkDocument]:
    """A task without a field table: its rendered prompts, minus the boilerplate all items share."""
    texts = []
    for item, row in rows:
        it = build_item(spec, row, item, hub=hub)
        if spec.output_type == "generate_until":
            text = it.prompt
        elif spec.output_type == "multiple_choice" and spec.doc_to_contexts is not None:
            ctx, cont = it.requests[int(it.gold)]
            text = ctx + cont
        elif spec.output_type == "loglikelihood":
            text = it.requests[0][0] + it.requests[0][1]
        elif spec.output_type == "perplexity":
            text = it.requests[0][1]
        else:
            text = it.requests[int(it.gold) if it.labels is None else 0][0]
        texts.append((item, text))
    if len(texts) > 1:
        # shared template text, cut back to whole words ("?\nA:" shared by all questions keeps the "?")
        prefix = os.path.commonprefix([t for _, t in texts])
        if prefix and not prefix[-1].isspace():
            prefix = prefix[: max((prefix.rfind(c) for c in " \n\t"), default=-1) + 1]
        suffix = os.path.commonprefix([t[::-1] for _, t in texts])[::-1]
        if suffix and not suffix[0].isspace():
            cut = [i for i in (suffix.find(c) for c in " \n\t") if i >= 0]
            suffix = suffix[min(cut) :] if cut else ""
        texts = [(i, t[len(prefix) : len(t) - len(suffix)] if len(prefix) + len(suffix) < len(t) else t)
                 for i, t in texts]
    for item, text in texts:
        if text.strip():
            yield BenchmarkDocument(spec.task, item, "text", text)


__all__ = [
    "BenchmarkDocument",
    "BenchmarkSource",
    "SuiteDocuments",
    "benchmark_documents",
    "locate",
    "wikitext_detokenize",
    "DOCUMENTS_VERSION",
]
