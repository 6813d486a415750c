"""Per-record features the score stage stores: complexity (explainable parts, one score in [0, 1]) and task type.

Features (stored per record as JSON in ``complexity_features``; zh and en cues):

==================  ==============================================================  ======  ==================
part                raw feature                                                      weight  scaled to [0, 1]
==================  ==============================================================  ======  ==================
instruction_length  word units of the prompt (latin words + CJK characters / 1.5)    0.15    log1p(u)/log1p(200)
constraints         explicit requirements: "must", "at least", "in 3 sentences",     0.20    c / (c + 2)
                    "不超过", "必须", output-format asks, numbered requirement lines
reasoning           multi-step / reasoning cues: "step by step", "explain why",      0.15    r / (r + 1.5)
                    "compare", "prove", "为什么", "分析", "逐步"
math_code           math (equations, LaTeX, arithmetic, math words) and code         0.15    max(math, code)
                    (fences, keywords, language names); each 0, 0.5 or 1
turns               user turns of a conversation                                     0.10    (t - 1) / 4
response_length     word units of the assistant turns                                0.15    log1p(u)/log1p(600)
response_structure  list items, headings, code fences, table rows in the response    0.10    s / (s + 4)
==================  ==============================================================  ======  ==================

``complexity = sum(weight * scaled)``, every scaled part capped at 1, so complexity is in [0, 1];
``complexity_features`` keeps the raw counts and the scaled parts, so a score can be explained and
the weights revisited without rescoring.

Task type: ordered keyword/pattern rules over the instruction (its first 300 characters carry the
intent), zh and en, into the fixed taxonomy :data:`TASK_TYPES`; the first rule that matches wins,
code and math fences in the response are a fallback. ``bench/score_bench.py`` measures agreement
with BELLE's labelled Chinese eval set.

Pure functions of one record (no stage, no model): the score stage stores them, and select and mix
compute them on the fly for rows the score stage did not see.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from curation import textscan
from curation.records import Record
from curation.textscan import BatchPattern, TextColumn

TASK_TYPES = (
    "open_qa",
    "closed_qa",
    "classification",
    "extraction",
    "summarization",
    "rewriting",
    "translation",
    "brainstorming",
    "creative_writing",
    "math",
    "code",
    "reasoning",
    "chit_chat",
    "other",
)

WEIGHTS = {
    "instruction_length": 0.15,
    "constraints": 0.20,
    "reasoning": 0.15,
    "math_code": 0.15,
    "turns": 0.10,
    "response_length": 0.15,
    "response_structure": 0.10,
}

_CJK = BatchPattern(r"[\u3400-\u4dbf\u4e00-\u9fff]")
_LATIN_WORD = BatchPattern(r"[A-Za-z0-9]+(?:['’][A-Za-z]+)?")


def _rx(*patterns: str) -> BatchPattern:
    # ASCII word boundaries: with Unicode ones "用Python" has no boundary before "Python". A batch
    # pattern: the score stage runs it over all rows of a batch at once (RE2), one record uses Python.
    return BatchPattern("|".join(f"(?:{p})" for p in patterns), re.I | re.ASCII)


# --- complexity cues -------------------------------------------------------------------------------
_CONSTRAINT = _rx(
    r"\bmust\b",
    r"\bshould\b",
    r"\bmake sure\b",
    r"\bensure\b",
    r"\bat (?:least|most)\b",
    r"\bno (?:more|less) than\b",
    r"\bexactly\b",
    r"\bonly\b",
    r"\bdo not\b",
    r"\bdon't\b",
    r"\bwithout\b",
    r"\bavoid\b",
    r"\bnever\b",
    r"\binclude\b",
    r"\bwithin \d+",
    r"\bin (?:\d+|one|two|three|four|five|ten) (?:words?|sentences?|paragraphs?|"
    r"lines?|bullet points?|steps?)\b",
    r"\bunder \d+ words\b",
    r"\b(?:json|yaml|markdown|table|bullet(?:ed)? list|"
    r"numbered list|csv)\b",
    r"\bformat\b",
    r"\ball (?:lower|upper)case\b",
    r"\bend (?:it |your response )?with\b",
    r"\bstart (?:it |your response )?with\b",
    r"\btitle\b",
    r"\bkeywords?\b",
    r"\brequirements?\b",
    r"必须",
    r"务必",
    r"不要",
    r"不能",
    r"不得",
    r"禁止",
    r"至少",
    r"至多",
    r"最多",
    r"不超过",
    r"不少于",
    r"只[能用需要]",
    r"仅",
    r"确保",
    r"要求",
    r"格式",
    r"字以内",
    r"\d+\s*字",
    r"\d+\s*个?(?:句|段|点|条)",
    r"分点",
    r"列表",
    r"表格",
    r"包含",
    r"包括",
    r"以.{1,6}的(?:形式|方式|口吻|语气|风格)",
    r"用.{1,6}(?:语言|语气|风格|口吻)",
)
_REQUIREMENT_LINE = BatchPattern(r"^\s*(?:\d+[.)、]|[-*•]|[（(]\d+[)）])\s+\S", re.M)
_REASONING = _rx(
    r"\bstep[- ]by[- ]step\b",
    r"\bexplain\b",
    r"\bwhy\b",
    r"\breason(?:ing|s)?\b",
    r"\bprove\b",
    r"\bjustify\b",
    r"\bderive\b",
    r"\banaly[sz]e\b",
    r"\banalysis\b",
    r"\bcompare\b",
    r"\bcontrast\b",
    r"\bevaluate\b",
    r"\bpros and cons\b",
    r"\btrade-?offs?\b",
    r"\bwhat (?:would|if)\b",
    r"\bhow (?:does|do|would|can)\b",
    r"\bfirst\b.{0,80}\bthen\b",
    r"\bimplications?\b",
    r"\binfer\b",
    r"\bdeduce\b",
    r"\blogic(?:al)?\b",
    r"为什么",
    r"为何",
    r"解释",
    r"分析",
    r"比较",
    r"对比",
    r"推理",
    r"推导",
    r"证明",
    r"逐步",
    r"一步一步",
    r"原因",
    r"如何",
    r"怎样",
    r"评价",
    r"利弊",
    r"优缺点",
    r"先.{0,30}再",
    r"首先",
    r"假如",
    r"如果.{0,30}会",
)
_MATH_STRONG = _rx(
    r"\$[^$\n]{1,200}\$",
    r"\\(?:frac|sqrt|sum|int|times|cdot|le|ge|pi)\b",
    r"\b\d+\s*[-+*/×÷^]\s*\d+\s*=",
    r"[=<>≤≥]\s*-?\d",
    r"\b[xyzn]\s*[=+\-*/^]\s*\d",
    r"\bsolve\b.{0,40}\b(?:equation|for [a-z])\b",
)
_MATH_WEAK = _rx(
    r"\b(?:calculate|compute|equation|integral|derivative|probability|percent(?:age)?|sum of|product of|"
    r"average|how many|how much|remainder|divisible|prime|fraction|algebra|geometry|area|perimeter|"
    r"volume)\b",
    r"计算",
    r"方程",
    r"求解",
    r"概率",
    r"百分之",
    r"多少",
    r"几个",
    r"平均",
    r"面积",
    r"周长",
    r"体积",
    r"等于",
    r"分数",
    r"整数",
    r"质数",
    r"函数",
    r"导数",
    r"积分",
    r"数学",
)
_CODE_STRONG = _rx(
    r"```",
    r"^\s*(?:def|class|import|from \S+ import|public|private|#include|function|const|let|var|SELECT|"
    r"CREATE TABLE)\b",
    r"\breturn\b.*;",
    r"[{};]\s*$",
    r"</?[a-z]+>",
    r"=>",
    r"\w+\([^)]*\)\s*[{:]",
)
_CODE_WEAK = _rx(
    r"\b(?:python|java(?:script)?|typescript|c\+\+|c#|golang|rust|sql|html|css|regex|regular expression|bash|"
    r"shell script|api|function|algorithm|compile|debug|bug|code|program(?:ming)?|script|json)\b",
    r"代码",
    r"编程",
    r"程序",
    r"函数",
    r"算法",
    r"正则",
    r"脚本",
    r"接口",
    r"编译",
    r"调试",
)
_STRUCTURE_LINE = BatchPattern(
    r"^\s*(?:\d+[.)、]|[-*•]|#{1,6}\s|\|.*\||```|[（(]?[一二三四五六七八九十]+[)）、.])", re.M
)


def word_units(text: str) -> float:
    """Length in word units: latin words + CJK characters / 1.5 (a Chinese word is ~1.5 characters)."""
    if text.isascii() and "'" not in text:  # no CJK, no apostrophe joins: words are runs of [A-Za-z0-9]
        return len(textscan.ascii_words(text)) + 0 / 1.5
    return len(_LATIN_WORD.python.findall(text)) + len(_CJK.python.findall(text)) / 1.5


def _word_units_many(texts: TextColumn) -> list[float]:
    latin, cjk = _LATIN_WORD.count(texts), _CJK.count(texts)
    return [int(a) + int(b) / 1.5 for a, b in zip(latin, cjk, strict=True)]


def _math_levels(texts: TextColumn) -> Any:
    # 1.0 with a strong math cue, else 0.5 with a weak one, else 0.0
    return np.where(_MATH_STRONG.search(texts), 1.0, np.where(_MATH_WEAK.search(texts), 0.5, 0.0))


def _code_levels(texts: TextColumn) -> Any:
    # 1.0 with two strong code cues, else 0.5 with one or a weak one, else 0.0
    strong = _CODE_STRONG.count(texts)
    return np.where(strong >= 2, 1.0, np.where((strong > 0) | _CODE_WEAK.search(texts), 0.5, 0.0))


def complexity_features(record: Record) -> dict[str, Any]:
    """Raw counts and scaled parts (see the module docstring) of one record."""
    return complexity_features_many([record])[0]


def complexity_features_many(records: Sequence[Record]) -> list[dict[str, Any]]:
    """:func:`complexity_features` of many records, each pattern run over all of them at once."""
    prompts = TextColumn([r.prompt() for r in records])
    responses = TextColumn([r.response() for r in records])
    inst_units, resp_units = _word_units_many(prompts), _word_units_many(responses)
    constraints, req_lines = _CONSTRAINT.count(prompts), _REQUIREMENT_LINE.count(prompts)
    reasoning, structure = _REASONING.count(prompts), _STRUCTURE_LINE.count(responses)
    math_p, math_r = _math_levels(prompts), _math_levels(responses)
    code_p, code_r = _code_levels(prompts), _code_levels(responses)
    out = []
    for i, record in enumerate(records):
        raw = {
            "instruction_units": round(inst_units[i], 1),
            "constraints": int(constraints[i]) + max(0, int(req_lines[i]) - 1),
            "reasoning_cues": int(reasoning[i]),
            "math": max(float(math_p[i]), 0.5 * float(math_r[i])),
            "code": max(float(code_p[i]), 0.5 * float(code_r[i])),
            "turns": record.n_turns() if record.messages is not None else 0,
            "response_units": round(resp_units[i], 1),
            "response_structure": int(structure[i]),
        }
        parts = {
            "instruction_length": math.log1p(raw["instruction_units"]) / math.log1p(200),
            "constraints": raw["constraints"] / (raw["constraints"] + 2),
            "reasoning": raw["reasoning_cues"] / (raw["reasoning_cues"] + 1.5),
            "math_code": max(raw["math"], raw["code"]),
            "turns": (raw["turns"] - 1) / 4 if raw["turns"] > 1 else 0.0,
            "response_length": math.log1p(raw["response_units"]) / math.log1p(600),
            "response_structure": raw["response_structure"] / (raw["response_structure"] + 4),
        }
        raw["parts"] = {k: round(min(1.0, v), 4) for k, v in parts.items()}
        out.append(raw)
    return out


def complexity_score(features: dict[str, Any]) -> float:
    """The weighted sum of the scaled parts, in [0, 1]."""
    return round(sum(WEIGHTS[k] * features["parts"][k] for k in WEIGHTS), 4)


# --- task type -------------------------------------------------------------------------------------
# Ordered: the first matching rule wins, so specific intents (translate, summarize) come before
# generic ones (question words). Patterns look at the instruction head.
_TASK_RULES: list[tuple[str, BatchPattern]] = [
    (
        "translation",
        _rx(
            r"\btranslat(?:e|ion)\b",
            r"\bin(?:to)? (?:english|chinese|french|german|spanish|japanese|korean|italian|"
            r"russian|portuguese)\b.{0,20}$",
            r"翻译",
            r"译成",
            r"译为",
            r"(?:英文|中文|英语|汉语|日语|法语)(?:怎么说|是什么)",
            r"用(?:英文|英语|中文|日语|法语)(?:表达|说)",
        ),
    ),
    (
        "code",
        _rx(
            r"\b(?:write|implement|create|complete|fix|debug|refactor|optimi[sz]e|explain)\b.{0,60}\b(?:code|function|"
            r"program|script|class|method|query|regex|regular expression|algorithm|api)\b",
            r"\b(?:write|implement|create|using|in) (?:a |an )?(?:python|javascript|typescript|java|c\+\+|c#|golang|rust|sql|"
            r"bash|php|ruby|kotlin|swift)\b",
            r"```",
            r"代码",
            r"编程",
            r"(?:写|编写|实现|设计)一?[个段]?.{0,12}(?<!应用)(?:程序|函数|脚本|算法)",
            r"\bSQL\b",
            r"正则表达式",
            r"\b(?:code|coding|python|javascript|typescript|html|css|regex|stackoverflow|sql)\b",
        ),
    ),
    (
        "math",
        _rx(
            r"\$[^$\n]{1,100}\$",
            r"\b\d+\s*[-+*/×÷^]\s*\d+",
            r"\bsolve\b",
            r"\bcalculate\b",
            r"\bcompute\b",
            r"\bequation\b",
            r"\bhow many\b.{0,80}\?",
            r"\bhow much\b.{0,80}\b(?:cost|money|total|left|remain)",
            r"\bprobability\b",
            r"\bintegral\b",
            r"\bderivative\b",
            r"\bprime numbers?\b",
            r"\d.{0,80}\bhow (?:many|much|long|far|old)\b",
            r"\bhow (?:many|much|long|far|old)\b.{0,80}\d",
            r"计算",
            r"方程",
            r"求解",
            r"解方程",
            r"概率",
            r"等于多少",
            r"\d+\s*[+\-*/×÷]\s*\d+",
            r"\d.{0,80}(?:多少|几[个只条本张棵台束人倍天年次块套袋节辆]|百分之几|求)",
            r"(?:面积|周长|体积)是?多少",
        ),
    ),
    (
        "summarization",
        _rx(
            r"\bsummar(?:y|ize|ise|ization)\b",
            r"\btl;?dr\b",
            r"\bmain (?:idea|points?)\b",
            r"\bin (?:a|one) "
            r"(?:sentence|paragraph)\b.{0,40}\b(?:describe|explain|what)\b",
            r"\bgist\b",
            r"总结",
            r"概括",
            r"摘要",
            r"归纳",
            r"概述",
            r"提炼",
            r"主要内容",
            r"中心思想",
        ),
    ),
    (
        "extraction",
        _rx(
            r"\bextract\b",
            r"\blist (?:all|the) .{0,40}\b(?:mentioned|in (?:the|this) (?:text|passage|paragraph))",
            r"\bidentify (?:all|the) .{0,40}\b(?:in|from) (?:the|this)\b",
            r"\bfind (?:all|the) .{0,40}\bin (?:the|this) "
            r"(?:text|passage|paragraph|sentence)\b",
            r"\bpull out\b",
            r"\bnamed entit",
            r"\bkeywords? from\b",
            r"提取",
            r"抽取",
            r"找出.{0,20}(?:中的|里的|中所有)",
            r"列出.{0,20}(?:中的|中提到)",
            r"关键词",
            r"实体",
        ),
    ),
    (
        "classification",
        _rx(
            r"\bclassify\b",
            r"\bclassification\b",
            r"\bcategori[sz]e\b",
            r"\bwhich (?:category|class|type)\b",
            r"\bis (?:this|the following|it) (?:a |an )?(?:positive|negative|spam|fact|opinion|true or false)\b",
            r"\bsentiment\b",
            r"\b(?:label|tag) (?:the|each|these)\b",
            r"\bpositive or negative\b",
            r"\b(?:which|what) of (?:these|the following) (?:is|are) (?:a|an)\b",
            r"分类",
            r"归类",
            r"属于(?:哪|什么)",
            r"哪一?类",
            r"哪种类型",
            r"情感",
            r"正面还是负面",
            r"判断.{0,30}(?:是否|是不是|哪)",
            r"\b(?:tell|identify|decide|determine|detect|check) (?:me )?(?:if|whether)\b",
            r"\byes or no\b",
            r"\boutput (?:yes|no|1|0|true|false)\b",
            r"\bmultiple[- ]choice\b",
            r"\bidentify which\b",
            r"\b(?:which|whether) .{0,40}\b(?:is|are) (?:a |an )?\w+ or (?:a |an )?\w+\b",
            r"\b(?:select|choose|pick) (?:the|a|an|one|which)\b",
        ),
    ),
    (
        "rewriting",
        _rx(
            r"\brewrite\b",
            r"\brephrase\b",
            r"\bparaphrase\b",
            r"\bedit\b",
            r"\bproofread\b",
            r"\bcorrect (?:the )?"
            r"(?:grammar|spelling|errors?)\b",
            r"\bfix (?:the )?(?:grammar|spelling)\b",
            r"\bmake (?:it|this|the "
            r"(?:text|sentence|paragraph)) (?:more|less|shorter|longer|clearer|formal|informal|concise)\b",
            r"\bsimplify\b",
            r"\bconvert\b.{0,40}\b(?:into|to)\b",
            r"\bturn (?:this|the|it)\b.{0,30}\binto\b",
            r"\breplace\b",
            r"\bconvert (?:this|the following)\b.{0,30}\b(?:into|to)\b",
            r"\bshorten\b",
            r"改写",
            r"重写",
            r"润色",
            r"改成",
            r"改为",
            r"转换成",
            r"转述",
            r"换一种说法",
            r"修改",
            r"纠正",
            r"改正",
            r"精简",
            r"扩写",
            r"缩写",
            r"同义句",
            r"文言文",
        ),
    ),
    (
        "brainstorming",
        _rx(
            r"\bbrainstorm\b",
            r"\b(?:give|list|suggest|come up with|name|provide) (?:me )?(?:some|a few|several|a list "
            r"of|\d+|two|three|four|five|ten)\b.{0,40}\b(?:ideas?|ways?|suggestions?|tips?|names?|examples?|things?|"
            r"places?|reasons?|options?|activities|questions?)\b",
            r"\bideas? (?:for|to|on)\b",
            r"\bwhat are some\b",
            r"\bsuggestions?\b",
            r"\btips (?:for|on|to)\b",
            r"\b(?:suggest|recommend)\b",
            r"\bcome up with\b",
            r"\bthink (?:up|of)\b",
            r"^\s*\d+ (?:ways|ideas|things|reasons)\b",
            r"\b(?:make|create|write|generate|give me|prepare|draw up) (?:a |an |me a )?(?:\w+ ){0,2}(?:list|checklist|"
            r"plan|menu|schedule|itinerary|syllabus|budget|recipe)\b",
            r"\bplan (?:a|an|the|my)\b",
            r"头脑风暴",
            r"建议",
            r"想法",
            r"点子",
            r"创意",
            r"列举",
            r"推荐",
            r"有哪些(?:方法|办法|方式|建议|技巧)",
            r"(?:列出|给出|提出|想出|写出)(?:\d+|[一二三两四五六七八九十几]|一些|若干|多)",
            r"(?:提出|提供|制定|设计|想出).{0,12}"
            r"(?:方案|计划|策略|建议|方法|办法|问题|名称|名字)",
            r"一些(?:方法|建议|技巧|想法|常识)",
            r"解决方案",
        ),
    ),
    (
        "creative_writing",
        _rx(
            r"\b(?:write|compose|create|draft|generate) (?:me )?(?:a|an|the|some|\d+)?\s*(?:\w+\s){0,3}(?:story|poem|"
            r"haiku|song|lyrics|essay|letter|email|speech|script|dialogue|tweet|post|blog|article|limerick|joke|slogan|"
            r"ad|advertisement|description|review|cover letter|toast|tagline|novel|sonnet|rap|riddle)\b",
            r"\bwrite (?:a|an) \w+ (?:about|for|on)\b",
            r"\bimagine\b",
            r"\bpretend\b",
            r"\brole-?play\b",
            r"\bmake up\b",
            r"\bwrite (?:me )?(?:a |an |the )?(?:\w+ ){0,4}(?:diary|entry|text message|paragraph|post|message|note)\b",
            r"\bwrite about\b",
            r"\b(?:write|compose|create|generate|design) (?:a |an |some )?(?:\w+ ){0,3}(?:conversation|scene|proverb|"
            r"survey|spells?|puzzle|sentence|phrase)\b",
            r"\bcomplete the (?:lyrics|story|poem)\b",
            r"\bexpand\b.{0,40}\binto\b",
            r"(?:写|撰写|编写|创作|生成|编)一?[首篇段封个份则句组]",
            r"作一?首",
            r"创作",
            r"(?:写|撰写|编写|生成).{0,15}(?:诗|故事|"
            r"小说|歌词|作文|文案|广告语?|口号|演讲稿|祝福语|对联|信|文章|报道|段落|描述|剧本|台词|标题)",
            r"续写",
            r"仿写",
            r"想象",
            r"描绘",
        ),
    ),
    (
        "reasoning",
        _rx(
            r"\bstep[- ]by[- ]step\b",
            r"\blogic(?:al)? (?:puzzle|reasoning)\b",
            r"\briddle\b",
            r"\bdeduce\b",
            r"\binfer\b",
            r"\bif .{0,80}, (?:then )?(?:what|which|who|how)\b",
            r"\bwhat (?:would|will) happen\b",
            r"\bwhich (?:of the following )?(?:is|are) (?:true|false|correct|valid)\b",
            r"\bexplain (?:why|how)\b",
            r"推理",
            r"逻辑",
            r"推断",
            r"谜题",
            r"脑筋急转弯",
        ),
    ),
    (
        "closed_qa",
        _rx(
            r"\b(?:based on|according to|given|using) (?:the|this) (?:text|passage|paragraph|article|context|"
            r"information|reference|document)\b",
            r"\b(?:from|in) the (?:passage|text|paragraph|article) (?:above|below)\b",
            r"\breference text\b",
            r"根据(?:以下|下面|上面|上述|这段|该|给定|所给)",
            r"(?:文中|文章中|段落中|材料中|上文中?)(?:提到|所述|说)",
            r"阅读.{0,10}(?:回答|材料|文章)",
        ),
    ),
    (
        "open_qa",
        _rx(
            r"^\s*(?:请)?(?:回答|解答)(?:下面|以下|下列|这个)",
            r"\b(?:give|tell) me (?:the|about) \w+",
            r"^\s*(?:name|list) (?:the |some |all |a few |\d+ |two |three |four |five |ten )?\w+",
            r"^\s*answer (?:the|this|these) (?:following )?"
            r"questions?",
        ),
    ),
    (
        "chit_chat",
        _rx(
            r"^\s*(?:hi|hello|hey|good (?:morning|evening|night)|thanks?(?: you)?|how are you|what's up|who are you|"
            r"nice to meet you)\b",
            r"^\s*(?:你好|您好|嗨|哈喽|早上好|晚上好|谢谢|你是谁|在吗|最近怎么样)",
        ),
    ),
    (
        "open_qa",
        _rx(
            r"\?\s*$",
            r"^\s*(?:what|who|whom|whose|when|where|why|how|which|is|are|was|were|do|does|did|can|could|"
            r"should|would|will|has|have)\b",
            r"\b(?:explain|describe|tell me|define|what is|what are)\b",
            r"？\s*$",
            r"什么",
            r"谁",
            r"哪[里儿个些]",
            r"何时",
            r"怎么",
            r"如何",
            r"为什么",
            r"吗[？?]?\s*$",
            r"呢[？?]?\s*$",
            r"介绍",
            r"解释",
            r"说明",
            r"描述",
            r"告诉我",
            r"是否",
        ),
    ),
]
_CONTEXT_SPLIT = re.compile(r"\n\s*\n")


def classify_task(record: Record) -> str:
    """The record's task type from :data:`TASK_TYPES` (rules in zh and en, first match wins)."""
    return classify_tasks([record])[0]


def classify_tasks(records: Sequence[Record]) -> list[str]:
    """:func:`classify_task` of many records, each rule run over all of them at once."""
    out = ["other"] * len(records)
    chats = [i for i, r in enumerate(records) if r.messages is not None]
    instructions = [records[i].instruction() for i in chats]
    # The ask is usually the first sentence; with a passage first (common in Chinese data) the last.
    # Rules see the ask first so words inside a supplied passage do not decide the type.
    first = [_first_rule(TextColumn([_ask(x) for x in instructions])),
             _first_rule(TextColumn([x[:300] for x in instructions]))]
    for j, i in enumerate(chats):
        instruction = instructions[j]
        rule = first[0][j] if first[0][j] >= 0 else first[1][j]
        if rule >= 0:
            task = _TASK_RULES[rule][0]
            # a question about a supplied passage
            out[i] = "closed_qa" if task == "open_qa" and _has_context(instruction) else task
            continue
        response = records[i].response()
        if "```" in response:
            out[i] = "code"
        elif _MATH_STRONG.python.search(response[:1000]):
            out[i] = "math"
        elif _has_context(instruction):
            out[i] = "closed_qa"
    return out


def _first_rule(texts: TextColumn) -> Any:
    """Per text, the index of the first task rule that matches it (-1: none)."""
    hits = np.stack([pattern.search(texts) for _, pattern in _TASK_RULES]) if len(texts) else np.zeros((1, 0), bool)
    return np.where(hits.any(axis=0), hits.argmax(axis=0), -1)


_ASK_END = re.compile(r"[。！？?!：:\n]|\.(?:\s|$)")


def _ask(instruction: str, max_chars: int = 120) -> str:
    """The sentence that carries the request: the first one, or the last when the first is a passage."""
    text = instruction.strip()
    m = _ASK_END.search(text)
    first = text[: m.end()] if m else text
    if len(first) <= max_chars:
        return first
    segments = [seg for seg in re.split(r"(?<=[。！？?!\n])", text) if seg.strip()]
    return segments[-1][-max_chars:] if segments else text[-max_chars:]


def _has_context(instruction: str) -> bool:
    """A question followed by a supplied passage (dolly/alpaca ``context``/``input``)."""
    parts = _CONTEXT_SPLIT.split(instruction, maxsplit=1)
    return len(parts) == 2 and word_units(parts[1]) >= 40


__all__ = [
    "TASK_TYPES",
    "WEIGHTS",
    "classify_task",
    "classify_tasks",
    "complexity_features",
    "complexity_features_many",
    "complexity_score",
    "word_units",
]
