"""Small typed verdicts for tests of the code that renders or reads them (numbers made up)."""

from __future__ import annotations

from evals.verdict import (
    PairedTest,
    RigidityResult,
    SuiteResult,
    TargetResult,
    TaskResult,
    Verdict,
)


def paired(
    delta: float,
    *,
    n: int = 200,
    base: float = 0.6,
    half: float = 0.02,
    p: float = 0.5,
    score: str = "prob",
    p_holm: float | None = None,
) -> PairedTest:
    return PairedTest(
        score=score,
        n=n,
        base=base,
        tuned=base + delta,
        delta=delta,
        ci_low=delta - half,
        ci_high=delta + half,
        interval="made up",
        test="sign_flip" if score == "prob" else "mcnemar_exact",
        p_value=p,
        p_holm=p if p_holm is None else p_holm,
        lost=n // 4,
        gained=n // 5,
    )


def task(
    name: str,
    delta: float,
    *,
    status: str = "within_margin",
    n: int = 200,
    p: float = 0.5,
    acc_delta: float | None = None,
) -> TaskResult:
    return TaskResult(
        task=name,
        output_type="multiple_choice",
        metric="acc",
        gated=True,
        status=status,
        n=n,
        accuracy=paired(delta if acc_delta is None else acc_delta, n=n, score="acc", p=p, half=0.05),
        prob=paired(delta, n=n, p=p),
        decisive="prob",
        chance=0.25,
        base_accuracy=0.6,
        base_accuracy_ci=(0.53, 0.67),
    )


def make_verdict(
    tasks: dict[str, float] | None = None, *, verdict: str | None = None, uninformative: tuple[str, ...] = ()
) -> Verdict:
    """A verdict over ``tasks`` (name -> prob delta); REGRESSED when one lost more than 0.01."""
    tasks = tasks if tasks is not None else {"arc_easy": -0.06, "piqa": 0.004}
    results = {}
    for name, d in tasks.items():
        regressed = d < -0.01
        results[name] = task(
            name, d, status="regressed" if regressed else "within_margin", p=0.001 if regressed else 0.5
        )
    for name in uninformative:
        results[name] = TaskResult(
            task=name,
            output_type="multiple_choice",
            metric="acc",
            gated=True,
            status="uninformative",
            note="base acc 0.200 [0.12, 0.31] contains chance (0.250)",
            n=40,
            chance=0.25,
            base_accuracy=0.2,
            base_accuracy_ci=(0.12, 0.31),
        )
    mean = sum(tasks.values()) / max(1, len(tasks))
    suite = SuiteResult(
        tasks=list(tasks),
        test=paired(mean, n=200 * len(tasks), half=0.008),
        n_effective=400,
        status="non_inferior" if mean - 0.008 > -0.01 else "undecided",
    )
    name = verdict or ("REGRESSED" if any(d < -0.01 for d in tasks.values()) else "PASS")
    return Verdict(
        verdict=name,
        reason=f"{name.lower()} (made up)",
        verdict_rule="the rule in words",
        margin=0.01,
        alpha=0.05,
        gate_score="prob",
        tasks=results,
        suite=suite,
        recommendation="Raise the replay ratio." if name == "REGRESSED" else None,
        target=TargetResult(n=20, base_nll=2.1, tuned_nll=1.7, gain=0.4, ci_low=0.3, ci_high=0.5),
        rigidity=RigidityResult(
            base={"distinct_1": 0.5, "distinct_2": 0.8, "same_opening_share": 0.1, "n": 12},
            tuned={"distinct_1": 0.4, "distinct_2": 0.6, "same_opening_share": 0.4, "n": 12},
            delta={"distinct_1": -0.1, "distinct_2": -0.2, "same_opening_share": 0.3},
            examples=[{"prompt": "Tell me a story", "base": "Once upon a time", "tuned": "Sure! Here"}],
        ),
        base="tiny-random-llama",
        adapter="train",
        comparison="merged_adapter",
        device="cpu",
    )
