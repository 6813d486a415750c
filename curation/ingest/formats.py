"""Format adapters: one raw row (a dict from any reader) → one :class:`Record`, or a :class:`RowError`.

Formats are detected per row (a file may mix them): OpenAI ``messages``, ShareGPT
``conversations`` (optional top-level ``system``; turns as role/content or from/value in either
field), alpaca (instruction/input/output, optional ``history`` of [question, answer] pairs),
dolly (instruction/context/response), self-instruct (instruction + one-element ``instances``),
BELLE-style ``question`` + ``answer`` (or ``std_answer``), ``prompt`` + ``completion`` or
``response`` (an alpaca template inside the prompt is unwrapped), and plain ``text``. An explicit
field map (``instruction=question,output=answer``) overrides detection. Adding a format is one
branch in :func:`detect_format` and one in :func:`row_to_record`.
"""

from __future__ import annotations

import json
import math
from typing import Any

from curation.ingest.base import JSON as _JSON
from curation.ingest.base import SURROGATE_RE as _SURROGATE_RE
from curation.ingest.base import IngestConfig, RowError
from curation.ingest.base import json_error as _json_error
from curation.records import Record, detect_lang

META_FIELDS = ("category", "class", "name", "task", "lang", "tags")

ROLE_ALIASES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "prompter": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "model": "assistant",
    "bot": "assistant",
}


def _label(key: str, names: dict[str, str]) -> str:
    return f"{names[key]!r} (mapped to {key})" if key in names else repr(key)


def _str_field(row: dict, key: str, names: dict[str, str], *, required: bool = True) -> str | None:
    if key not in row:
        if required:
            raise RowError("missing_field", f"field {_label(key, names)} is missing")
        return None
    v = row[key]
    if v is None:
        if required:
            raise RowError("null_field", f"field {_label(key, names)} is null")
        return None
    if isinstance(v, str):
        return v
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        if isinstance(v, float) and not math.isfinite(v):
            raise RowError("wrong_type", f"field {_label(key, names)} is {v}, expected a string")
        # numbers in a text field (e.g. an answer "42") are fine as text
        return str(v)
    raise RowError("wrong_type", f"field {_label(key, names)} is {type(v).__name__}, expected a string")


def _turn_content(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if value is None:
        raise RowError("null_field", f"{where} is null")
    if isinstance(value, list):
        # OpenAI content parts: [{"type": "text", "text": ...}]; other part types have no text to train on
        parts = []
        for j, part in enumerate(value):
            if isinstance(part, str):
                parts.append(part)
            elif (
                isinstance(part, dict)
                and part.get("type", "text") == "text"
                and isinstance(part.get("text"), str)
            ):
                parts.append(part["text"])
            else:
                raise RowError("wrong_type", f"{where}[{j}] is not a text part")
        return "".join(parts)
    raise RowError("wrong_type", f"{where} is {type(value).__name__}, expected a string")


def _norm_messages(raw: Any, field_name: str) -> list[dict[str, str]]:
    """Turns as OpenAI (role/content) or ShareGPT (from/value) objects, whichever field holds them."""
    if raw is None:
        raise RowError("null_field", f"field {field_name!r} is null")
    if isinstance(raw, str) and raw.lstrip().startswith("["):
        # CSV and some parquet exports store the turns as a JSON string
        try:
            raw = _JSON.decode(raw)
        except ValueError as e:
            raise RowError("bad_json", f"field {field_name!r} holds invalid JSON: {_json_error(e)}") from None
        except RecursionError:
            raise RowError("nested_too_deep", f"field {field_name!r} is nested too deeply") from None
    if not isinstance(raw, list):
        raise RowError(
            "wrong_type", f"field {field_name!r} is {type(raw).__name__}, expected a list of turns"
        )
    msgs: list[dict[str, str]] = []
    for i, turn in enumerate(raw):
        if not isinstance(turn, dict):
            raise RowError("wrong_type", f"{field_name}[{i}] is {type(turn).__name__}, expected an object")
        role_key, content_key = ("from", "value") if "from" in turn else ("role", "content")
        if role_key not in turn:
            raise RowError("missing_field", f"{field_name}[{i}] has no 'role' (or 'from')")
        role = turn[role_key]
        if not isinstance(role, str) or role.strip().lower() not in ROLE_ALIASES:
            raise RowError(
                "bad_role", f"{field_name}[{i}].{role_key} = {repr(role)[:50]} is not a known role"
            )
        if content_key not in turn:
            raise RowError("missing_field", f"{field_name}[{i}] has no {content_key!r}")
        content = _turn_content(turn[content_key], f"{field_name}[{i}].{content_key}")
        msgs.append({"role": ROLE_ALIASES[role.strip().lower()], "content": content})
    return msgs


def _history_turns(raw: Any) -> list[dict[str, str]]:
    """Alpaca ``history`` (LLaMA-Factory, BELLE multi-turn): [[instruction, answer], ...] before the last turn."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise RowError(
            "wrong_type", f"field 'history' is {type(raw).__name__}, expected a list of [q, a] pairs"
        )
    turns: list[dict[str, str]] = []
    for i, pair in enumerate(raw):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise RowError("wrong_type", f"history[{i}] is not a [question, answer] pair of strings")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return turns


def _prompt_to_instruction(prompt: str) -> tuple[str, str]:
    """Unwrap the alpaca template ("Below is an instruction... ### Instruction: ... ### Response:").

    Plain string search, not a regex: a backtracking pattern is quadratic on hostile prompts.
    """
    body = prompt.strip()
    if not (body.startswith("Below is an instruction") and body.endswith("### Response:")):
        return prompt, ""
    start = body.find("### Instruction:")
    if start < 0:
        return prompt, ""
    inner = body[start + len("### Instruction:") : -len("### Response:")]
    instr, sep, inp = inner.partition("### Input:")
    return instr.strip(), inp.strip() if sep else ""


def _turns(system: str | None, instruction: str, inp: str | None, output: str) -> list[dict[str, str]]:
    user = instruction if not inp or not inp.strip() else f"{instruction}\n\n{inp}"
    msgs = [{"role": "system", "content": system}] if system else []
    msgs += [{"role": "user", "content": user}, {"role": "assistant", "content": output}]
    return msgs


def detect_format(row: dict) -> str:
    """Name of the row's format (see module docstring), or ``unknown``."""
    if "messages" in row:
        return "openai"
    if "conversations" in row:
        return "sharegpt"
    if "instruction" in row:
        if "output" in row:
            return "alpaca"
        if "response" in row:
            return "dolly"
        if "instances" in row:
            return "self_instruct"
    if "question" in row and ("answer" in row or "std_answer" in row):
        return "qa"
    if "prompt" in row and ("completion" in row or "response" in row):
        return "prompt_completion"
    if "text" in row:
        return "text"
    return "unknown"


def _mapped_format(field_map: dict[str, str]) -> str | None:
    """The format an explicit field map asks for (None: detect from the row)."""
    if "messages" in field_map:
        return "openai"
    if "conversations" in field_map:
        return "sharegpt"
    if "instruction" in field_map or "output" in field_map:
        return "alpaca"
    if "text" in field_map:
        return "text"
    return None


def row_to_record(row: Any, source: str, line: int, config: IngestConfig) -> tuple[Record, str]:
    """Convert one raw row; raises :class:`RowError` with a ledger reason for bad rows."""
    if not isinstance(row, dict):
        raise RowError("not_an_object", f"row is {type(row).__name__}, expected an object")
    names: dict[str, str] = {}
    fmt: str | None = None
    if config.field_map:
        mapped = {canon: row[src] for canon, src in config.field_map.items() if src in row}
        row = {**row, **mapped}
        for canon, src in config.field_map.items():
            if src not in row:
                row.pop(canon, None)  # a mapped field that is absent is missing, whatever else the row has
        names = {canon: src for canon, src in config.field_map.items()}
        fmt = _mapped_format(config.field_map)
    fmt = fmt or detect_format(row)
    system = _str_field(row, "system", names, required=False)
    messages: list[dict[str, str]] | None = None
    text: str | None = None
    if fmt == "openai":
        messages = _norm_messages(row.get("messages"), names.get("messages", "messages"))
    elif fmt == "sharegpt":
        messages = _norm_messages(row.get("conversations"), names.get("conversations", "conversations"))
        if system and not any(m["role"] == "system" for m in messages):
            messages.insert(0, {"role": "system", "content": system})
    elif fmt == "alpaca":
        messages = _turns(
            system,
            _str_field(row, "instruction", names),
            _str_field(row, "input", names, required=False),
            _str_field(row, "output", names),
        )
        if row.get("history") is not None:
            messages[-2:-2] = _history_turns(row["history"])
    elif fmt == "dolly":
        messages = _turns(
            system,
            _str_field(row, "instruction", names),
            _str_field(row, "context", names, required=False),
            _str_field(row, "response", names),
        )
    elif fmt == "self_instruct":
        inst = row["instances"]
        if not isinstance(inst, list) or not all(isinstance(x, dict) for x in inst):
            raise RowError("wrong_type", "field 'instances' must be a list of {input, output} objects")
        if len(inst) != 1:
            raise RowError(
                "unsupported_format", f"self-instruct row with {len(inst)} instances; expected exactly 1"
            )
        messages = _turns(
            system,
            _str_field(row, "instruction", names),
            _str_field(inst[0], "input", {}, required=False),
            _str_field(inst[0], "output", {}),
        )
    elif fmt == "qa":
        answer_key = "answer" if "answer" in row else "std_answer"
        messages = _turns(
            system, _str_field(row, "question", names), None, _str_field(row, answer_key, names)
        )
    elif fmt == "prompt_completion":
        key = "completion" if "completion" in row else "response"
        instr, inp = _prompt_to_instruction(_str_field(row, "prompt", names))
        messages = _turns(system, instr, inp, _str_field(row, key, names))
    elif fmt == "text":
        text = _str_field(row, "text", names)
    else:
        keys = ", ".join(sorted(str(k)[:40] for k in row)[:8]) or "none"
        raise RowError("unknown_format", f"no known instruction fields (fields: {keys}); use --field-map")

    if messages is not None:
        messages = [m for m in messages if not (m["role"] == "system" and not m["content"].strip())]
        for i, m in enumerate(messages):
            if not m["content"].strip():
                raise RowError("empty_content", f"{m['role']} turn {i} is empty")
        roles = {m["role"] for m in messages}
        if "user" not in roles:
            raise RowError("missing_field", "conversation has no user turn")
        if "assistant" not in roles:
            raise RowError("missing_field", "conversation has no assistant turn")
        full = "\n".join(m["content"] for m in messages)
    else:
        assert text is not None
        if not text.strip():
            raise RowError("empty_content", "text is empty")
        full = text
    n_chars = len(full) - (len(messages) - 1 if messages else 0)
    if n_chars > config.max_chars:
        raise RowError("too_large", f"{n_chars} characters > max_chars {config.max_chars}")
    bad = _SURROGATE_RE.search(full)
    if bad:
        raise RowError(
            "invalid_utf8", f"text has an undecodable byte or lone surrogate U+{ord(bad.group()):04X}"
        )

    given = row.get("id")
    if given is not None and (isinstance(given, bool) or not isinstance(given, (str, int))):
        raise RowError("wrong_type", f"field 'id' is {type(given).__name__}, expected a string or integer")
    rid = str(given).strip() if given is not None else ""
    if _SURROGATE_RE.search(rid):
        raise RowError("invalid_utf8", "field 'id' has an undecodable byte or lone surrogate")
    meta = {k: row[k] for k in META_FIELDS if row.get(k) is not None and row.get(k) != ""}
    if meta:
        try:
            encoded = json.dumps(meta, ensure_ascii=False, default=str)
        except (RecursionError, ValueError):
            raise RowError(
                "nested_too_deep", f"a metadata field ({', '.join(meta)}) is nested too deeply"
            ) from None
        if _SURROGATE_RE.search(encoded):
            raise RowError("invalid_utf8", f"a metadata field ({', '.join(meta)}) has a lone surrogate")
    rec = Record(
        id=rid, messages=messages, text=text, source=source, lang=detect_lang(full), line=line, meta=meta
    )
    return rec, fmt

