"""The before/after regression eval: "did it get dumber?".

``evaluate(config, base, adapter, out_dir)`` scores the base model and the tuned model on the same items
of every task of a suite, compares them item by item (see :mod:`evals.stats` for the tests and the
verdict rule), measures the gain on held-out target data and the rigidity of open-ended answers, and
writes ``verdict.json`` (a :class:`evals.verdict.Verdict`) plus ``items.parquet`` (one row per task item:
both models' predictions, 0/1 scores and gold-answer probabilities) to ``out_dir``.

Order of work:

1. Screening (suites with ``screen``): the base model answers the first items of each gated task; a task
   whose base accuracy interval contains chance is *uninformative* (it cannot show forgetting) and, by
   default, is left out of the gate.
2. The suite's item ``budget`` is shared equally by the informative gated tasks (up to each task's cap).
3. The base model is scored (results come from and go to the content-addressed cache in
   ``$SFTFLOW_CACHE/eval``, :mod:`evals.cache`), then the tuned model, on the same items.

Base and tuned are two plain models in one process: a LoRA/IA3 adapter is merged into its own copy of the
weights (no adapter overhead per layer), any other training output is loaded beside the base.
``adapter=None`` compares the base with itself (each item is scored once and reused), which is how the
gate is calibrated.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from curation.errors import SftflowError
from curation.io import atomic_path
from evals import rigidity as rig
from evals.cache import ResultCache, model_fingerprint, request_key
from evals.scoring import (
    SCORER_VERSION,
    LoglikelihoodResult,
    Scorer,
    View,
    adapter_disabled_view,
    fixed_view,
)
from evals.stats import (
    choice_probs,
    decide,
    paired_bootstrap_ci,
    paired_test,
    pooled_test,
    rule_text,
    wilson_interval,
)
from evals.tasks import (
    DataUnavailableError,
    Item,
    TaskData,
    TaskSpec,
    default_data_dir,
    resolve_suite,
    suite_plan,
)
from evals.verdict import (
    INCONCLUSIVE,
    PASS,
    REGRESSED,
    CacheStats,
    Interval,
    PerplexityStats,
    RigidityResult,
    SuiteResult,
    TargetResult,
    TaskResult,
    Verdict,
)

#: progress(stage, done, total): stage is a task name, "screen <task>", "target", "rigidity" or "load"
#: screening stops after this many chunks of ``screen`` items (the task is then uninformative)
SCREEN_CHUNKS = 4
Progress = Callable[[str, int, int], None]

ITEM_SCHEMA = pa.schema(
    [
        ("task", pa.string()),
        ("item", pa.string()),
        ("metric", pa.string()),
        ("gold", pa.string()),
        ("base_pred", pa.string()),
        ("tuned_pred", pa.string()),
        # the task's metric per item (0/1, or mc2 / -bits per byte)
        ("base_score", pa.float64()),
        ("tuned_score", pa.float64()),
        # probability on the gold answer, normalised over the choices like the metric
        ("base_prob", pa.float64()),
        ("tuned_prob", pa.float64()),
        # summed log-prob of the gold continuation (MC, LAMBADA) or of the text (perplexity)
        ("base_logprob", pa.float64()),
        ("tuned_logprob", pa.float64()),
        ("kl_to_base", pa.float64()),
        # counted in the gate (gated and informative)
        ("in_gate", pa.bool_()),
    ]
)


class EvalError(SftflowError, ValueError):
    """Nothing to evaluate, or the tuned model does not fit the base (one line, exit 2)."""


class EvalConfig(BaseModel):
    """Settings of one regression eval (recipe key ``eval``)."""

    model_config = ConfigDict(extra="forbid")

    #: ``quick``, ``full`` or comma-separated task names (see ``evals/tasks/``)
    suite: str = "quick"
    #: folder of local benchmark copies (one folder per dataset); default ``$SFTFLOW_DATA_DIR``, else the
    #: hub through ``datasets`` (fails offline with a clear message; the project probe always works)
    data_dir: str | None = Field(default_factory=default_data_dir)
    #: cap on items per task (a seeded sample); None = the suite's own caps
    limit: int | None = Field(default=None, ge=1)
    #: items per model shared by the informative gated tasks; None = the suite's budget (if any)
    budget: int | None = Field(default=None, ge=1)
    #: base-only screening items per gated task (informativeness check); None = the suite's; 0 = off
    screen: int | None = Field(default=None, ge=0)
    #: non-inferiority margin on the gate's score (0.01 = one point)
    margin: float = Field(default=0.01, gt=0, lt=1)
    alpha: float = Field(default=0.05, gt=0, lt=0.5)
    #: what the gate tests per item: ``prob`` (probability on the gold answer; tasks without choices use
    #: their 0/1 metric) or ``accuracy`` (every task's 0/1 metric)
    gate_score: Literal["prob", "accuracy"] = "prob"
    #: tasks whose base accuracy is at chance: ``skip`` = report, leave out of the gate; ``gate`` = count
    uninformative: Literal["skip", "gate"] = "skip"
    bootstrap: int = Field(default=2000, ge=100)
    seed: int = 0
    #: prompts per batch for generation and perplexity (log-likelihoods are packed by tokens)
    batch_size: int = Field(default=16, ge=1)
    #: ``auto`` = cuda when available, else cpu
    device: str = "auto"
    #: reuse base-model results from ``$SFTFLOW_CACHE/eval`` (content-addressed) and add new ones
    cache: bool = True
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
        raise EvalError(f"adapter {adapter}: no such folder")
    peft_dir = _adapter_folder(path)
    if peft_dir is not None:
        from peft import PeftModel

        model, tok = load_model(base, dtype=dtype, device=device)
        return PeftModel.from_pretrained(model, str(peft_dir)), tok
    if (path / "config.json").exists():
        return load_model(str(path), dtype=dtype, device=device)
    raise EvalError(f"adapter {adapter}: holds neither adapter_config.json (PEFT) nor config.json (model)")


def _first_line(e: BaseException) -> str:
    """The telling line of an exception (torch's state-dict errors put the size mismatch on line 2)."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    telling = [ln for ln in lines if ln.startswith(("size mismatch", "Missing key", "Unexpected key"))]
    line = (telling or lines or [""])[0]
    return f"{type(e).__name__}: {line[:300]}"


def load_views(
    base: str,
    adapter: str | None,
    *,
    device: str,
    dtype: torch.dtype = torch.float32,
    load_trained: Callable | None = None,
    merge: bool = True,
) -> tuple[dict[str, View], Any, str]:
    """Views ``{"base", "tuned"}`` (only ``base`` when adapter is None), the tokenizer, and how they were built.

    A PEFT adapter is merged into its own copy of the weights (``merged_adapter``) unless ``merge`` is off
    (``adapter_toggle``: one model, adapter switched off for the base view); other outputs load beside the
    base (``two_models``). An output that does not fit the base is a one-line :class:`EvalError`.
    """
    from training.models import load_model

    if adapter is None:
        model, tok = load_model(base, dtype=dtype, device=device)
        model.eval()
        return {"base": fixed_view(model)}, tok, "identical"
    loader = load_trained
    if loader is None and (Path(adapter) / "train_config.json").exists():
        loader = _default_load_trained()  # a training output: the training stage knows how to rebuild it
    try:
        if loader is not None:
            tuned, tok = loader(adapter, base=base, dtype=dtype, device=device)
        else:
            tuned, tok = _load_tuned(base, adapter, dtype, device)
    except SftflowError:
        raise
    except FileNotFoundError as e:
        raise EvalError(f"adapter {adapter}: {e}") from None
    except (RuntimeError, ValueError, KeyError, OSError) as e:  # shape / key mismatches from PEFT and torch
        raise EvalError(f"adapter {adapter} does not fit base model {base} ({_first_line(e)})") from None
    tuned.eval()
    is_peft = hasattr(tuned, "disable_adapter") and hasattr(tuned, "peft_config")
    if is_peft and not merge:
        return {"base": adapter_disabled_view(tuned), "tuned": fixed_view(tuned)}, tok, "adapter_toggle"
    base_model, base_tok = load_model(base, dtype=dtype, device=device)
    base_model.eval()
    if base_tok.get_vocab() != tok.get_vocab():
        raise EvalError(
            f"adapter {adapter}: its tokenizer differs from base model {base}'s, so the two cannot be "
            "compared on the same token sequences"
        )
    mode = "two_models"
    if is_peft:
        try:
            tuned = tuned.merge_and_unload()
            mode = "merged_adapter"
        except (AttributeError, NotImplementedError, ValueError, RuntimeError):
            return {"base": fixed_view(base_model), "tuned": adapter_disabled_view(tuned)}, tok, "two_models"
        tuned.eval()
    return {"base": fixed_view(base_model), "tuned": fixed_view(tuned)}, tok, mode


def _model_folder(base: str) -> Path | None:
    """The local folder of a model name (alias, folder, or a hub id already in the HF cache)."""
    from training.models import resolve_model

    src = resolve_model(base)
    if isinstance(src, Path):
        return src
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(str(src), local_files_only=True))
    except Exception:  # not cached locally: no fingerprint, no cache
        return None


def _base_cache(config: EvalConfig, base: str, device: str, max_length: int) -> ResultCache | None:
    if not config.cache:
        return None
    folder = _model_folder(base)
    if folder is None:
        return None
    try:
        fp = model_fingerprint(folder)
    except OSError:
        return None
    namespace = f"{fp}:scorer{SCORER_VERSION}:float32:{torch.device(device).type}:len{max_length}"
    return ResultCache(namespace)


# ------------------------------------------------------------------------------------------------
# running one view (cached for the base model)


def _loglikelihoods(
    requests: list[tuple[str, str]],
    scorer: Scorer,
    view: View,
    cache: ResultCache | None,
    task: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[LoglikelihoodResult]:
    keys = [request_key("ll", ctx, cont) for ctx, cont in requests]
    known = cache.get_many(keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    out: list[LoglikelihoodResult | None] = [
        LoglikelihoodResult(*known[k]) if k in known else None for k in keys
    ]
    if todo:
        done0 = len(requests) - len(todo)

        def prog(done: int, total: int) -> None:
            if progress is not None:
                progress(done0 + done, len(requests))

        res = scorer.loglikelihood([requests[i] for i in todo], {"m": view}, prog)["m"]
        for i, r in zip(todo, res, strict=True):
            out[i] = r
        if cache is not None:
            cache.put_many(
                ((keys[i], [r.logprob, r.is_greedy, r.n_tokens]) for i, r in zip(todo, res, strict=True)),
                task,
            )
    elif progress is not None:
        progress(len(requests), len(requests))
    return out  # type: ignore[return-value]


def _generations(
    prompts: list[str],
    until: list[str],
    max_new_tokens: int,
    scorer: Scorer,
    view: View,
    cache: ResultCache | None,
    task: str,
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    keys = [request_key("gen", p, until, max_new_tokens) for p in prompts]
    known = cache.get_many(keys) if cache is not None else {}
    todo = [i for i, k in enumerate(keys) if k not in known]
    out = [known.get(k) for k in keys]
    if todo:
        gens = scorer.generate(
            [prompts[i] for i in todo],
            {"m": view},
            until=until,
            max_new_tokens=max_new_tokens,
            progress=progress,
        )["m"]
        for i, g in zip(todo, gens, strict=True):
            out[i] = g
        if cache is not None:
            cache.put_many(((keys[i], g) for i, g in zip(todo, gens, strict=True)), task)
    return out  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------------
# per-item scores of one model


@dataclass(slots=True)
class ItemScore:
    """One model on one item."""

    pred: str
    #: the task's metric (0/1; mc2 mass; -bits per byte)
    score: float
    #: probability on the gold answer normalised over the choices like the metric (None: no choices)
    prob: float | None = None
    logprob: float | None = None
    acc: float | None = None
    acc_norm: float | None = None
    extra: dict[str, float] = field(default_factory=dict)


def _mc_item_score(spec: TaskSpec, it: Item, res: list[LoglikelihoodResult]) -> ItemScore:
    lls = np.array([r.logprob for r in res], dtype=np.float64)
    if spec.output_type == "loglikelihood":
        r = res[0]
        return ItemScore(str(r.is_greedy), float(r.is_greedy), float(math.exp(r.logprob)), float(r.logprob))
    if spec.metric == "mc2":
        labels = np.array(it.labels, dtype=bool)
        p = np.exp(lls - lls.max())
        score = float(p[labels].sum() / p.sum())
        return ItemScore(str(int(np.argmax(lls))), score, score, float(np.log(max(score, 1e-300))))
    lengths = [float(len(c)) for c in it.choice_texts]
    pred_acc = int(np.argmax(lls))
    pred_norm = int(np.argmax(lls / np.array(lengths)))
    norm = spec.metric == "acc_norm"
    pred = pred_norm if norm else pred_acc
    gold = int(it.gold)
    probs = choice_probs(lls, lengths if norm else None)
    return ItemScore(
        str(pred),
        float(pred == gold),
        float(probs[gold]),
        float(lls[gold]),
        acc=float(pred_acc == gold),
        acc_norm=float(pred_norm == gold),
        extra={"pred_acc": pred_acc, "pred_acc_norm": pred_norm},
    )


def score_items(
    spec: TaskSpec,
    items: list[Item],
    scorer: Scorer,
    view: View,
    cache: ResultCache | None,
    progress: Callable[[int, int], None] | None = None,
) -> list[ItemScore]:
    """Per-item scores of one model (``view``) on a multiple-choice, log-likelihood or generation task."""
    if spec.output_type in ("multiple_choice", "loglikelihood"):
        requests = [r for it in items for r in it.requests]
        res = _loglikelihoods(requests, scorer, view, cache, spec.task, progress)
        out, pos = [], 0
        for it in items:
            k = len(it.requests)
            out.append(_mc_item_score(spec, it, res[pos : pos + k]))
            pos += k
        return out
    if spec.output_type == "generate_until":
        gens = _generations(
            [it.prompt for it in items],
            spec.until,
            spec.max_new_tokens,
            scorer,
            view,
            cache,
            spec.task,
            progress,
        )
        out = []
        for it, g in zip(items, gens, strict=True):
            answer = extract_answer(g, spec.answer_regex)
            out.append(ItemScore(answer, float(_same_answer(answer, str(it.gold)))))
        return out
    raise ValueError(f"task {spec.task}: {spec.output_type} items are scored with both models at once")


def _perplexity_scores(
    items: list[Item], scorer: Scorer, views: dict[str, View], progress
) -> tuple[list[ItemScore], list[ItemScore]]:
    """Perplexity items need both models at once (KL to the base per token): (base, tuned) scores."""
    res = scorer.perplexity([it.requests[0][1] for it in items], views, progress)
    names = list(views)
    out: list[list[ItemScore]] = []
    for name in (names[0], names[-1]):
        scores = []
        for it, r in zip(items, res[name], strict=True):
            scores.append(
                ItemScore(
                    f"{r.n_tokens} tokens",
                    r.logprob / (r.n_bytes * math.log(2)),  # -bits per byte: higher is better, like accuracy
                    None,
                    r.logprob,
                    extra={
                        "n_tokens": r.n_tokens,
                        "n_bytes": r.n_bytes,
                        "n_words": len(it.requests[0][1].split()),
                        "kl_to_base": r.kl_to_base,
                    },
                )
            )
        out.append(scores)
    return out[0], out[1]


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


# ------------------------------------------------------------------------------------------------
# informativeness and the item budget


def chance_level(spec: TaskSpec, items: list[Item]) -> float | None:
    """Expected metric of a model that guesses: mean 1/#choices (mc2: mean share of true answers)."""
    if spec.output_type == "multiple_choice":
        if spec.metric == "mc2":
            return float(np.mean([np.mean(it.labels) for it in items]))
        return float(np.mean([1.0 / len(it.requests) for it in items]))
    if spec.output_type in ("loglikelihood", "generate_until"):
        return 0.0
    return None


def base_accuracy_interval(spec: TaskSpec, scores: list[ItemScore], alpha: float) -> tuple[float, float]:
    """Interval of the base model's metric: Wilson for 0/1 metrics, normal for mc2."""
    x = np.array([s.score for s in scores], dtype=np.float64)
    if spec.metric == "mc2":
        half = float(np.std(x, ddof=1) / math.sqrt(x.size)) * 1.96 if x.size > 1 else 1.0
        return (max(0.0, float(x.mean()) - half), min(1.0, float(x.mean()) + half))
    return wilson_interval(int(x.sum()), x.size, alpha)


def is_informative(chance: float | None, ci: tuple[float, float] | None) -> bool:
    """A task can show forgetting only when the base model is above chance (its interval's lower bound is).

    At chance (the interval contains it) there is no ability to lose; below chance (a systematic bias, e.g.
    a small model preferring the wrong kind of answer) neither.
    """
    if chance is None or ci is None:
        return True
    return ci[0] > chance


def allocate(caps: dict[str, int], budget: int) -> dict[str, int]:
    """Share ``budget`` items equally among tasks, none above its cap; leftovers go to the others."""
    alloc = dict.fromkeys(caps, 0)
    remaining = budget
    open_ = sorted(caps, key=lambda t: (caps[t], t))
    while open_ and remaining > 0:
        share = remaining // len(open_)
        if caps[open_[0]] <= share:  # the smallest cannot use its share: give it all, share the rest
            t = open_.pop(0)
            alloc[t] = caps[t]
            remaining -= caps[t]
            continue
        extra = remaining - share * len(open_)
        for i, t in enumerate(sorted(open_)):
            alloc[t] = share + (1 if i < extra else 0)
        break
    return alloc


# ------------------------------------------------------------------------------------------------
# per-task results


def _rows(
    spec: TaskSpec, items: list[Item], base: list[ItemScore], tuned: list[ItemScore] | None, in_gate: bool
) -> list[dict[str, Any]]:
    rows = []
    for i, it in enumerate(items):
        b = base[i]
        t = tuned[i] if tuned is not None else None
        rows.append(
            {
                "task": spec.task,
                "item": it.id,
                "metric": spec.metric,
                "gold": str(it.gold),
                "base_pred": b.pred,
                "tuned_pred": t.pred if t else None,
                "base_score": b.score,
                "tuned_score": t.score if t else None,
                "base_prob": b.prob,
                "tuned_prob": t.prob if t else None,
                "base_logprob": b.logprob,
                "tuned_logprob": t.logprob if t else None,
                "kl_to_base": t.extra.get("kl_to_base") if t else None,
                "in_gate": in_gate,
            }
        )
    return rows


def _task_result(
    spec: TaskSpec,
    items: list[Item],
    base: list[ItemScore],
    tuned: list[ItemScore],
    config: EvalConfig,
    informative: bool,
    chance: float | None,
    base_ci: tuple[float, float] | None,
    seconds: float,
) -> tuple[TaskResult, np.ndarray | None]:
    """The task's tests and figures, and its per-item decisive differences when it counts for the gate."""
    seed = config.seed + sum(map(ord, spec.task))  # independent resamples per task, reproducible
    kw = {"alpha": config.alpha, "n_boot": config.bootstrap, "seed": seed}
    perplexity = spec.output_type == "perplexity"
    b_score = np.array([s.score for s in base])
    t_score = np.array([s.score for s in tuned])
    accuracy = paired_test(
        b_score,
        t_score,
        score="neg_bits_per_byte" if perplexity else spec.metric,
        bounded=not perplexity,
        **kw,
    )
    prob = None
    if all(s.prob is not None for s in base + tuned) and not perplexity:
        prob = paired_test(
            np.array([s.prob for s in base]), np.array([s.prob for s in tuned]), score="prob", **kw
        )
    decisive = "prob" if config.gate_score == "prob" and prob is not None else "accuracy"
    counted = spec.gated and (informative or config.uninformative == "gate")
    status = "undecided" if counted else ("not_gated" if not spec.gated else "uninformative")
    note = (
        ""
        if counted
        else ("reported only" if not spec.gated else "base model at chance: cannot show forgetting")
    )
    if counted and not informative:
        note = "base model at chance (counted: eval.uninformative = gate)"
    result = TaskResult(
        task=spec.task,
        output_type=spec.output_type,
        metric="neg_bits_per_byte" if perplexity else spec.metric,
        gated=spec.gated,
        status=status,
        note=note,
        n=len(items),
        accuracy=accuracy,
        prob=prob,
        decisive=decisive,
        chance=chance,
        base_accuracy=accuracy.base,
        base_accuracy_ci=base_ci,
        seconds=round(seconds, 2),
    )
    if base and base[0].acc is not None:
        result.both_metrics = {
            m: {
                "base": float(np.mean([getattr(s, m) for s in base])),
                "tuned": float(np.mean([getattr(s, m) for s in tuned])),
            }
            for m in ("acc", "acc_norm")
        }
    lps = [(b.logprob, t.logprob) for b, t in zip(base, tuned, strict=True) if b.logprob is not None]
    if lps and not perplexity:
        bl, tl = np.array(lps).T
        low, high = paired_bootstrap_ci(bl, tl, n_boot=config.bootstrap, alpha=config.alpha, seed=seed)
        result.logprob_delta = Interval(mean=float((tl - bl).mean()), ci_low=low, ci_high=high)
    if spec.output_type == "loglikelihood":  # LAMBADA's perplexity: exp of the mean target NLL
        result.perplexity = PerplexityStats(
            base_perplexity=math.exp(-float(np.mean([s.logprob for s in base]))),
            tuned_perplexity=math.exp(-float(np.mean([s.logprob for s in tuned]))),
        )
    if perplexity:
        tokens = sum(s.extra["n_tokens"] for s in base)
        tuned_tokens = sum(s.extra["n_tokens"] for s in tuned)
        n_bytes = sum(s.extra["n_bytes"] for s in base)
        words = sum(s.extra["n_words"] for s in base)
        b_lp, t_lp = sum(s.logprob for s in base), sum(s.logprob for s in tuned)  # type: ignore[misc]
        result.perplexity = PerplexityStats(
            base_word_perplexity=math.exp(-b_lp / words),
            tuned_word_perplexity=math.exp(-t_lp / words),
            base_token_perplexity=math.exp(-b_lp / tokens),
            tuned_token_perplexity=math.exp(-t_lp / tuned_tokens),
            base_bits_per_byte=-b_lp / (n_bytes * math.log(2)),
            tuned_bits_per_byte=-t_lp / (n_bytes * math.log(2)),
            kl_to_base=float(np.mean([s.extra["kl_to_base"] for s in tuned])),
        )
    if not counted:
        return result, None
    if decisive == "prob":
        d = np.array([t.prob - b.prob for b, t in zip(base, tuned, strict=True)])  # type: ignore[operator]
    else:
        d = t_score - b_score
    return result, d


def _uninformative_result(
    spec: TaskSpec, items: list[Item], base: list[ItemScore], chance: float | None, ci, seconds: float
) -> TaskResult:
    mean = float(np.mean([s.score for s in base]))
    return TaskResult(
        task=spec.task,
        output_type=spec.output_type,
        metric=spec.metric,
        gated=spec.gated,
        status="uninformative",
        note=(
            f"base {spec.metric} {mean:.3f} [{ci[0]:.3f}, {ci[1]:.3f}] on {len(items)} screening items "
            f"is not above chance ({chance:.3f}): cannot show forgetting; left out of the gate"
        ),
        n=len(items),
        chance=chance,
        base_accuracy=mean,
        base_accuracy_ci=ci,
        seconds=round(seconds, 2),
    )


# ------------------------------------------------------------------------------------------------
# target task: held-out curated records


def target_eval(
    path: str,
    scorer: Scorer,
    views: dict[str, View],
    config: EvalConfig,
    progress: Callable[[int, int], None],
    cache: ResultCache | None = None,
) -> TargetResult:
    """Mean negative log-likelihood per assistant token on held-out records, base vs tuned.

    Each assistant turn is a continuation of the conversation before it, rendered with the chat template;
    ``gain`` = base NLL - tuned NLL (positive: the tuned model fits the target data better).
    """
    from curation.io import iter_record_batches

    records = []
    try:
        for batch in iter_record_batches(path, batch_size=256):
            records.extend(
                r for r in batch if r.messages and any(m["role"] == "assistant" for m in r.messages)
            )
            if len(records) >= config.target_limit:
                break
    except FileNotFoundError:
        return TargetResult(data=str(path), n=0, note=f"{path}: no such file; target eval skipped")
    records = records[: config.target_limit]
    if not records:
        return TargetResult(
            data=str(path), n=0, note=f"{path} has no conversation records with an assistant turn; skipped"
        )
    tok = scorer.tokenizer
    requests, owner = [], []
    for k, rec in enumerate(records):
        for i, m in enumerate(rec.messages):
            if m["role"] == "assistant" and m["content"]:
                ctx = tok.apply_chat_template(rec.messages[:i], add_generation_prompt=True, tokenize=False)
                requests.append((ctx, m["content"]))
                owner.append(k)
    names = list(views)
    per_record = {}
    results = {}
    for who, name in (("base", names[0]), ("tuned", names[-1])):
        if name in results:
            res = results[name]
        else:
            res = results[name] = _loglikelihoods(
                requests, scorer, views[name], cache if name == "base" else None, "target", progress
            )
        lp = np.zeros(len(records))
        ntok = np.zeros(len(records))
        for j, r in enumerate(res):
            lp[owner[j]] += r.logprob
            ntok[owner[j]] += r.n_tokens
        per_record[who] = -lp / np.maximum(ntok, 1)
    b, t = per_record["base"], per_record["tuned"]
    # gain per record = base NLL - tuned NLL: bootstrap the pairs with the roles swapped so gain > 0 is better
    low, high = paired_bootstrap_ci(t, b, n_boot=config.bootstrap, alpha=config.alpha, seed=config.seed)
    return TargetResult(
        data=str(path),
        n=len(records),
        base_nll=float(b.mean()),
        tuned_nll=float(t.mean()),
        gain=float((b - t).mean()),
        ci_low=low,
        ci_high=high,
        base_perplexity=float(math.exp(b.mean())),
        tuned_perplexity=float(math.exp(t.mean())),
        ids=[r.id for r in records],
        base_nll_rows=[float(x) for x in b],
        tuned_nll_rows=[float(x) for x in t],
    )


# ------------------------------------------------------------------------------------------------
# rigidity


def rigidity_eval(
    scorer: Scorer, views: dict[str, View], config: EvalConfig, progress, cache: ResultCache | None = None
) -> RigidityResult:
    prompts = rig.open_prompts(config.data_dir, config.rigidity_prompts, config.seed)
    chat = [rig.chat_prompt(scorer.tokenizer, p) for p in prompts]
    names = list(views)
    gens = {}
    for name in dict.fromkeys((names[0], names[-1])):
        gens[name] = _generations(
            chat,
            [],
            config.max_new_tokens,
            scorer,
            views[name],
            cache if name == "base" else None,
            "rigidity",
            progress,
        )
    base_m = rig.rigidity_metrics(gens[names[0]])
    tuned_m = rig.rigidity_metrics(gens[names[-1]])
    delta = {k: tuned_m[k] - base_m[k] for k in base_m if k != "n"}
    return RigidityResult(
        base=base_m,
        tuned=tuned_m,
        delta=delta,
        examples=[
            {"prompt": p, "base": gb, "tuned": gt}
            for p, gb, gt in list(zip(prompts, gens[names[0]], gens[names[-1]], strict=True))[:4]
        ],
    )


# ------------------------------------------------------------------------------------------------
# the whole eval


def _recommendation(
    verdict: str,
    tasks: dict[str, TaskResult],
    suite: SuiteResult | None,
    rigidity: RigidityResult | None,
    target: TargetResult | None,
    items_needed: dict[str, int | None],
) -> str | None:
    if verdict == PASS:
        if target and target.n and target.gain is not None and target.gain <= 0:
            return "No regression, but no gain on the held-out target data either: check the data or train longer."
        return None
    if verdict == INCONCLUSIVE:
        if not any(t.counted for t in tasks.values()):
            return (
                "The base model is at chance on every gated task, so none can show forgetting: evaluate with "
                "tasks the base model can do (e.g. --set eval.suite=arc_easy,piqa,hellaswag,general_probe)."
            )
        per_task = items_needed.get("suite")
        more = f" (about {per_task} items per task: --set eval.budget=...)" if per_task else ""
        return f"Re-run with more items{more} or suite=full before trusting this model."
    lost = [t for t, s in tasks.items() if s.status == "regressed"]
    if suite is not None and suite.status == "regressed":
        lost.append("the suite mean")
    advice = [
        f"General ability dropped on {', '.join(lost)}.",
        "Raise the replay ratio (mix more general data back into training),",
        "lower the learning rate or the number of epochs, or use a smaller LoRA rank / fewer trained modules.",
    ]
    if rigidity and (
        rigidity.delta.get("distinct_2", 0) < -0.1 or rigidity.delta.get("same_opening_share", 0) > 0.2
    ):
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
) -> Verdict:
    """Run the regression eval; write ``out_dir/verdict.json`` and ``out_dir/items.parquet``; return the verdict.

    ``adapter`` is the training stage's output folder (a PEFT adapter or a full model), or None to compare
    the base with itself. ``progress(stage, done, total)`` is called as work completes.
    """
    started = time.time()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = _resolve_device(config.device)
    report = progress or (lambda stage, done, total: None)
    plan = suite_plan(config.suite, config.limit)
    budget = config.budget if config.budget is not None else plan.budget
    screen = config.screen if config.screen is not None else plan.screen

    # read every task's data before the models, so a missing dataset fails fast
    data: dict[str, TaskData] = {}
    caps: dict[str, int] = {}
    skipped: dict[str, str] = {}
    for ref, cap in plan.tasks.items():
        try:
            td = TaskData(ref, config.data_dir)
        except DataUnavailableError as e:
            if not config.skip_missing:
                raise
            skipped[ref] = str(e)
            continue
        name = td.spec.task
        if name in data:
            raise EvalError(f"eval suite {config.suite!r}: two entries are task {name!r}")
        if td.size == 0:
            skipped[name] = "no items (empty data file, or none left after the spec's filter)"
            continue
        data[name] = td
        caps[name] = td.size if cap is None else min(cap, td.size)
    if not data:
        raise EvalError(
            f"eval suite {config.suite!r}: nothing to evaluate ("
            + "; ".join(f"{k}: {v}" for k, v in skipped.items())
            + ")"
        )

    report("load", 0, 1)
    views, tok, mode = load_views(base, adapter, device=device, load_trained=load_trained)
    report("load", 1, 1)
    with views["base"]() as model:
        positions = getattr(model.config, "max_position_embeddings", None) or config.max_length
    max_length = min(config.max_length, positions)
    scorer = Scorer(tok, batch_size=config.batch_size, device=device, max_length=max_length)
    cache = _base_cache(config, base, device, max_length)
    base_view = views["base"]
    tuned_view = views.get("tuned")

    specs = {name: td.spec for name, td in data.items()}
    scoreable = {"multiple_choice", "loglikelihood", "generate_until"}
    gated = [n for n in data if specs[n].gated and specs[n].output_type in scoreable]
    timings: dict[str, float] = {}
    skip_chance = config.uninformative == "skip"

    # 1. screening: is the base model above chance on each gated task? Chunks of `screen` items until its
    #    interval is above chance (a task like PIQA at 0.6 vs 0.5 needs ~100 items to show it), or its
    #    estimate is at or below chance after two chunks, or four chunks are spent
    screened: dict[str, tuple[list[Item], list[ItemScore], float | None, tuple[float, float], float]] = {}
    if screen and skip_chance and budget is not None:
        for name in gated:
            t0 = time.time()
            prog = lambda d, t, name=name: report(f"screen {name}", d, t)  # noqa: E731
            n = 0
            while True:
                n = min(n + screen, caps[name])
                items = data[name].items(n)
                scores = score_items(specs[name], items, scorer, base_view, cache, prog)
                chance = chance_level(specs[name], items)
                ci = base_accuracy_interval(specs[name], scores, config.alpha)
                mean = float(np.mean([sc.score for sc in scores]))
                # one chunk at or below chance can be bad luck (PIQA at 0.6 has a 40-item stretch at 0.45);
                # two are not
                if (
                    is_informative(chance, ci)
                    or (mean <= (chance or 0.0) and n >= 2 * screen)
                    or n >= min(caps[name], SCREEN_CHUNKS * screen)
                ):
                    break
            screened[name] = (items, scores, chance, ci, time.time() - t0)
    informative = {n: is_informative(sc[2], sc[3]) for n, sc in screened.items()}

    # 2. items per task: the budget is shared by the informative gated tasks
    counts = dict(caps)
    if budget is not None:
        counts.update(allocate({n: caps[n] for n in gated if informative.get(n, True)}, budget))

    # 3. the base model on every task (an uninformative one is left there), then the tuned model
    all_rows: list[dict[str, Any]] = []
    tasks: dict[str, TaskResult] = {}
    diffs: dict[str, np.ndarray] = {}
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, td in data.items():
        spec = specs[name]
        if name in screened and not informative[name]:
            items, scores, chance, ci, secs = screened[name]
            tasks[name] = _uninformative_result(spec, items, scores, chance, ci, secs)
            timings[name] = round(secs, 2)
            all_rows.extend(_rows(spec, items, scores, None, False))
            continue
        t0 = time.time() - (screened[name][4] if name in screened else 0.0)
        items = td.items(counts[name])
        prog = lambda d, t, name=name: report(name, d, t)  # noqa: E731
        if spec.output_type == "perplexity":
            ppl_views = (
                {"base": base_view, "tuned": tuned_view} if tuned_view is not None else {"base": base_view}
            )
            b_scores, t_scores = _perplexity_scores(items, scorer, ppl_views, prog)
            chance = ci = None
        else:
            b_scores = score_items(spec, items, scorer, base_view, cache, prog)
            chance = chance_level(spec, items) if spec.gated else None
            ci = base_accuracy_interval(spec, b_scores, config.alpha) if chance is not None else None
            # not screened, or screened on fewer items: the base results on all of them decide
            if spec.gated and skip_chance and not is_informative(chance, ci):
                tasks[name] = _uninformative_result(spec, items, b_scores, chance, ci, time.time() - t0)
                timings[name] = tasks[name].seconds or 0.0
                all_rows.extend(_rows(spec, items, b_scores, None, False))
                continue
            t_scores = (
                score_items(spec, items, scorer, tuned_view, None, prog)
                if tuned_view is not None
                else b_scores
            )
        info = is_informative(chance, ci)
        result, d = _task_result(spec, items, b_scores, t_scores, config, info, chance, ci, time.time() - t0)
        tasks[name] = result
        timings[name] = result.seconds or 0.0
        if d is not None:
            diffs[name] = d
            key = "prob" if result.decisive == "prob" else "score"
            pairs[name] = (
                np.array([getattr(s, key) for s in b_scores], dtype=np.float64),
                np.array([getattr(s, key) for s in t_scores], dtype=np.float64),
            )
        all_rows.extend(_rows(spec, items, b_scores, t_scores, d is not None))

    suite = None
    if pairs:
        test, n_eff = pooled_test(
            pairs, score=config.gate_score, alpha=config.alpha, n_boot=config.bootstrap, seed=config.seed
        )
        suite = SuiteResult(tasks=list(pairs), test=test, n_effective=n_eff, status="undecided")
    decision = decide(tasks, suite, diffs, margin=config.margin, alpha=config.alpha)

    target = None
    if config.target_data:
        t0 = time.time()
        target = target_eval(
            config.target_data, scorer, views, config, lambda d, t: report("target", d, t), cache
        )
        timings["target"] = round(time.time() - t0, 2)
    rigidity = None
    if config.rigidity:
        t0 = time.time()
        rigidity = rigidity_eval(scorer, views, config, lambda d, t: report("rigidity", d, t), cache)
        timings["rigidity"] = round(time.time() - t0, 2)

    reason = decision.reason
    if skipped:
        reason += "; skipped: " + ", ".join(skipped)
    verdict = Verdict(
        verdict=decision.verdict,  # type: ignore[arg-type]
        reason=reason,
        verdict_rule=rule_text(config.margin, config.alpha, config.gate_score),
        recommendation=_recommendation(
            decision.verdict, tasks, suite, rigidity, target, decision.items_needed
        ),
        margin=config.margin,
        alpha=config.alpha,
        gate_score=config.gate_score,
        tasks=tasks,
        suite=suite,
        items_needed=decision.items_needed,
        target=target,
        rigidity=rigidity,
        skipped=skipped,
        base=base,
        adapter=adapter,
        comparison=mode,
        device=device,
        config=config.model_dump(mode="json"),
        seconds=round(time.time() - started, 2),
        task_seconds=timings,
        base_cache=CacheStats(hits=cache.hits, misses=cache.misses, folder=str(cache.path.parent))
        if cache is not None
        else None,
    )
    if cache is not None:
        cache.close()
    _write_items(out / "items.parquet", all_rows)
    verdict.write(out / "verdict.json")
    return verdict


def _write_items(path: Path, rows: list[dict[str, Any]]) -> None:
    cols = {f.name: [r.get(f.name) for r in rows] for f in ITEM_SCHEMA}
    table = pa.Table.from_pydict(cols, schema=ITEM_SCHEMA)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


__all__ = [
    "EvalConfig",
    "EvalError",
    "ItemScore",
    "allocate",
    "chance_level",
    "evaluate",
    "is_informative",
    "load_views",
    "score_items",
    "target_eval",
    "PASS",
    "REGRESSED",
    "INCONCLUSIVE",
]
