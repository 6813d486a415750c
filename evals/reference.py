"""Cross-check against lm-evaluation-harness: the same items, the same model, per-item predictions.

lm-eval (a dev dependency) reads our rendered items as a local JSON dataset through a generated task
config (``dataset_path: json``), so it runs offline (``HF_DATASETS_OFFLINE=1``): the ``json`` builder ships
with ``datasets``. Only plain multiple-choice items (one context, several continuations) are exported.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from evals.scoring import Scorer, fixed_view
from evals.tasks import Item


def mc_predictions(lls: list[float], choice_texts: list[str]) -> tuple[int, int]:
    """(acc prediction, acc_norm prediction) as lm-eval computes them: argmax, ties to the first."""
    arr = np.array(lls)
    return int(np.argmax(arr)), int(np.argmax(arr / np.array([float(len(c)) for c in choice_texts])))


def sftflow_predictions(
    model, tokenizer, items: dict[str, list[Item]], batch_size: int = 16, **scorer_options
) -> dict[str, list]:
    """Per task, per item: (acc pred, acc_norm pred) from :class:`evals.scoring.Scorer` (``scorer_options``:
    e.g. ``row_tokens`` / ``batch_tokens`` of the packing)."""
    scorer = Scorer(tokenizer, batch_size=batch_size, **scorer_options)
    out = {}
    for task, its in items.items():
        res = scorer.loglikelihood([r for it in its for r in it.requests], {"m": fixed_view(model)})["m"]
        preds, pos = [], 0
        for it in its:
            k = len(it.requests)
            preds.append(mc_predictions([r.logprob for r in res[pos : pos + k]], it.choice_texts))
            pos += k
        out[task] = preds
    return out


def _export(task: str, items: list[Item], folder: Path) -> str:
    name = f"sftflow_ref_{task}"
    data = folder / f"{task}.jsonl"
    with open(data, "w", encoding="utf-8") as fh:
        for i, it in enumerate(items):
            contexts = {ctx for ctx, _ in it.requests}
            if len(contexts) != 1 or any(not cont.startswith(" ") for _, cont in it.requests):
                raise ValueError(
                    f"{task}: only single-context items with ' '-delimited choices can be exported"
                )
            doc = {"idx": i, "context": it.requests[0][0], "choices": it.choice_texts, "gold": int(it.gold)}
            fh.write(json.dumps(doc, ensure_ascii=False) + "\n")
    spec = {
        "task": name,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        "output_type": "multiple_choice",
        "doc_to_text": "context",
        "doc_to_choice": "choices",
        "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    (folder / f"{name}.yaml").write_text(json.dumps(spec, ensure_ascii=False))  # JSON is valid YAML
    return name


def lm_eval_predictions(
    model, tokenizer, items: dict[str, list[Item]], batch_size: int = 16
) -> dict[str, list]:
    """Per task, per item: (acc pred, acc_norm pred) from lm-eval's HFLM on the same model object."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory(prefix="sftflow_lmeval_") as tmp:
        folder = Path(tmp)
        names = {task: _export(task, its, folder) for task, its in items.items()}
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))
        result = simple_evaluate(
            model=lm,
            tasks=list(names.values()),
            task_manager=TaskManager(include_path=str(folder)),
            num_fewshot=0,
            log_samples=True,
            bootstrap_iters=0,
            verbosity="ERROR",
        )
    out = {}
    for task, name in names.items():
        samples = sorted(result["samples"][name], key=lambda s: s["doc"]["idx"])
        out[task] = [
            mc_predictions([float(r[0]) for r in s["filtered_resps"]], s["doc"]["choices"]) for s in samples
        ]
    return out
