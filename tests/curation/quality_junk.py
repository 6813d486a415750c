"""Realistic clean + junk instruction data for the quality stage (tests, bench, demo classifier).

Clean rows are the instruction sets in the shared data folder, read the way ingest reads them
(rows ingest would drop, e.g. BELLE's empty reference answers, are skipped: they never reach the
quality stage). Junk is made *from* those clean rows, one kind per failure seen in real SFT dumps:
the instruction stays real, the answer is broken the way scrapes and model generations break.

Every junk record carries ``meta["junk_kind"]`` so figures can be reported per kind.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Iterator
from pathlib import Path

from curation.ingest import IngestConfig, RowError, row_to_record
from curation.records import Record, content_id, detect_lang

#: the clean instruction sets, relative to the shared data folder (oasst1 keeps its multi-turn history)
CLEAN_SOURCES = (
    "dolly_hhrlhf_sample/dolly_hhrlhf_train_small.jsonl",
    "self_instruct_seed/seed_tasks.jsonl",
    "self_instruct_seed/user_oriented_instructions.jsonl",
    "oasst1_zh_sft/oaast_sft_zh.json",
    "belle_zh/eval_set.json",
    "belle_zh/zh_seed_tasks.json",
)

JUNK_KINDS = (
    "empty",
    "refusal",
    "boilerplate",
    "truncated",
    "repetition",
    "echo",
    "mojibake",
    "html_spam",
    "placeholder",
    "lang_mismatch",
)


def _raw_rows(path: Path) -> Iterator[dict]:
    if path.name == "oaast_sft_zh.json":
        for row in json.loads(path.read_text(encoding="utf-8")):
            msgs = []
            for q, a in row.get("history") or []:
                msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
            user = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
            msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": row["output"]}]
            yield {"messages": msgs}
        return
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            row = json.loads(line)
            if "instances" in row:  # self-instruct seed format: one row per instance
                for inst in row["instances"]:
                    yield {
                        "instruction": row["instruction"],
                        "input": inst.get("input", ""),
                        "output": inst["output"],
                    }
            elif "std_answer" in row:  # BELLE eval set
                yield {"instruction": row["question"], "output": row["std_answer"]}
            else:
                yield row


def load_clean_records(data_dir: str | Path) -> list[Record]:
    """The clean instruction rows of the shared data folder as records (about 3,000, en + zh)."""
    data_dir = Path(data_dir)
    cfg = IngestConfig()
    out: list[Record] = []
    seen: set[str] = set()
    for rel in CLEAN_SOURCES:
        path = data_dir / rel
        if not path.exists():
            continue
        for i, row in enumerate(_raw_rows(path), start=1):
            try:
                rec, _ = row_to_record(row, rel, i, cfg)
            except RowError:
                continue
            rec.id = content_id(rec.messages, rec.text)
            if rec.id in seen:
                continue
            seen.add(rec.id)
            out.append(rec)
    return out


# --------------------------------------------------------------------------------------------------
# junk makers: (clean record, rng, pool of other records) → broken response, or None if not applicable

_EN_REFUSALS = (
    "I'm sorry, but I can't help with that request.",
    "I apologize, but I cannot provide information on this topic.",
    "I'm sorry, I cannot fulfill this request as it goes against my guidelines.",
    "Sorry, I can't assist with that.",
    "I cannot answer that question. Is there anything else I can help you with?",
    "I'm really sorry, but I am unable to comply with this request.",
)
_ZH_REFUSALS = (
    "抱歉，我无法回答这个问题。",
    "对不起，我不能提供这方面的信息。",
    "很抱歉，我无法完成这个任务。如果您有其他问题，欢迎继续提问。",
    "不好意思，我没有办法帮助您完成这个请求。",
    "抱歉，作为AI助手，我不能回答这类问题。",
    "我无法提供相关内容，请谅解。",
)
_EN_BOILERPLATE = (
    "As an AI language model, I don't have personal opinions, but ",
    "As an AI, I do not have feelings or experiences. However, ",
    "I'm just an AI language model and cannot browse the internet. That said, ",
    "As a large language model trained by OpenAI, I can tell you that ",
)
_ZH_BOILERPLATE = (
    "作为一个人工智能语言模型，我没有个人观点，但是",
    "作为一个AI助手，我无法感受情绪。不过，",
    "作为人工智能，我没有实时数据。",
    "我只是一个语言模型，",
)
_EN_PLACEHOLDERS = (
    "TODO",
    "N/A",
    "TBD",
    "[Insert answer here]",
    "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do "
    "eiusmod tempor incididunt ut labore et dolore magna aliqua.",
    "TODO: write the answer",
    "<your answer here>",
    "Answer goes here",
    "...",
    "[Your response here]",
)
_ZH_PLACEHOLDERS = (
    "待补充",
    "答案：待补充",
    "暂无",
    "（此处填写答案）",
    "略",
    "TODO：补充答案",
    "待完善。",
    "请在此处输入回答",
    "此处填写具体内容",
    "N/A",
)
_SPAM_EN = (
    '<div class="ad"><a href="http://cheap-deals.example.com/?ref=12">Click here</a> to win a free iPhone! '
    '<script>window.location="http://spam.example.net"</script></div>',
    "Buy now at http://best-pills.example.com and http://best-pills.example.com/offer - limited time offer!",
    '<p><a href="http://seo.example.org/1">best casino</a> <a href="http://seo.example.org/2">free spins</a> '
    '<a href="http://seo.example.org/3">online slots</a></p>',
)
_SPAM_ZH = (
    '<div class="ad">点击这里领取优惠券 <a href="http://youhui.example.cn">http://youhui.example.cn</a></div>',
    "加微信 abc12345 免费领取资料！点击链接 http://free.example.cn/zl 立即下载！",
    '<iframe src="http://ad.example.cn/banner"></iframe><p>限时抢购，扫码下单</p>',
)


def _is_zh(rec: Record) -> bool:
    return rec.lang == "zh"


def _resp(rec: Record) -> str:
    for m in reversed(rec.messages or []):
        if m["role"] == "assistant":
            return m["content"]
    return ""


def _last_user(rec: Record) -> str:
    """The user turn the last answer replies to (multi-turn sources)."""
    for m in reversed(rec.messages or []):
        if m["role"] == "user":
            return m["content"]
    return ""


def _empty(rec: Record, rng: random.Random, pool) -> str:
    return rng.choice(["", " ", "\n\n", "...", "。", "——", "？？", "-", "\t", "…"])


def _refusal(rec: Record, rng: random.Random, pool) -> str:
    return rng.choice(_ZH_REFUSALS if _is_zh(rec) else _EN_REFUSALS)


def _boilerplate(rec: Record, rng: random.Random, pool) -> str:
    prefix = rng.choice(_ZH_BOILERPLATE if _is_zh(rec) else _EN_BOILERPLATE)
    body = _resp(rec)
    return prefix + (body[:1].lower() + body[1:] if not _is_zh(rec) else body)


def _truncated(rec: Record, rng: random.Random, pool) -> str | None:
    """Cut where a max-token limit would: mid-sentence (never right after . ! ? or a newline)."""
    text = _resp(rec)
    if len(text) < 80:
        return None
    for _ in range(20):
        cut = rng.randint(int(len(text) * 0.3), int(len(text) * 0.85))
        if not _is_zh(rec):
            # token boundaries: mostly between words
            while cut < len(text) and text[cut - 1] != " ":
                cut += 1
        head = text[:cut].rstrip()
        if len(head) >= 40 and head[-1] not in ".!?。！？\n:：;；)）]】\"”'’*`" and not head[-1].isdigit():
            return head
    return None


def _repetition(rec: Record, rng: random.Random, pool) -> str | None:
    text = _resp(rec)
    style = rng.randrange(3)
    if style == 0:  # degenerate loop of one phrase after a normal start
        if _is_zh(rec):
            chars = [ch for ch in text if not ch.isspace()]
            if len(chars) < 6:
                return None
            start = rng.randrange(max(1, len(chars) - 8))
            phrase = "".join(chars[start : start + rng.randint(4, 8)])
        else:
            words = text.split()
            if len(words) < 4:
                return None
            start = rng.randrange(max(1, len(words) - 6))
            phrase = " ".join(words[start : start + rng.randint(3, 6)]) + " "
        head = text[: len(text) // 3]
        # degenerate generation loops until the token budget runs out: the loop dominates the answer
        reps = max(8, int(len(head) * rng.uniform(1.0, 3.0) / max(1, len(phrase))))
        return head + phrase * reps
    if style == 1:  # the same sentence over and over
        sep = "。" if _is_zh(rec) else ". "
        first = text.split(sep)[0].strip()
        if len(first) < 3:
            return None
        return (first + sep) * rng.randint(5, 15)
    lines = [ln for ln in text.splitlines() if ln.strip()] or [text]  # the same line block repeated
    block = "\n".join(lines[: rng.randint(1, min(3, len(lines)))])
    return "\n".join([block] * rng.randint(4, 10))


def _echo(rec: Record, rng: random.Random, pool) -> str:
    instr = _last_user(rec)
    style = rng.randrange(3)
    if style == 0:
        return instr
    if style == 1:
        return ("问题：" if _is_zh(rec) else "Question: ") + instr
    return instr + ("\n" if rng.random() < 0.5 else " ") + instr


def _mojibake(rec: Record, rng: random.Random, pool) -> str | None:
    text = _resp(rec)
    if _is_zh(rec):
        enc = rng.choice(["latin-1", "cp1252", "gbk"])
        broken = text.encode("utf-8").decode(enc, errors="replace")
        return broken if broken != text else None  # pure-ASCII answers ("2011") cannot break
    # English text usually carries typographic quotes and dashes; those are what break
    smart = text.replace("'", "\u2019").replace(" - ", " \u2014 ")
    smart = smart.replace('"', "\u201c", 1).replace('"', "\u201d", 1)
    if smart == text:
        smart = text + " \u2014 \u201cthat\u2019s it\u201d"
    return smart.encode("utf-8").decode("cp1252", errors="replace")


def _html_spam(rec: Record, rng: random.Random, pool) -> str:
    spam = rng.choice(_SPAM_ZH if _is_zh(rec) else _SPAM_EN)
    text = _resp(rec)
    style = rng.randrange(3)
    if style == 0:
        return spam
    if style == 1:
        return text + "\n\n" + spam
    paras = [p for p in text.split("\n") if p.strip()] or [text]
    return (
        '<html><body><div class="content">'
        + "".join(f"<p><span>{p}</span></p>" for p in paras)
        + "</div></body></html>"
    )


def _placeholder(rec: Record, rng: random.Random, pool) -> str:
    return rng.choice(_ZH_PLACEHOLDERS if _is_zh(rec) else _EN_PLACEHOLDERS)


def _lang_mismatch(rec: Record, rng: random.Random, pool) -> str | None:
    """An answer in the other language to an instruction that did not ask for a translation."""
    user = _last_user(rec)
    if detect_lang(user) != rec.lang or re.search(
        r"translat|翻译|译成|英文|中文|english|chinese", user, re.I
    ):
        return None
    other = [r for r in pool if (r.lang == "en") == _is_zh(rec) and len(_resp(r)) >= 60]
    if not other:
        return None
    return _resp(rng.choice(other))


_MAKERS = {
    "empty": _empty,
    "refusal": _refusal,
    "boilerplate": _boilerplate,
    "truncated": _truncated,
    "repetition": _repetition,
    "echo": _echo,
    "mojibake": _mojibake,
    "html_spam": _html_spam,
    "placeholder": _placeholder,
    "lang_mismatch": _lang_mismatch,
}


def make_junk(
    clean: list[Record], *, per_kind: int = 100, kinds: tuple[str, ...] = JUNK_KINDS, seed: int = 0
) -> list[Record]:
    """``per_kind`` junk records per kind and language (en, zh), each from a random clean row."""
    rng = random.Random(seed)
    by_lang = {lang: [r for r in clean if r.lang == lang] for lang in ("en", "zh")}
    out: list[Record] = []
    for kind in kinds:
        maker = _MAKERS[kind]
        for lang, rows in by_lang.items():
            if not rows:
                continue
            made, tries = 0, 0
            while made < per_kind and tries < per_kind * 50:
                tries += 1
                base = rng.choice(rows)
                broken = maker(base, rng, clean)
                if broken is None:
                    continue
                msgs = [
                    {"role": "user", "content": _last_user(base)},
                    {"role": "assistant", "content": broken},
                ]
                out.append(
                    Record(
                        id=f"junk-{kind}-{lang}-{made}",
                        messages=msgs,
                        source=f"junk:{kind}",
                        lang=lang,
                        meta={"junk_kind": kind, "from": base.id},
                    )
                )
                made += 1
    return out


def write_demo_training_set(data_dir: str | Path, out_dir: str | Path, *, seed: int = 1) -> tuple[Path, Path]:
    """The demo classifier's training files: ``pos.parquet`` (clean rows) and ``neg.parquet`` (junk).

    About as many negatives as positives, every junk kind in both languages. This teaches the
    classifier what the rules already catch, plus softer cues (answer endings, boilerplate wording):
    it is a demo of the train/apply loop, not a substitute for negatives from your own pool.
    """
    from curation.io import write_records

    clean = load_clean_records(data_dir)
    if not clean:
        raise FileNotFoundError(f"{data_dir}: none of {', '.join(CLEAN_SOURCES)} found")
    per_kind = max(1, len(clean) // (2 * len(JUNK_KINDS)))
    out = Path(out_dir)
    write_records(out / "pos.parquet", clean)
    write_records(out / "neg.parquet", make_junk(clean, per_kind=per_kind, seed=seed))
    return out / "pos.parquet", out / "neg.parquet"
