"""Quality stage: every rule in zh and en, decisions vs scores, stats, the classifier, real mixed data."""

from __future__ import annotations

import json
from collections import Counter

import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from curation.io import read_records, write_records
from curation.quality import QualityConfig, QualityStage, run_rules
from curation.quality_model import ModelError, QualityClassifier, features, metadata_path, train_classifier
from curation.records import Record, detect_lang
from curation.runner import apply_stage, run_stage
from tests.curation.quality_junk import JUNK_KINDS, load_clean_records, make_junk, write_demo_training_set


def chat(instruction: str, response: str, rid: str = "r") -> Record:
    msgs = [{"role": "user", "content": instruction}, {"role": "assistant", "content": response}]
    return Record(id=rid, messages=msgs, lang=detect_lang(instruction + response))


def fired(rec: Record, config: QualityConfig | None = None) -> set[str]:
    cfg = config or QualityConfig()
    return {r.rule for r in run_rules(rec, cfg.rules, pii=cfg.pii) if r.fired}


EN_Q = "Explain why the sky is blue."
EN_A = (
    "The sky looks blue because air molecules scatter short blue wavelengths of sunlight much more "
    "strongly than long red ones. This is called Rayleigh scattering, and it is why sunsets look red."
)
ZH_Q = "为什么天空是蓝色的？"
ZH_A = "因为大气中的分子对波长较短的蓝光散射得更强烈，这种现象叫做瑞利散射。所以我们白天看到的天空是蓝色的，而日落时则偏红。"

# (rule, junk record that must fire it); each has an en and a zh case
JUNK_CASES = [
    ("empty", chat(EN_Q, "  ...  ")),
    ("empty", chat(ZH_Q, "。。。")),
    ("refusal", chat(EN_Q, "I'm sorry, but I can't help with that request.")),
    ("refusal", chat(ZH_Q, "抱歉，我无法回答这个问题。")),
    ("boilerplate", chat(EN_Q, "As an AI language model, I don't have opinions, but " + EN_A)),
    ("boilerplate", chat(ZH_Q, "作为一个人工智能语言模型，我没有个人观点，但是" + ZH_A)),
    # "... than long red ones. This is called Rayleigh scattering, and"
    ("truncated", chat(EN_Q, EN_A[:160])),
    ("truncated", chat(ZH_Q, ZH_A[:40] + "的")),
    ("truncated", chat(ZH_Q, "天空看起来是蓝色的，而且")),
    ("truncated", chat("Write Python that prints hi.", "Here you go:\n```python\nprint('hi')\n")),
    ("repetition", chat(EN_Q, EN_A[:60] + "the sky is blue " * 20)),
    ("repetition", chat(ZH_Q, ZH_A[:20] + "天空是蓝色的，" * 20)),
    ("repetition", chat(EN_Q, "\n".join(["Blue light scatters more."] * 6))),
    ("echo", chat(EN_Q, EN_Q)),
    ("echo", chat(ZH_Q, "问题：" + ZH_Q)),
    (
        "mojibake",
        chat(
            EN_Q, (EN_A.replace("is why", "’s why") + " “blue”").encode().decode("cp1252", errors="replace")
        ),
    ),
    ("mojibake", chat(ZH_Q, ZH_A.encode("utf-8").decode("gbk", errors="replace"))),
    ("mojibake", chat(ZH_Q, ZH_A.encode("utf-8").decode("latin-1"))),
    (
        "html_spam",
        chat(EN_Q, '<div><a href="http://x.example">Click here</a><script>alert(1)</script></div>'),
    ),
    ("html_spam", chat(ZH_Q, "加微信 abc123 免费领取资料！点击链接 http://free.example.cn 立即下载")),
    ("placeholder", chat(EN_Q, "TODO")),
    ("placeholder", chat(EN_Q, "Lorem ipsum dolor sit amet, consectetur adipiscing elit.")),
    ("placeholder", chat(ZH_Q, "待补充")),
    ("lang_mismatch", chat(EN_Q, ZH_A)),
    ("lang_mismatch", chat(ZH_Q, EN_A)),
    ("too_short", chat("Write an essay about the causes of World War I.", "War happened.")),
    ("too_short", chat("请写一篇关于春天的文章。", "春天很美。")),
]

CLEAN_CASES = [
    chat(EN_Q, EN_A),
    chat(ZH_Q, ZH_A),
    chat("Which is the largest US state?", "Alaska"),  # genuinely short answers are fine
    chat("请以一个字总结2020年", "疫"),
    chat("1+1 等于几", "2"),
    chat("Reply to this text with emojis only: I passed my exam!", "🎉👏"),
    chat("Translate to Chinese: Good morning", "早上好"),  # asked-for language switch
    chat("把这句话翻译成英文：我喜欢吃苹果", "I like eating apples."),
    chat(
        "Write a Python function that adds two numbers.",
        "Here is one:\n```python\ndef add(a, b):\n    return a + b\n```\nCall it as add(1, 2).",
    ),
    chat(
        "编写一个Python函数，将列表从大到小排序。",
        "def reverse_sort(lst):\n    return sorted(lst, reverse=True)",
    ),
    chat(
        "Write a simple HTML page with a title.",
        "<html><head><title>Hi</title></head><body><p>Hello</p></body></html>",
    ),
    chat("Repeat this three times: I like apples", "I like apples\nI like apples\nI like apples"),
    chat("List three fruits.", "- Apple\n- Banana\n- Cherry"),
    chat("3台拖拉机每天共用柴油297千克，3天要用多少？", "297\xa0×\xa03\xa0=\xa0891（千克）。"),
    chat("Name a café in Paris.", "Café de Flore is a famous café in Paris."),
    chat("你是谁？", "我是一个人工智能助手，可以回答你的问题。"),
    chat(
        "Come up with a metaphor for falling in love.",
        "I am like a moth to a flame; I can't help but be drawn to her.",
    ),
]


@pytest.mark.parametrize(("rule", "rec"), JUNK_CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(JUNK_CASES)])
def test_rule_fires_on_junk(rule: str, rec: Record) -> None:
    assert rule in fired(rec)


@pytest.mark.parametrize("rec", CLEAN_CASES, ids=range(len(CLEAN_CASES)))
def test_no_rule_fires_on_clean(rec: Record) -> None:
    assert fired(rec) == set()


def test_drop_reason_is_rule_name_and_detail_has_value_and_threshold() -> None:
    stage = QualityStage()
    kept, dropped, stats = apply_stage(
        stage, [chat(EN_Q, EN_A, "ok"), chat(EN_Q, EN_A[:60] + "blue sky " * 30, "rep")]
    )
    assert [r.id for r in kept] == ["ok"]
    (d,) = dropped
    assert d.reason == "repetition"
    assert "max_dup_ngram_fraction 70%" in d.detail or "min_tail_loop_chars" in d.detail
    assert stats.dropped_by_reason == {"repetition": 1}


def test_scores_stored_on_every_record_and_separate_from_decision() -> None:
    recs = [chat(EN_Q, EN_A, "a"), chat(ZH_Q, "抱歉，我无法回答这个问题。", "b")]
    kept, dropped, _ = apply_stage(QualityStage(QualityConfig(annotate_only=True)), recs)
    assert not dropped and len(kept) == 2
    by_id = {r.id: r.attrs for r in kept}
    assert by_id["a"]["quality"] == 1.0 and by_id["a"]["quality_flags"] == ""
    assert by_id["b"]["quality"] == 0.0 and by_id["b"]["quality_flags"] == "refusal"
    assert by_id["a"]["quality_model"] is None
    assert "refusal" in json.loads(by_id["b"]["quality_signals"])


def test_set_style_overrides_and_disabling_rules() -> None:
    short = chat("Which is the largest US state?", "Alaska")
    cfg = QualityConfig.model_validate({"rules": {"too_short": {"min_chars": 10}}})
    assert fired(short, cfg) == {"too_short"}
    refusal = chat(EN_Q, "I'm sorry, but I can't help with that.")
    cfg = QualityConfig.model_validate({"rules": {"refusal": {"enabled": False}}})
    assert "refusal" not in fired(refusal, cfg)
    unpunctuated = chat(
        EN_Q, "It is blue. Rayleigh scattering sends short blue wavelengths all over the sky all day long"
    )
    assert fired(unpunctuated) == {"truncated"}
    cfg = QualityConfig.model_validate({"rules": {"truncated": {"check_unpunctuated_end": False}}})
    assert fired(unpunctuated, cfg) == set()
    with pytest.raises(ValidationError):
        QualityConfig.model_validate({"rules": {"too_short": {"min_chars": -1}}})
    with pytest.raises(ValidationError):
        QualityConfig.model_validate({"rules": {"no_such_rule": {}}})
    with pytest.raises(ValidationError, match="need a classifier"):
        QualityConfig(threshold=0.7)


def test_plain_text_records_get_only_text_rules() -> None:
    doc = Record(id="t", text="I'm sorry, but I can't help with that. " + EN_A)
    assert fired(doc) == set()  # no refusal/echo/truncation/lang rules on corpora
    spam = Record(id="s", text="buy now " * 50)
    assert fired(spam) & {"repetition", "html_spam"}


def test_pii_flags_but_never_drops() -> None:
    rec = chat(
        "How do I reach support?", "Email help@acme-support.cn or call 138-1234-5678 or (415) 555-0134."
    )
    kept, dropped, _ = apply_stage(QualityStage(QualityConfig(pii=True)), [rec])
    assert not dropped
    assert kept[0].attrs["quality_flags"] == "pii"
    assert kept[0].attrs["quality"] == 1.0
    assert json.loads(kept[0].attrs["quality_signals"])["pii"] == "1 email, 2 phone"
    example = chat("Give an example email address.", "For example: someone@example.com")
    assert fired(example, QualityConfig(pii=True)) == set()  # documentation domains are not PII
    kept, _, _ = apply_stage(QualityStage(QualityConfig()), [rec])
    assert kept[0].attrs["quality_flags"] == ""


def test_stats_histogram_counts_and_examples() -> None:
    recs = [chat(EN_Q, EN_A, f"ok{i}") for i in range(5)] + [chat(EN_Q, "TODO", f"p{i}") for i in range(6)]
    stage = QualityStage(QualityConfig(examples_per_reason=2))
    _, dropped, stats = apply_stage(stage, recs)
    extra = stats.extra
    assert sum(extra["score_histogram"]["counts"]) == 11
    assert extra["score_histogram"]["counts"][-1] == 5 and extra["score_histogram"]["counts"][0] == 6
    assert extra["rules_fired"] == extra["dropped_by_rule"] == {"placeholder": 6}
    assert len(extra["dropped_examples"]["placeholder"]) == 2
    assert extra["dropped_examples"]["placeholder"][0]["response"] == "TODO"


def test_run_stage_writes_quality_columns(tmp_path) -> None:
    src = tmp_path / "in.parquet"
    write_records(src, [chat(EN_Q, EN_A, "a"), chat(ZH_Q, ZH_Q, "b"), Record(id="t", text=EN_A)])
    stats = run_stage(QualityStage(), src, tmp_path / "out")
    out = pq.read_table(tmp_path / "out" / "output.parquet")
    assert {"quality", "quality_flags", "quality_rules", "quality_model"} <= set(out.column_names)
    assert sorted(out.column("id").to_pylist()) == ["a", "t"]
    ledger = pq.read_table(tmp_path / "out" / "ledger.parquet").to_pylist()
    assert [(r["id"], r["reason"]) for r in ledger] == [("b", "echo")]
    assert stats.rows_in == 3 and stats.rows_out == 2


# --------------------------------------------------------------------------------------------------
# classifier


GOOD_EN = [
    "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.",
    "To boil an egg, cover it with cold water, bring it to a boil and simmer for nine minutes.",
    "Paris is the capital of France. It is known for the Eiffel Tower and the Louvre.",
    "A prime number has exactly two divisors: one and itself. Seven is prime.",
    "Exercise improves mood because it releases endorphins and lowers stress hormones.",
    "The French Revolution began in 1789 and ended the absolute monarchy in France.",
]
GOOD_ZH = [
    "光合作用利用光能把水和二氧化碳转化为糖和氧气。",
    "煮鸡蛋时，先用冷水没过鸡蛋，烧开后再小火煮九分钟。",
    "巴黎是法国的首都，以埃菲尔铁塔和卢浮宫闻名。",
    "质数只有两个因数：一和它本身。七是质数。",
    "运动能改善情绪，因为它会释放内啡肽并降低压力激素。",
    "法国大革命始于1789年，结束了法国的绝对君主制。",
]
BAD_EN = [
    "TODO",
    "N/A",
    "I'm sorry, but I can't help with that.",
    "click here click here buy now",
    "lorem ipsum dolor sit amet",
    "As an AI language model I cannot",
]
BAD_ZH = [
    "待补充",
    "暂无",
    "抱歉，我无法回答这个问题。",
    "点击链接 加微信 免费领取",
    "略",
    "作为一个人工智能语言模型，我不能",
]


def _tiny_training_set(d) -> tuple[str, str]:
    pos, neg = d / "pos.txt", d / "neg.txt"
    # different lines per repeat so the content-hash split holds some out
    neg.write_text("\n".join(f"{b} {i}" for i in range(20) for b in BAD_EN + BAD_ZH) + "\n", encoding="utf-8")
    pos.write_text(
        "\n".join(f"{g} ({i})" for i in range(20) for g in GOOD_EN + GOOD_ZH) + "\n", encoding="utf-8"
    )
    return str(pos), str(neg)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("clf")
    pos, neg = _tiny_training_set(d)
    out = d / "quality.bin"
    metrics = train_classifier([pos], [neg], str(out), config={"epoch": 25})
    assert {"precision", "recall", "auc", "n_heldout"} <= set(metrics)
    assert metrics["n_pos"] == 240 and metrics["n_neg"] == 240
    assert metrics["precision"] >= 0.9 and metrics["recall"] >= 0.9
    assert metrics["lr_used"] == 0.2  # no divergence, no retry
    meta = json.loads(metadata_path(out).read_text())
    assert meta["labels"] == {"high": "__label__hq", "low": "__label__lq"}
    assert len(meta["data_hash"]) == 64 and meta["metrics"] == metrics
    return str(out)


def test_classifier_separates_good_from_junk_in_both_languages(tiny_model: str) -> None:
    clf = QualityClassifier.load(tiny_model)
    good = clf.predict(
        [
            chat("q", "煮面条时，水开后放入面条，煮八分钟即可。"),
            chat("q", "The capital of Italy is Rome. It is known for the Colosseum."),
        ]
    )
    bad = clf.predict([chat("q", "待补充"), chat("q", "TODO")])
    assert min(good) > 0.5 > max(bad)


def test_training_is_a_function_of_data_and_settings(tiny_model: str, tmp_path) -> None:
    # fastText leaves most of its input matrix uninitialised: trained in this (busy) process, each
    # call started from different memory and gave a different model, now and then a NaN-diverged one
    pos, neg = _tiny_training_set(tmp_path)
    fingerprints = set()
    for i in range(3):
        _ = [bytearray(30 << 20) for _ in range(2)]  # big buffers freed in between, as a test session does
        train_classifier([pos], [neg], str(tmp_path / f"m{i}.bin"), config={"epoch": 25})
        fingerprints.add(QualityClassifier.load(tmp_path / f"m{i}.bin").fingerprint)
    assert fingerprints == {QualityClassifier.load(tiny_model).fingerprint}


def test_stage_with_classifier_threshold_and_top_percent(tiny_model: str) -> None:
    recs = [chat("q", g, f"g{i}") for i, g in enumerate(GOOD_EN + GOOD_ZH)]
    recs += [chat("q", "click here buy now http://x.example", "spam")]
    kept, dropped, stats = apply_stage(QualityStage(QualityConfig(model=tiny_model, threshold=0.5)), recs)
    assert all(r.attrs["quality_model"] is not None for r in kept)
    assert {d.record.id for d in dropped} == {"spam"}
    top = QualityStage(QualityConfig(model=tiny_model, top_percent=50))
    assert top.needs_fit
    kept, dropped, _ = apply_stage(top, recs)
    assert len(kept) == 7 and all(d.reason in ("low_quality", "html_spam") for d in dropped)
    assert stats.extra["classifier"]["cutoff"] == 0.5


def test_model_without_metadata_is_refused(tmp_path, tiny_model: str) -> None:
    bare = tmp_path / "bare.bin"
    bare.write_bytes(open(tiny_model, "rb").read())
    with pytest.raises(ModelError, match="metadata"):
        QualityClassifier.load(bare)
    with pytest.raises(ModelError, match="no such file"):
        QualityStage(QualityConfig(model=str(tmp_path / "missing.bin")))


# --------------------------------------------------------------------------------------------------
# real data: clean rows of the shared instruction sets + junk of every kind made from them


def test_default_config_on_realistic_mixed_data(shared_data) -> None:
    clean = load_clean_records(shared_data)
    assert len(clean) > 2000 and {r.lang for r in clean} >= {"en", "zh"}
    junk = make_junk(clean, per_kind=40, seed=3)
    assert Counter(r.meta["junk_kind"] for r in junk) == dict.fromkeys(JUNK_KINDS, 80)
    kept, dropped, _ = apply_stage(QualityStage(), clean + junk)
    dropped_ids = {d.record.id for d in dropped}
    clean_drop = sum(r.id in dropped_ids for r in clean) / len(clean)
    junk_drop = sum(r.id in dropped_ids for r in junk) / len(junk)
    per_kind = {
        k: sum(r.id in dropped_ids for r in junk if r.meta["junk_kind"] == k) / 80 for k in JUNK_KINDS
    }
    assert junk_drop >= 0.9, per_kind
    assert clean_drop <= 0.05
    assert min(per_kind.values()) >= 0.6, per_kind  # truncation is the hardest kind


def test_junk_generator_is_deterministic_and_demo_set_balanced(shared_data, tmp_path) -> None:
    clean = load_clean_records(shared_data)[:400]
    a = make_junk(clean, per_kind=5, seed=11)
    b = make_junk(clean, per_kind=5, seed=11)
    assert [r.messages for r in a] == [r.messages for r in b]
    assert [r.messages for r in a] != [r.messages for r in make_junk(clean, per_kind=5, seed=12)]
    pos, neg = write_demo_training_set(shared_data, tmp_path)
    n_pos, n_neg = len(read_records(pos)), len(read_records(neg))
    assert 0.8 < n_neg / n_pos < 1.2


# --------------------------------------------------------------------------------------------------
# details


def test_features_are_cjk_aware() -> None:
    line = features(chat("q", "天空是蓝色的。The Sky is BLUE!"))
    toks = line.split()
    assert "\n" not in line
    assert toks[:3] == ["__len_30__", "__end_stop__", "__lang_zh__"]
    assert toks[3] == "__asked_other_got_zh__"
    assert ["天", "空", "是", "蓝", "色", "的", "。"] == toks[4:11]  # one token per Chinese character
    assert ["the", "sky", "is", "blue", "!"] == toks[11:]
    jie = features(chat("q", "我喜欢自然语言处理"), zh_tokenizer="jieba").split()
    assert any(len(t) >= 2 and not t.startswith("__") for t in jie)  # jieba words, not characters
    assert features(chat("q", "It stops at the"), 3000).split()[1] == "__end_word__"


def test_training_errors_are_clear(tmp_path) -> None:
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    good = tmp_path / "good.txt"
    good.write_text("\n".join(GOOD_EN) + "\n")
    with pytest.raises(ValueError, match="only 0 neg rows"):
        train_classifier([str(good)], [str(empty)], str(tmp_path / "m.bin"))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        train_classifier([str(good)], [str(tmp_path / "nope.jsonl")], str(tmp_path / "m.bin"))
    assert not (tmp_path / "m.bin").exists()


def test_classifier_scores_plain_text_records(tiny_model: str) -> None:
    clf = QualityClassifier.load(tiny_model)
    good, bad = clf.predict([Record(id="a", text=GOOD_ZH[0] + GOOD_EN[0]), Record(id="b", text="待补充")])
    assert good > bad


def test_multi_turn_answers_are_judged_per_turn() -> None:
    msgs = [
        {"role": "user", "content": "Summarise photosynthesis."},
        {"role": "assistant", "content": GOOD_EN[0]},
        {"role": "user", "content": "Say it again but add that it happens in chloroplasts."},
        {"role": "assistant", "content": GOOD_EN[0][:-1] + ", in the chloroplasts."},
    ]
    # the revision repeats the first answer: fine, each answer alone is not repetitive
    assert fired(Record(id="m", messages=msgs, lang="en")) == set()
    msgs[3] = {"role": "assistant", "content": "I'm sorry, but I can't help with that."}
    assert fired(Record(id="m", messages=msgs, lang="en")) == {"refusal"}


def test_too_long_and_text_length_limits() -> None:
    long_answer = chat(EN_Q, (EN_A + " ") * 200)
    cfg = QualityConfig.model_validate({"rules": {"too_long": {"max_chars": 10_000}}})
    assert "too_long" in fired(long_answer, cfg)
    doc = Record(id="d", text=(EN_A + " ") * 200)
    assert "too_long" not in fired(doc, cfg)  # corpora documents have their own limit (max_text_chars)


def test_quality_score_falls_as_a_rule_nears_its_threshold() -> None:
    units = EN_A.split()
    half_repeated = chat(EN_Q, " ".join(units + units[:14]) + ".")  # repeated span below the threshold
    stage = QualityStage()
    kept, _, _ = apply_stage(stage, [chat(EN_Q, EN_A, "clean"), half_repeated])
    scores = [r.attrs["quality"] for r in kept]
    assert scores[0] == 1.0 and 0.5 <= scores[1] < 1.0


def test_train_from_instruction_jsonl(tmp_path) -> None:
    pos, neg = tmp_path / "pos.jsonl", tmp_path / "neg.jsonl"
    with pos.open("w") as fh:
        for i in range(30):
            for g in GOOD_EN + GOOD_ZH:
                fh.write(
                    json.dumps({"instruction": f"q{i}", "output": f"{g} ({i})"}, ensure_ascii=False) + "\n"
                )
    with neg.open("w") as fh:
        fh.write("not json\n")  # unreadable rows are skipped, as ingest would ledger them
        for i in range(30):
            for b in BAD_EN + BAD_ZH:
                fh.write(
                    json.dumps({"instruction": f"q{i}", "output": f"{b} {i}"}, ensure_ascii=False) + "\n"
                )
    metrics = train_classifier([str(pos)], [str(neg)], str(tmp_path / "m.bin"))
    assert metrics["n_pos"] == metrics["n_neg"] == 360
    assert metrics["auc"] > 0.9


# --------------------------------------------------------------------------------------------------
# the rule registry


def test_a_new_rule_is_one_registration_and_gets_its_config_section() -> None:
    from pydantic import Field

    from curation.quality import RULES, rule
    from curation.quality.base import RuleConfig, RuleResult
    from curation.quality.rules import build_rules_config, run_rules

    class ShoutingRule(RuleConfig):
        max_upper_fraction: float = Field(0.8, ge=0, le=1)

    # between too_long (30) and placeholder (40): it names the drop before placeholder does
    @rule("shouting", config=ShoutingRule, priority=35, for_text=True)
    def check_shouting(v, c: ShoutingRule) -> RuleResult:
        letters = [ch for ch in v.response if ch.isalpha()]
        frac = sum(ch.isupper() for ch in letters) / max(1, len(letters))
        return RuleResult("shouting", frac > c.max_upper_fraction, f"{frac:.0%} upper case", float(frac > 0.8))

    try:
        rules_cls = build_rules_config()
        assert "shouting" in rules_cls.model_fields
        rules = rules_cls.model_validate({"shouting": {"max_upper_fraction": 0.5}})
        loud = chat(EN_Q, "TODO: THE SKY IS BLUE BECAUSE OF RAYLEIGH SCATTERING.")
        results = run_rules(loud, rules)
        assert [r.rule for r in results if r.fired] == ["shouting", "placeholder"]
        quiet = rules_cls.model_validate({"shouting": {"enabled": False}})
        assert [r.rule for r in run_rules(loud, quiet) if r.fired] == ["placeholder"]
        # configs built before the rule existed simply do not run it
        assert "shouting" not in {r.rule for r in run_rules(loud, QualityConfig().rules)}
        with pytest.raises(ValueError, match="priority 35 is taken"):
            rule("whispering", config=ShoutingRule, priority=35, for_text=True)(check_shouting)
    finally:
        RULES.pop("shouting", None)
    assert "shouting" not in build_rules_config().model_fields


def test_rules_config_is_built_from_the_registry_in_priority_order() -> None:
    from curation.quality import RULES, RulesConfig

    with_settings = [s.name for s in sorted(RULES.values(), key=lambda s: s.priority) if s.config is not None]
    assert list(RulesConfig.model_fields) == with_settings
    assert with_settings[:4] == ["empty", "too_short", "too_long", "placeholder"]
    assert RULES["pii"].flag_only and RULES["pii"].config is None


def test_figures_of_shards_merge_to_the_serial_figures(tmp_path) -> None:
    from curation.quality import QualityFigures
    from curation.runner import ShardedExecutor

    recs = [chat(EN_Q, EN_A, f"ok{i}") for i in range(5)] + [chat(EN_Q, "TODO", f"p{i}") for i in range(4)]
    recs += [chat(ZH_Q, "抱歉，我无法回答这个问题。", f"r{i}") for i in range(3)]
    src = tmp_path / "in.parquet"
    write_records(src, recs)
    cfg = QualityConfig(examples_per_reason=2)
    serial = run_stage(QualityStage(cfg), src, tmp_path / "serial")
    sharded = run_stage(QualityStage(cfg), src, tmp_path / "sharded", executor=ShardedExecutor(3))
    assert sharded.shards == 3
    a, b = serial.figures(QualityFigures), sharded.figures(QualityFigures)
    assert a.rules_fired == b.rules_fired == {"placeholder": 4, "refusal": 3}
    assert a.score_histogram == b.score_histogram
    assert {k: len(v) for k, v in b.dropped_examples.items()} == {"placeholder": 2, "refusal": 2}


# --------------------------------------------------------------------------------------------------
# fast paths give what the regexes give


def _random_texts(n: int, seed: int = 5) -> list[str]:
    import random

    rng = random.Random(seed)
    alphabet = ["a", "B", "z", "0", "7", "_", " ", "\n", "\t", "'", "-", "é", "ß", "İ", "ı", "ſ", "K", "中", "文",
                "あ", "한", "Ж", "٣", "\u3000", "\xa0", "!", "。", "😀", "|", "=", "·", "’", "“", "—", "❶", "☀",
                "\ud800", "Ā", "ǿ", "ɏ"]
    out = []
    for _ in range(n):
        k = rng.randint(0, 80)
        text = "".join(rng.choice(alphabet) for _ in range(k))
        if rng.random() < 0.3:  # long runs of one character, of every length around the threshold
            text += rng.choice(alphabet) * rng.randint(25, 40)
        if rng.random() < 0.3:
            text = text.encode("ascii", "ignore").decode()
        elif rng.random() < 0.3:  # mostly English with a few curly quotes
            text = text.encode("ascii", "ignore").decode() + rng.choice(["’", "“", "—"]) + "ok"
        out.append(text)
    return out


def test_unit_and_meaningful_fast_paths_match_the_regexes() -> None:
    from curation.quality.base import LETTER_RE, MEANINGFUL_RE, UNIT_RE, meaningful_chars, units
    from curation.quality.rules.lang_mismatch import _letters

    for text in _random_texts(3000):
        got = [u.decode() if isinstance(u, bytes) else u for u in units(text)]
        assert got == UNIT_RE.findall(text), text
        assert meaningful_chars(text) == len(MEANINGFUL_RE.findall(text)), text
        assert _letters(text) == len(LETTER_RE.findall(text)), text


def test_char_run_precheck_never_misses_a_run() -> None:
    from curation.quality.rules.repetition import _char_run, _char_run_re

    for n in (2, 5, 8, 10, 30, 33):
        for text in _random_texts(1500, seed=n):
            want = _char_run_re(n).search(text)
            got = _char_run(text, n)
            assert (got and got.span()) == (want and want.span()), (n, text)
