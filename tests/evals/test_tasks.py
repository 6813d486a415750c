"""Task specs: every shipped YAML loads and renders real items from the shared benchmark copies."""

from __future__ import annotations

import json

import pytest

from evals.tasks import (
    DataUnavailableError,
    TaskSpecError,
    available_tasks,
    load_items,
    load_suites,
    load_task_spec,
    resolve_suite,
    text_snippets,
)

LOCAL_TASKS = [t for t in available_tasks() if t != "general_probe"]


def test_probe_set_is_project_data_and_well_formed():
    items = load_items("general_probe", data_dir=None)
    assert len(items) == 50
    langs = {it.id.split("-")[0] for it in items}
    assert langs == {"en", "zh"}
    for it in items:
        assert len(it.requests) == 4 and 0 <= it.gold < 4
        assert len({c for _, c in it.requests}) == 4  # no duplicate choices
    zh = next(it for it in items if it.id.startswith("zh"))
    assert zh.requests[0][0].startswith("问题：") and zh.requests[0][0].endswith("答案：")


def test_suites_reference_existing_tasks():
    suites = load_suites()
    assert {"quick", "full"} <= set(suites)
    for plan in suites.values():
        for task in plan:
            load_task_spec(task)
    assert set(suites["full"]) == set(available_tasks())
    assert resolve_suite("quick", limit=5)["arc_easy"] == 5
    assert resolve_suite("arc_easy,piqa") == {"arc_easy": None, "piqa": None}


@pytest.mark.parametrize("task", LOCAL_TASKS)
def test_every_task_renders_from_local_copy(shared_data, task):
    spec = load_task_spec(task)
    items = load_items(task, str(shared_data), limit=20)
    assert len(items) == 20
    assert len({it.id for it in items}) == 20
    for it in items:
        if spec.output_type == "multiple_choice":
            assert len(it.requests) >= 2 and 0 <= int(it.gold) < len(it.requests)
            assert all(ctx and cont for ctx, cont in it.requests)
        elif spec.output_type == "generate_until":
            assert it.prompt.endswith("Answer:") and it.gold
        else:
            assert len(it.requests) == 1 and it.requests[0][1]
    # a seeded sample: same items every time, spread over the file (not just its head)
    again = load_items(task, str(shared_data), limit=20)
    assert [it.id for it in again] == [it.id for it in items]


def test_arc_prompt_matches_lm_eval_format(shared_data):
    it = load_items("arc_easy", str(shared_data), limit=1)[0]
    ctx, cont = it.requests[0]
    assert ctx.startswith("Question: ") and ctx.endswith("\nAnswer:") and cont.startswith(" ")


def test_piqa_labels_are_aligned(shared_data):
    labels = (shared_data / "piqa" / "valid-labels.lst").read_text().split()
    rows = [json.loads(x) for x in (shared_data / "piqa" / "valid.jsonl").read_text().splitlines()]
    for it in load_items("piqa", str(shared_data), limit=30):
        i = int(it.id)
        assert it.gold == int(labels[i])
        assert it.requests[it.gold][1] == " " + rows[i][f"sol{int(labels[i]) + 1}"]


def test_mmlu_redux_keeps_only_ok_rows(shared_data):
    rows = [
        json.loads(x)
        for x in (shared_data / "mmlu_redux" / "mmlu_redux_57subjects.jsonl").read_text().split("\n")
        if x
    ]
    items = load_items("mmlu_redux", str(shared_data))
    ok = [i for i, r in enumerate(rows) if r["error_type"].lower().replace("_", " ") == "ok"]
    assert [int(it.id) for it in items] == ok
    assert 5000 < len(items) < 5700


def test_cmmlu_and_truthfulqa_answers(shared_data):
    it = load_items("cmmlu", str(shared_data), limit=3)[0]
    assert [c for _, c in it.requests] == [" A", " B", " C", " D"] and it.requests[0][0].endswith("答案：")
    mc1 = load_items("truthfulqa_mc1", str(shared_data), limit=5)
    assert all(it.gold == 0 for it in mc1)
    mc2 = load_items("truthfulqa_mc2", str(shared_data), limit=5)
    assert all(1 in it.labels and 0 in it.labels and len(it.labels) == len(it.requests) for it in mc2)


def test_gsm8k_fewshot_exemplars_are_not_scored(shared_data):
    rows = [json.loads(x) for x in (shared_data / "gsm8k" / "test.jsonl").read_text().splitlines()]
    items = load_items("gsm8k", str(shared_data))
    assert len(items) == len(rows) - 3 and items[0].id == "3"
    assert items[0].prompt.startswith("Question: " + rows[0]["question"])
    assert "#### 18" in items[0].prompt  # the first exemplar's worked answer
    assert items[0].gold == rows[3]["answer"].split("####")[-1].strip().replace(",", "")


def test_text_snippets_split_at_headings_and_size():
    text = " = A = \n" + "\n".join(["word " * 30] * 10) + "\n = B = \n" + "more text " * 40
    snippets = text_snippets(text, 400)
    assert all(len(s) <= 420 for s in snippets)
    assert not any(" = A = " in s and " = B = " in s for s in snippets)


def test_bad_spec_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: bad\noutput_type: multiple_choice\nsource: {path: x.jsonl}\nmetric: f1\n")
    with pytest.raises(TaskSpecError, match="bad.yaml.*metric"):
        load_task_spec(str(bad))
    with pytest.raises(TaskSpecError, match="unknown eval task"):
        load_task_spec("nope")


HUB_ROWS = {
    "arc_easy": {
        "question": "Which is a metal?",
        "choices": {"text": ["iron", "wood"], "label": ["A", "B"]},
        "answerKey": "A",
    },
    "hellaswag": {
        "activity_label": "Cooking",
        "ctx_a": "A man cracks an egg.",
        "ctx_b": "he",
        "endings": ["fries it.", "sings."],
        "label": "0",
    },
    "piqa": {"goal": "Open a jar", "sol1": "twist the lid", "sol2": "eat the lid", "label": 0},
    "boolq": {"passage": "Water is wet.", "question": "is water wet", "label": 1},
    "winogrande": {
        "sentence": "The cup fell off the table because _ was unstable.",
        "option1": "the cup",
        "option2": "the table",
        "answer": "2",
    },
    "commonsense_qa": {
        "question": "Where is bread sold?",
        "choices": {"label": ["A", "B"], "text": ["bakery", "river"]},
        "answerKey": "A",
    },
    "truthfulqa_mc1": {
        "question": "Is the sky green?",
        "mc1_targets": {"choices": ["No", "Yes"], "labels": [1, 0]},
    },
    "truthfulqa_mc2": {
        "question": "Is the sky green?",
        "mc2_targets": {"choices": ["No", "Nope", "Yes"], "labels": [1, 1, 0]},
    },
    "openbookqa": {
        "question_stem": "Plants need",
        "choices": {"text": ["light", "rocks"], "label": ["A", "B"]},
        "answerKey": "A",
    },
    "lambada": {"text": "she opened the door and saw her friend"},
    "mmlu_redux": {"question": "2+2?", "choices": ["3", "4", "5", "6"], "answer": 1, "error_type": "ok"},
    "gsm8k": {"question": "What is 2+3?", "answer": "2+3=5\n#### 5"},
}
HUB_EXPECTED = {
    "arc_easy": ("Question: Which is a metal?\nAnswer:", [" iron", " wood"], 0),
    "hellaswag": ("Cooking: A man cracks an egg. He", [" fries it.", " sings."], 0),
    "piqa": ("Question: Open a jar\nAnswer:", [" twist the lid", " eat the lid"], 0),
    "boolq": ("Water is wet.\nQuestion: is water wet?\nAnswer:", [" no", " yes"], 1),
    "commonsense_qa": (
        "Question: Where is bread sold?\nChoices:\nA. bakery\nB. river\nAnswer:",
        [" A", " B"],
        0,
    ),
    "openbookqa": ("Plants need", [" light", " rocks"], 0),
    "mmlu_redux": ("2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", [" A", " B", " C", " D"], 1),
}


@pytest.mark.parametrize("task", sorted(HUB_ROWS))
def test_hub_templates_render_hub_rows(task, monkeypatch):
    """Without a local copy the hub is read; its field names differ, so the hub block's templates apply."""
    import datasets

    monkeypatch.delenv("SFTFLOW_DATA_DIR", raising=False)  # no local copy: the hub path is under test
    row = HUB_ROWS[task]
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: [row] * 4)
    items = load_items(task, data_dir=None)
    it = items[0]
    if task in HUB_EXPECTED:
        ctx, conts, gold = HUB_EXPECTED[task]
        assert it.requests[0][0] == ctx and [c for _, c in it.requests] == conts and it.gold == gold
    elif task == "winogrande":
        assert it.requests == [
            ("The cup fell off the table because the cup", " was unstable."),
            ("The cup fell off the table because the table", " was unstable."),
        ]
        assert it.gold == 1
    elif task == "truthfulqa_mc2":
        assert [c for _, c in it.requests] == [" No", " Nope", " Yes"] and it.labels == [1, 1, 0]
    elif task == "truthfulqa_mc1":
        assert [c for _, c in it.requests] == [" No", " Yes"] and it.gold == 0
    elif task == "lambada":
        assert it.requests == [("she opened the door and saw her", " friend")]
    elif task == "gsm8k":
        assert it.gold == "5" and it.prompt.endswith("Question: What is 2+3?\nAnswer:")


def test_hub_failure_offline_is_a_clear_error(monkeypatch):
    import datasets

    def offline(*a, **k):
        raise ConnectionError("Couldn't reach the Hugging Face Hub")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.delenv("SFTFLOW_DATA_DIR", raising=False)
    with pytest.raises(DataUnavailableError, match="allenai/ai2_arc.*offline mode is on.*SFTFLOW_DATA_DIR"):
        load_items("arc_easy", data_dir=None)
