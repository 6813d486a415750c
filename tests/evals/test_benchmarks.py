"""The benchmark documents the decontamination stage indexes: every item, the right texts, clear errors."""

from __future__ import annotations

from collections import defaultdict

import pytest

from evals.benchmarks import TASK_FIELDS, benchmark_documents, locate, wikitext_detokenize
from evals.tasks import DataUnavailableError, load_items, load_task_spec, resolve_suite


@pytest.fixture(scope="module")
def full_docs(shared_data):
    suite = benchmark_documents("full", str(shared_data))
    by_bench: dict[str, list] = defaultdict(list)
    for d in suite:
        by_bench[d.benchmark].append(d)
    return suite, by_bench


def test_every_benchmark_of_the_suite_and_every_scored_item(full_docs, shared_data):
    suite, by_bench = full_docs
    assert suite.benchmarks == list(resolve_suite("full"))
    assert set(by_bench) == set(resolve_suite("full"))
    assert suite.skipped == {}
    # every item the eval can score is there, under the eval's own item id (few-shot exemplars too)
    for task in ("arc_easy", "mmlu_redux", "gsm8k", "cmmlu", "general_probe", "wikitext2"):
        items = {it.id for it in load_items(task, str(shared_data))}
        docs = {d.item for d in by_bench[task]}
        assert items <= docs, task
    assert {"0", "1", "2"} <= {d.item for d in by_bench["gsm8k"]}  # the exemplars shown in every prompt
    # MMLU-Redux rows its filter rejects are never scored and are not indexed
    assert len({d.item for d in by_bench["mmlu_redux"]}) == len(load_items("mmlu_redux", str(shared_data)))


def test_fields_per_benchmark(full_docs):
    _, by_bench = full_docs
    fields = {b: {d.field for d in docs} for b, docs in by_bench.items()}
    assert fields["cmmlu"] == {"question", "question_choices"}
    assert fields["arc_easy"] == {"question", "question_choices"}
    assert fields["boolq"] == {"question"}  # the passage is given in the prompt: not the item
    assert fields["gsm8k"] == {"question", "answer"}
    assert fields["hellaswag"] == {"completion"}
    assert fields["winogrande"] == {"sentence"}
    arc = next(d for d in by_bench["arc_easy"] if d.field == "question")
    assert not arc.text.startswith("Question:")
    qc = next(d for d in by_bench["cmmlu"] if d.field == "question_choices")
    assert "\nA. " in qc.text and "\nD. " in qc.text
    wino = by_bench["winogrande"][0].text
    assert "_" not in wino and wino.endswith(".")
    assert all("<<" not in d.text for d in by_bench["gsm8k"] if d.field == "answer")
    assert all(" @-@ " not in d.text for d in by_bench["wikitext2"])


def test_wikitext_detokenize():
    assert wikitext_detokenize("a guest @-@ starring role in Teddy 's Story , 1 @,@ 000 did n't") == (
        "a guest-starring role in Teddy's Story , 1,000 didn't"
    )


def test_sources_name_files_and_hub_fallback(tmp_path, shared_data):
    src = locate(load_task_spec("piqa"), str(shared_data))
    assert src.kind == "local"
    assert any(f.endswith("valid-labels.lst") for f in src.files)  # the labels define the gold solution
    assert any(f.endswith("piqa.yaml") for f in src.files)
    hub = locate(load_task_spec("arc_easy"), str(tmp_path))  # no local copy: the eval would read the hub
    assert (hub.kind, hub.location) == ("hub", "hf://allenai/ai2_arc/ARC-Easy?split=test")
    probe = locate(load_task_spec("general_probe"), None)
    assert probe.kind == "repo"


def test_missing_benchmark_file_names_it_or_is_skipped(tmp_path):
    with pytest.raises(DataUnavailableError) as e:
        benchmark_documents("general_probe,cmmlu", str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "cmmlu" / "test") in msg and "\n" not in msg
    suite = benchmark_documents("general_probe,cmmlu", str(tmp_path), skip_missing=True)
    assert suite.benchmarks == ["general_probe"]
    assert str(tmp_path / "cmmlu" / "test") in suite.skipped["cmmlu"]


def test_hub_row_shapes():
    """The same extractors read the hub rows the eval falls back to (field names differ from the local copies)."""
    arc = {"question": "Why?", "choices": {"text": ["a", "b"], "label": ["A", "B"]}, "answerKey": "B"}
    assert TASK_FIELDS["arc_easy"](arc) == [("question", "Why?"), ("question_choices", "Why?\nA. a\nB. b")]
    assert TASK_FIELDS["boolq"]({"passage": "P", "question": "is it", "label": 1}) == [("question", "is it")]
    obqa = {"question_stem": "Predators eat", "choices": {"text": ["grass", "bunnies"], "label": ["A", "B"]},
            "answerKey": "B"}
    assert TASK_FIELDS["openbookqa"](obqa)[0] == ("completion", "Predators eat bunnies")
    wino = {"sentence": "Sarah helped Maria because _ was kind.", "option1": "Sarah", "option2": "Maria",
            "answer": "1"}
    assert TASK_FIELDS["winogrande"](wino) == [("sentence", "Sarah helped Maria because Sarah was kind.")]
    assert TASK_FIELDS["lambada"]({"text": "a b c"}) == [("passage", "a b c")]
    hs = {"ctx": "A man sits.", "endings": ["x", "He stands."], "label": "1"}
    assert TASK_FIELDS["hellaswag"](hs) == [("completion", "A man sits. He stands.")]
    piqa = {"goal": "Open a jar", "sol1": "use a hammer", "sol2": "twist the lid", "label": 1}
    assert TASK_FIELDS["piqa"](piqa)[0] == ("completion", "Open a jar twist the lid")


def test_generic_task_strips_template_boilerplate(tmp_path):
    """A task without a field table: its rendered prompts minus what every item shares."""
    data = tmp_path / "d"
    data.mkdir()
    (data / "qa.jsonl").write_text(
        '{"q": "What colour is the sky on a clear day?", "a": "blue"}\n'
        '{"q": "How many legs does a spider have?", "a": "eight"}\n'
    )
    spec = tmp_path / "my_qa.yaml"
    spec.write_text(
        "task: my_qa\noutput_type: generate_until\nsource: {path: qa.jsonl}\n"
        'doc_to_text: "Answer briefly.\\nQ: {{ q }}\\nA:"\ndoc_to_target: a\n'
    )
    suite = benchmark_documents(str(spec), str(data))
    assert [d.text for d in suite] == ["What colour is the sky on a clear day?", "How many legs does a spider have?"]
    assert [d.item for d in suite] == ["0", "1"]
