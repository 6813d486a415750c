"""The before/after regression eval: "did it get dumber?".

``evaluate(config, base, adapter, out_dir)`` scores the base model and the tuned model on the same items
of every task of a suite, compares them item by item (see :mod:`evals.stats` for the tests and the
verdict rule), measures the gain on held-out target data and the rigidity of open-ended answers, and
writes ``verdict.json`` plus ``items.parquet`` (one row per task item, both models' predictions and
scores) to ``out_dir``.

Base and tuned run in one process: a PEFT model is scored twice with its adapter toggled; a fully
fine-tuned model is loaded beside the base. ``adapter=None`` compares the base with itself (each item is
scored once and reused), which is how the gate is calibrated.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.io import atomic_path, write_json
from evals import rigidity as rig
from evals.scoring import Scorer, View, adapter_disabled_view, fixed_view
from evals.stats import INCONCLUSIVE, PASS, REGRESSED, compare_task, decide, paired_bootstrap_ci
from evals.tasks import (
    DataUnavailableError,
    Item,
    TaskSpec,
    default_data_dir,
    load_items,
    load_task_spec,
    resolve_suite,
)

#: progress(stage, done, total): stage is a task name, "target", "rigidity" or "load"
Progress = Callable[[str, int, int], None]

ITEM_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("item", pa.string()),
        ("metric", pa.string()),
        ("gold", pa.string()),
        ("base_pred", pa.string()),
        ("tuned_pred", pa.string()),
        ("base_score", pa.float64()),
        ("tuned_score", pa.float64()),
        # summed log-prob of the gold continuation (MC, LAMBADA) or of the text (perplexity)
        ("base_logprob", pa.float64()),
        ("tuned_logprob", pa.float64()),
        ("kl_to_base", pa.float64()),
    ]
)


class EvalConfig(BaseModel):
    """Settings of one regression eval (recipe key ``eval``)."""

    model_config = ConfigDict(extra="forbid")

    #: ``quick``, ``full`` or comma-separated task names (see ``evals/tasks/``)
    suite: str = "quick"
    #: folder of local benchmark copies (one folder per dataset); default ``$SFTFLOW_DATA_DIR``, else the
    #: hub through ``datasets`` (fails offline with a clear message; the project probe always works)
    data_dir: str | None = Field(default_factory=default_data_dir)
    #: cap on items per task (a seeded sample); None = the suite's own budget
    limit: int | None = Field(default=None, ge=1)
    #: non-inferiority margin, absolute accuracy (0.01 = one point)
    margin: float = Field(default=0.01, gt=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    bootstrap: int = Field(default=2000, ge=100)
    seed: int = 0
    batch_size: int = Field(default=16, ge=1)
    #: ``auto`` = cuda when available, else cpu
    device: str = "auto"
    #: held-out curated records (parquet) for the target-task eval: log-prob of the assistant turns
    target_data: str | None = None
    target_limit: int = Field(default=64, ge=1)
    rigidity: bool = True
    rigidity_prompts: int = Field(default=12, ge=2)
    #: answer length of the rigidity probe (generative tasks use their spec's ``max_new_tokens``)
    max_new_tokens: int = Field(default=48, ge=1)
    #: longest input in tokens (contexts are cut from the left, as lm-eval does)
    max_length: int = Field(default=2048, ge=16)
    #: skip suite tasks whose data is missing (listed in the verdict) instead of failing
    skip_missing: bool = False

    @field_validator("suite")
    @classmethod
    def _known_suite(cls, v: str) -> str:
        resolve_suite(v)  # raises TaskSpecError naming the unknown task
        return v


# ------------------------------------------------------------------------------------------------
# models


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _default_load_trained() -> Callable | None:
    try:
        from training.artifacts import load_trained  # training owns how its output is read
    except ImportError:
        return None
    return load_trained


def _adapter_folder(path: Path) -> Path | None:
    if (path / "adapter_config.json").exists():
        return path
    found = sorted(path.glob("*/adapter_config.json"))
    return found[0].parent if found else None


def _load_tuned(base: str, adapter: str, dtype: torch.dtype, device: str):
    """(model, tokenizer) from a PEFT adapter folder (or a training output holding one) or a full model folder."""
    from training.models import load_model

    path = Path(adapter)
    if not path.exists():
        raise FileNotFoundError(f"adapter {adapter}: no such folder")
    peft_dir = _adapter_folder(path)
    if peft_dir is not None:
        from peft import PeftModel

        model, tok = load_model(base, dtype=dtype, device=device)
        return PeftModel.from_pretrained(model, str(peft_dir)), tok
    if (path / "config.json").exists():
        return load_model(str(path), dtype=dtype, device=device)
    raise FileNotFoundError(
        f"adapter {adapter}: holds neither adapter_config.json (PEFT) nor config.json (model)"
    )


def load_views(
    base: str,
    adapter: str | None,
    *,
    device: str,
    dtype: torch.dtype = torch.float32,
    load_trained: Callable | None = None,
) -> tuple[dict[str, View], Any, str]:
    """Views ``{"base", "tuned"}`` (only ``base`` when adapter is None), the tokenizer, and how they were built."""
    from training.models import load_model

    if adapter is None:
        model, tok = load_model(base, dtype=dtype, device=device)
        model.eval()
        return {"base": fixed_view(model)}, tok, "identical"
    loader = load_trained
    if loader is None and (Path(adapter) / "train_config.json").exists():
        loader = _default_load_trained()  # a training output: the training stage knows how to rebuild it
    if loader is not None:
        tuned, tok = loader(adapter, base=base, dtype=dtype, device=device)
    else:
        tuned, tok = _load_tuned(base, adapter, dtype, device)
    tuned.eval()
    if hasattr(tuned, "disable_adapter") and hasattr(tuned, "peft_config"):
        return {"base": adapter_disabled_view(tuned), "tuned": fixed_view(tuned)}, tok, "adapter_toggle"
    base_model, _ = load_model(base, dtype=dtype, device=device)
    base_model.eval()
    return {"base": fixed_view(base_model), "tuned": fixed_view(tuned)}, tok, "two_models"


# ------------------------------------------------------------------------------------------------
# per-task scoring: per-item rows with base/tuned predictions and scores


def _task_rows(
    spec: TaskSpec,
    items: list[Item],
    scorer: Scorer,
    views: dict[str, View],
    progress: Callable[[int, int], None],
) -> list[dict[str, Any]]:
    names = list(views)
    tuned_name = names[-1]  # "tuned", or "base" again when comparing a model with itself
    if spec.output_type in ("multiple_choice", "loglikelihood"):
        requests = [r for it in items for r in it.requests]
        res = scorer.loglikelihood(requests, views, progress)
        rows, pos = [], 0
        for it in items:
            k = len(it.requests)
            row = {
                "task": spec.task,
                "item": it.id,
                "metric": spec.metric,
                "gold": str(it.gold),
                "kl_to_base": None,
            }
            for who, name in (("base", names[0]), ("tuned", tuned_name)):
                out = res[name][pos : pos + k]
                lls = np.array([o.logprob for o in out])
                if spec.output_type == "loglikelihood":
                    pred, score = str(out[0].is_greedy), float(out[0].is_greedy)
                    gold_lp = lls[0]
                elif spec.metric == "mc2":
                    labels = np.array(it.labels, dtype=bool)
                    p = np.exp(lls - lls.max())
                    score = float(p[labels].sum() / p.sum())
                    pred, gold_lp = str(int(np.argmax(lls))), float(np.log(score))
                else:
                    pred_acc = int(np.argmax(lls))
                    pred_norm = int(np.argmax(lls / np.array([float(len(c)) for c in it.choice_texts])))
                    # both lm-eval metrics are reported; the spec's metric is the one that is tested
                    row[f"{who}_acc"], row[f"{who}_acc_norm"] = (
                        float(pred_acc == it.gold),
                        float(pred_norm == it.gold),
                    )
                    pred_i = pred_norm if spec.metric == "acc_norm" else pred_acc
                    pred, score, gold_lp = str(pred_i), float(pred_i == it.gold), float(lls[int(it.gold)])
                row[f"{who}_pred"], row[f"{who}_score"], row[f"{who}_logprob"] = pred, score, float(gold_lp)
            rows.append(row)
            pos += k
        return rows
    if spec.output_type == "generate_until":
        gens = scorer.generate(
            [it.prompt for it in items],
            views,
            until=spec.until,
            max_new_tokens=spec.max_new_tokens,
            progress=progress,
        )
        rows = []
        for i, it in enumerate(items):
            row = {"task": spec.task, "item": it.id, "metric": spec.metric, "gold": str(it.gold)}
            for who, name in (("base", names[0]), ("tuned", tuned_name)):
                answer = extract_answer(gens[name][i], spec.answer_regex)
                row[f"{who}_pred"], row[f"{who}_score"] = answer, float(_same_answer(answer, str(it.gold)))
                row[f"{who}_logprob"] = None
            row["kl_to_base"] = None
            rows.append(row)
        return rows
    # perplexity: score = -bits per byte (higher is better, like accuracy)
    res = scorer.perplexity([it.requests[0][1] for it in items], views, progress)
    rows = []
    for i, it in enumerate(items):
        row = {"task": spec.task, "item": it.id, "metric": spec.metric, "gold": ""}
        for who, name in (("base", names[0]), ("tuned", tuned_name)):
            r = res[name][i]
            row[f"{who}_pred"] = f"{r.n_tokens} tokens"
            row[f"{who}_score"] = r.logprob / (r.n_bytes * math.log(2))
            row[f"{who}_logprob"] = r.logprob
        row["kl_to_base"] = res[tuned_name][i].kl_to_base
        row["n_tokens"], row["n_bytes"] = res[names[0]][i].n_tokens, res[names[0]][i].n_bytes
        row["n_words"] = len(it.requests[0][1].split())
        row["tuned_n_tokens"] = res[tuned_name][i].n_tokens
        rows.append(row)
    return rows


def extract_answer(generation: str, answer_regex: str | None) -> str:
    """The answer of a generation: the regex's first group when it matches, else the last number."""
    import re

    if answer_regex:
        m = re.search(answer_regex, generation)
        if m:
            return _clean_number(m.group(1))
    numbers = re.findall(r"-?\d[\d,]*(?:\.\d+)?", generation)
    return _clean_number(numbers[-1]) if numbers else generation.strip()


def _clean_number(s: str) -> str:
    return s.replace(",", "").replace("$", "").strip().rstrip(".")


def _same_answer(pred: str, gold: str) -> bool:
    if pred == gold:
        return True
    try:
        return math.isclose(float(pred), float(gold), rel_tol=0, abs_tol=1e-9)
    except ValueError:
        return False


def _task_summary(spec: TaskSpec, rows: list[dict[str, Any]], config: EvalConfig) -> dict[str, Any]:
    base = np.array([r["base_score"] for r in rows], dtype=np.float64)
    tuned = np.array([r["tuned_score"] for r in rows], dtype=np.float64)
    seed = config.seed + sum(map(ord, spec.task))  # independent resamples per task, reproducible
    summary = compare_task(base, tuned, n_boot=config.bootstrap, alpha=config.alpha, seed=seed)
    # perplexity tasks compare -bits per byte per item, so that a positive delta means "better" everywhere
    summary["metric"] = "neg_bits_per_byte" if spec.output_type == "perplexity" else spec.metric
    summary["gated"] = spec.gated
    lps = [(r["base_logprob"], r["tuned_logprob"]) for r in rows if r.get("base_logprob") is not None]
    if lps:
        b, t = np.array(lps).T
        low, high = paired_bootstrap_ci(b, t, n_boot=config.bootstrap, alpha=config.alpha, seed=seed)
        summary["logprob_delta"] = {"mean": float((t - b).mean()), "ci_low": low, "ci_high": high}
    if "base_acc" in rows[0]:
        summary["acc"] = {w: float(np.mean([r[f"{w}_acc"] for r in rows])) for w in ("base", "tuned")}
        summary["acc_norm"] = {
            w: float(np.mean([r[f"{w}_acc_norm"] for r in rows])) for w in ("base", "tuned")
        }
    if spec.output_type == "loglikelihood":  # LAMBADA's perplexity: exp of the mean target NLL
        summary["base_perplexity"] = math.exp(-float(np.mean([r["base_logprob"] for r in rows])))
        summary["tuned_perplexity"] = math.exp(-float(np.mean([r["tuned_logprob"] for r in rows])))
    if spec.output_type == "perplexity":
        tokens = sum(r["n_tokens"] for r in rows)
        tuned_tokens = sum(r["tuned_n_tokens"] for r in rows)
        n_bytes = sum(r["n_bytes"] for r in rows)
        b_lp = sum(r["base_logprob"] for r in rows)
        t_lp = sum(r["tuned_logprob"] for r in rows)
        words = sum(r["n_words"] for r in rows)
        summary.update(
            base_word_perplexity=math.exp(-b_lp / words),
            tuned_word_perplexity=math.exp(-t_lp / words),
            base_token_perplexity=math.exp(-b_lp / tokens),
            tuned_token_perplexity=math.exp(-t_lp / tuned_tokens),
            base_bits_per_byte=-b_lp / (n_bytes * math.log(2)),
            tuned_bits_per_byte=-t_lp / (n_bytes * math.log(2)),
            kl_to_base=float(np.mean([r["kl_to_base"] for r in rows])),
        )
    return summary


# ------------------------------------------------------------------------------------------------
# target task: held-out curated records


def target_eval(
    path: str,
    scorer: Scorer,
    views: dict[str, View],
    config: EvalConfig,
    progress: Callable[[int, int], None],
) -> dict[str, Any]:
    """Mean negative log-likelihood per assistant token on held-out records, base vs tuned.

    Each assistant turn is a continuation of the conversation before it, rendered with the chat template;
    ``gain`` = base NLL - tuned NLL (positive: the tuned model fits the target data better).
    """
    from curation.io import iter_record_batches

    records = []
    for batch in iter_record_batches(path, batch_size=256):
        records.extend(r for r in batch if r.messages and any(m["role"] == "assistant" for m in r.messages))
        if len(records) >= config.target_limit:
            break
    records = records[: config.target_limit]
    if not records:
        return {"n": 0, "note": f"{path} has no conversation records with an assistant turn"}
    tok = scorer.tokenizer
    requests, owner = [], []
    for k, rec in enumerate(records):
        for i, m in enumerate(rec.messages):
            if m["role"] == "assistant" and m["content"]:
                ctx = tok.apply_chat_template(rec.messages[:i], add_generation_prompt=True, tokenize=False)
                requests.append((ctx, m["content"]))
                owner.append(k)
    res = scorer.loglikelihood(requests, views, progress)
    names = list(views)
    per_record = {}
    for who, name in (("base", names[0]), ("tuned", names[-1])):
        lp = np.zeros(len(records))
        ntok = np.zeros(len(records))
        for j, r in enumerate(res[name]):
            lp[owner[j]] += r.logprob
            ntok[owner[j]] += r.n_tokens
        per_record[who] = -lp / np.maximum(ntok, 1)
    b, t = per_record["base"], per_record["tuned"]
    # gain per record = base NLL - tuned NLL: bootstrap the pairs with the roles swapped so gain > 0 is better
    low, high = paired_bootstrap_ci(t, b, n_boot=config.bootstrap, alpha=config.alpha, seed=config.seed)
    return {
        "data": str(path),
        "n": len(records),
        "metric": "nll_per_assistant_token",
        "base_nll": float(b.mean()),
        "tuned_nll": float(t.mean()),
        "gain": float((b - t).mean()),
        "delta": float((b - t).mean()),  # same as gain: positive = better, like every task's delta
        "ci_low": low,
        "ci_high": high,
        "base_perplexity": float(math.exp(b.mean())),
        "tuned_perplexity": float(math.exp(t.mean())),
    }


# ------------------------------------------------------------------------------------------------
# rigidity


def rigidity_eval(scorer: Scorer, views: dict[str, View], config: EvalConfig, progress) -> dict[str, Any]:
    prompts = rig.open_prompts(config.data_dir, config.rigidity_prompts, config.seed)
    chat = [rig.chat_prompt(scorer.tokenizer, p) for p in prompts]
    gens = scorer.generate(chat, views, until=[], max_new_tokens=config.max_new_tokens, progress=progress)
    names = list(views)
    base_m = rig.rigidity_metrics(gens[names[0]])
    tuned_m = rig.rigidity_metrics(gens[names[-1]])
    delta = {k: tuned_m[k] - base_m[k] for k in base_m if k != "n"}
    return {
        "base": base_m,
        "tuned": tuned_m,
        "delta": delta,
        "examples": [
            {"prompt": p, "base": gb, "tuned": gt}
            for p, gb, gt in list(zip(prompts, gens[names[0]], gens[names[-1]], strict=True))[:4]
        ],
    }


# ------------------------------------------------------------------------------------------------
# the whole eval


def _recommendation(
    verdict: str, tasks: dict[str, dict], rigidity: dict | None, target: dict | None
) -> str | None:
    if verdict == PASS:
        if target and target.get("n") and target["gain"] <= 0:
            return "No regression, but no gain on the held-out target data either: check the data or train longer."
        return None
    if verdict == INCONCLUSIVE:
        return "Re-run with more items (suite=full or a larger limit) before trusting this model."
    lost = [t for t, s in tasks.items() if s.get("status") == "regressed"]
    advice = [
        f"General ability dropped on {', '.join(lost)}.",
        "Raise the replay ratio (mix more general data back into training),",
        "lower the learning rate or the number of epochs, or use a smaller LoRA rank / fewer trained modules.",
    ]
    if rigidity and (rigidity["delta"]["distinct_2"] < -0.1 or rigidity["delta"]["same_opening_share"] > 0.2):
        advice.append("Answers also became more templated: diversify the instruction data (dedup, task mix).")
    return " ".join(advice)


def evaluate(
    config: EvalConfig,
    base: str,
    adapter: str | None,
    out_dir: str | os.PathLike,
    *,
    progress: Progress | None = None,
    load_trained: Callable | None = None,
) -> dict[str, Any]:
    """Run the regression eval; write ``out_dir/verdict.json`` and ``out_dir/items.parquet``; return the verdict.

    ``adapter`` is the training stage's output folder (a PEFT adapter or a full model), or None to compare
    the base with itself. ``progress(stage, done, total)`` is called as work completes.
    """
    started = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(config.device)
    report = progress or (lambda stage, done, total: None)
    plan = resolve_suite(config.suite, config.limit)

    # load every task's items before the models, so a missing dataset fails fast
    task_items: dict[str, list[Item]] = {}
    skipped: dict[str, str] = {}
    for name, n in plan.items():
        try:
            items = load_items(name, config.data_dir, n)
        except DataUnavailableError as e:
            if not config.skip_missing:
                raise
            skipped[name] = str(e)
            continue
        if items:
            task_items[name] = items
        else:
            skipped[name] = "no items left after the spec's filter"

    report("load", 0, 1)
    views, tok, mode = load_views(base, adapter, device=device, load_trained=load_trained)
    report("load", 1, 1)
    with views["base"]() as model:
        positions = getattr(model.config, "max_position_embeddings", None) or config.max_length
    scorer = Scorer(
        tok, batch_size=config.batch_size, device=device, max_length=min(config.max_length, positions)
    )

    all_rows: list[dict[str, Any]] = []
    tasks: dict[str, dict[str, Any]] = {}
    diffs: dict[str, np.ndarray] = {}
    timings: dict[str, float] = {}
    for name, items in task_items.items():
        spec = load_task_spec(name)
        t0 = time.time()
        rows = _task_rows(spec, items, scorer, views, lambda d, t, name=name: report(name, d, t))
        timings[name] = round(time.time() - t0, 2)
        all_rows.extend(rows)
        tasks[name] = _task_summary(spec, rows, config)
        if spec.gated:
            diffs[name] = np.array([r["tuned_score"] - r["base_score"] for r in rows])

    decision = decide(tasks, diffs, margin=config.margin, alpha=config.alpha)

    target = None
    if config.target_data:
        target = target_eval(config.target_data, scorer, views, config, lambda d, t: report("target", d, t))
    rigidity = None
    if config.rigidity:
        t0 = time.time()
        rigidity = rigidity_eval(scorer, views, config, lambda d, t: report("rigidity", d, t))
        timings["rigidity"] = round(time.time() - t0, 2)

    verdict = {
        "verdict": decision["verdict"],
        "reason": decision["reason"] + (f"; skipped (data missing): {', '.join(skipped)}" if skipped else ""),
        "items_needed": decision["items_needed"],
        "recommendation": _recommendation(decision["verdict"], tasks, rigidity, target),
        "tasks": tasks,
        "target": target,
        "target_task": target,  # alias read by the CLI summary
        "rigidity": rigidity,
        "skipped": skipped,
        "base": base,
        "adapter": adapter,
        "comparison": mode,
        "config": config.model_dump(),
        "device": device,
        "seconds": round(time.time() - started, 2),
        "task_seconds": timings,
        "verdict_rule": (
            f"REGRESSED: a gated task with delta < 0, Holm-adjusted McNemar/sign-flip p < {config.alpha} and "
            f"CI lower bound < -{config.margin}. PASS: every gated task's {100 * (1 - config.alpha):g}% paired "
            f"bootstrap CI lower bound > -{config.margin}. Otherwise INCONCLUSIVE."
        ),
    }
    _write_items(out / "items.parquet", all_rows)
    write_json(out / "verdict.json", verdict)
    return verdict


def _write_items(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = {f.name: [r.get(f.name) for r in rows] for f in ITEM_SCHEMA}
    table = pa.Table.from_pydict(cols, schema=ITEM_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


__all__ = ["EvalConfig", "evaluate", "load_views", "target_eval", "PASS", "REGRESSED", "INCONCLUSIVE"]
