"""Fast text scanning for the per-row stages, with exactly the results of the slow way.

**Prefiltered regexes** skip the regex engine on texts that cannot match.

Python's ``re`` tries a big alternation (a dozen spam phrases, fifty constraint cues) at every
position of a text, and on most rows none of its words occurs at all. A :class:`Prefiltered`
pattern knows, for each top-level branch, a few literal strings of which every match of that branch
contains one (read from the parsed pattern). A text that holds none of them cannot match that
branch. When no branch can match, the answer is "no match" without running the engine; when only
some can, only those run (a branch that cannot match anywhere in the text never changes what an
alternation finds, so ``search``/``findall``/``finditer`` return exactly what the full pattern
returns). A branch without a usable literal (``\\d+\\s*=``) always runs.

Case-insensitive patterns look for their literals in a folded copy of the text: ASCII letters in
lower case, and the four non-ASCII characters Python's case-insensitive matching equates with an
ASCII letter (İ ı → i, ſ → s, K → k) mapped to it. The fold of the last text is kept, so several
patterns over the same text fold it once.

**ASCII fast paths**: most rows are ASCII, where "letters and digits" is a byte table; counting
or splitting on it with ``bytes.translate`` gives what the Unicode regexes give, many times faster.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

try:  # Python >= 3.11
    from re import _constants as sre_constants
    from re import _parser as sre_parse
except ImportError:  # pragma: no cover - Python 3.10
    import sre_constants  # type: ignore[no-redef]
    import sre_parse  # type: ignore[no-redef]

#: non-ASCII characters that case-insensitive ``re`` matches to an ASCII letter (tests/curation/test_prefilter.py
#: checks this list against every code point)
CASE_PARTNERS = {"\u0130": "i", "\u0131": "i", "\u017f": "s", "\u212a": "k"}
_FOLD_TABLE = str.maketrans({**{chr(c): chr(c + 32) for c in range(65, 91)}, **CASE_PARTNERS})
_PARTNER_RE = re.compile("[" + "".join(CASE_PARTNERS) + "]")
_MAX_SUBSETS = 4096  # compiled sub-alternations kept per pattern

_last_fold: tuple[str, str] = ("", "")


def fold(text: str) -> str:
    """``text`` as case-insensitive literals are looked up in (see the module docstring)."""
    global _last_fold
    last = _last_fold  # one tuple read: safe when threads share the module
    if last[0] is text:
        return last[1]
    if text.isascii():
        out = text.lower()
    elif _PARTNER_RE.search(text):
        out = text.translate(_FOLD_TABLE)
    else:
        # lower() changes only cased characters; the ones that can match an ASCII letter are A-Z here
        out = text.lower()
    _last_fold = (text, out)
    return out


_ASCII_NOT_ALNUM = bytes(b for b in range(128) if not chr(b).isalnum())
_ASCII_ALNUM_ELSE_SPACE = bytes(b if b < 128 and chr(b).isalnum() else 32 for b in range(256))


_ASCII_RUNS_RE = re.compile(r"[\x00-\x7f]+")


def ascii_alnum_count(text: str) -> int:
    """Letters and digits of an ASCII ``text`` (``len(re.findall(r"[^\\W_]", text))``)."""
    return len(text.encode("ascii").translate(None, _ASCII_NOT_ALNUM))


def split_ascii(text: str) -> tuple[bytes, str]:
    """(the ASCII characters of ``text`` as bytes, the other characters), each in order.

    Counting over the two parts separately is how a mostly-English text with a few curly quotes
    keeps most of the ASCII speed: the bytes part gets byte tables, only the rest goes character
    by character.
    """
    return text.encode("ascii", "ignore"), _ASCII_RUNS_RE.sub("", text)


def alnum_count(text: str) -> int:
    """``len(re.findall(r"[^\\W_]", text))``: characters ``str.isalnum`` says are letters or digits."""
    if text.isascii():
        return ascii_alnum_count(text)
    head, rest = split_ascii(text)
    return len(head.translate(None, _ASCII_NOT_ALNUM)) + sum(map(str.isalnum, rest))


def ascii_words(text: str) -> list[bytes]:
    """Runs of letters and digits of an ASCII ``text`` (``re.findall(r"[^\\W_]+", text)``, as bytes)."""
    return text.encode("ascii").translate(_ASCII_ALNUM_ELSE_SPACE).split()


def split_branches(pattern: str) -> list[str]:
    """The top-level alternatives of ``pattern`` (``a|b(c|d)`` → ``["a", "b(c|d)"]``)."""
    out, depth, in_class, start, i = [], 0, False, 0, 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "\\":
            i += 2
            continue
        if in_class:
            if ch == "]":
                in_class = False
        elif ch == "[":
            in_class = True
            # a "]" right after "[" or "[^" is a literal member
            if pattern[i + 1 : i + 2] == "^":
                i += 1
            if pattern[i + 1 : i + 2] == "]":
                i += 1
        elif ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        elif ch == "|" and depth == 0:
            out.append(pattern[start:i])
            start = i + 1
        i += 1
    out.append(pattern[start:])
    return out


def required_literals(pattern: str, flags: int = 0) -> frozenset[str] | None:
    """Literal strings of which every match of ``pattern`` contains at least one (None: none known)."""
    try:
        parsed = sre_parse.parse(pattern, flags)
    except Exception:  # pragma: no cover - the pattern compiled, so this does not happen
        return None
    icase = bool(parsed.state.flags & re.IGNORECASE)
    return _need(list(parsed), icase)


_C = sre_constants


def _need(items: list[Any], icase: bool) -> frozenset[str] | None:
    candidates: list[frozenset[str]] = []
    run: list[str] = []

    def flush() -> None:
        if run:
            candidates.append(frozenset(["".join(run)]))
            run.clear()

    for op, av in items:
        if op is _C.LITERAL:
            ch = chr(av)
            if icase and ch.isascii():
                run.append(ch.lower())
            elif icase and (ch.lower() != ch or ch.upper() != ch):
                flush()  # a cased non-ASCII letter: its case partners are not folded
            else:
                run.append(ch)
        elif op is _C.AT or op in (_C.ASSERT, _C.ASSERT_NOT):
            continue  # zero-width: the literals on both sides stay adjacent in the text
        elif op is _C.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            flush()
            if add_flags or del_flags:
                continue
            need = _need(list(sub), icase)
            if need:
                candidates.append(need)
        elif op is _C.BRANCH:
            flush()
            needs = [_need(list(b), icase) for b in av[1]]
            if all(needs):
                candidates.append(frozenset().union(*needs))  # type: ignore[arg-type]
        elif op in (_C.MAX_REPEAT, _C.MIN_REPEAT, getattr(_C, "POSSESSIVE_REPEAT", None)):
            lo, _hi, sub = av
            flush()
            if lo >= 1:
                need = _need(list(sub), icase)
                if need:
                    candidates.append(need)
        else:
            flush()  # a class, a wildcard, a backreference: the literal run ends here
    flush()
    candidates = [c for c in candidates if all(c)]  # an empty string would match anywhere
    if not candidates:
        return None
    # the most selective: longest shortest string, then fewest strings
    return max(candidates, key=lambda c: (min(map(len, c)), -len(c)))


class Prefiltered:
    """A compiled regex with a literal prefilter; ``search``/``match``/``fullmatch``/``findall``/
    ``finditer`` behave exactly like the compiled pattern's."""

    def __init__(self, pattern: str, flags: int = 0):
        self.regex = re.compile(pattern, flags)
        self.pattern = pattern
        self.flags = self.regex.flags
        self._icase = bool(self.flags & re.IGNORECASE)
        # sub-alternations renumber groups: only patterns without groups run partial
        self._branches = split_branches(pattern) if self.regex.groups == 0 else [pattern]
        if len(self._branches) > 1 and any(not b for b in self._branches):
            self._branches = [pattern]  # an empty alternative matches everywhere
        needs = [required_literals(b, flags) for b in self._branches]
        self._always = tuple(i for i, n in enumerate(needs) if n is None)
        self._anchored = tuple((i, tuple(sorted(n, key=len, reverse=True))) for i, n in enumerate(needs) if n)
        self._subsets: dict[tuple[int, ...], re.Pattern[str]] = {}

    def __repr__(self) -> str:
        return f"Prefiltered({self.pattern!r}, {self.flags!r})"

    def candidate(self, text: str) -> re.Pattern[str] | None:
        """The regex to run on ``text`` (the full one or its possible branches), None when none can match."""
        if not self._anchored:
            return self.regex
        hay = fold(text) if self._icase else text
        possible = [i for i, lits in self._anchored if _any_in(lits, hay)]
        if len(possible) == len(self._anchored):
            return self.regex
        if not possible and not self._always:
            return None
        key = tuple(sorted(self._always + tuple(possible)))
        rx = self._subsets.get(key)
        if rx is None:
            if len(self._subsets) >= _MAX_SUBSETS:
                return self.regex
            rx = self._subsets[key] = re.compile("|".join(self._branches[i] for i in key), self.flags)
        return rx

    def search(self, text: str) -> re.Match[str] | None:
        rx = self.candidate(text)
        return None if rx is None else rx.search(text)

    def match(self, text: str) -> re.Match[str] | None:
        rx = self.candidate(text)
        return None if rx is None else rx.match(text)

    def fullmatch(self, text: str) -> re.Match[str] | None:
        rx = self.candidate(text)
        return None if rx is None else rx.fullmatch(text)

    def findall(self, text: str) -> list[Any]:
        rx = self.candidate(text)
        return [] if rx is None else rx.findall(text)

    def finditer(self, text: str) -> Any:
        rx = self.candidate(text)
        return iter(()) if rx is None else rx.finditer(text)


def _any_in(literals: tuple[str, ...], text: str) -> bool:
    for lit in literals:
        if lit in text:
            return True
    return False


def compile(pattern: str, flags: int = 0) -> Prefiltered:  # noqa: A001 - mirrors re.compile
    """``re.compile`` with a literal prefilter (see :class:`Prefiltered`)."""
    return Prefiltered(pattern, flags)


# --------------------------------------------------------------------------------------------------
# whole batches through RE2 (pyarrow.compute): one linear pass per pattern for every row


class _Untranslatable(Exception):
    """A construct RE2 lacks (lookaround, backreference) or reads differently (Unicode \\w, \\b)."""


@lru_cache(maxsize=1)
def _unicode_class(category: str) -> str:
    """Python's Unicode ``\\d`` or ``\\s`` as explicit ranges (so RE2 reads them by Python's tables)."""
    test = {"digit": str.isdecimal, "space": str.isspace}[category]
    ranges, start, prev = [], None, None
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF or not test(chr(cp)):
            continue
        if prev is not None and cp == prev + 1:
            prev = cp
            continue
        if start is not None:
            ranges.append((start, prev))
        start = prev = cp
    if start is not None:
        ranges.append((start, prev))
    return "".join(_class_char(lo) if lo == hi else f"{_class_char(lo)}-{_class_char(hi)}" for lo, hi in ranges)


def _class_char(cp: int) -> str:
    ch = chr(cp)
    if ch.isascii() and (ch.isalnum() or ch in " !\"#$%&'()*+,./:;<=>?@_`{|}~"):
        return ch
    return f"\\x{{{cp:x}}}"


def _lit(cp: int) -> str:
    ch = chr(cp)
    if ch.isascii() and (ch.isalnum() or ch in " _"):
        return ch
    if ch.isascii() and ch.isprintable():
        return "\\" + ch
    return f"\\x{{{cp:x}}}"


def _cased(cp: int) -> bool:
    ch = chr(cp)
    return ch.lower() != ch or ch.upper() != ch


class _Re2Emitter:
    def __init__(self, flags: int):
        self.ascii = bool(flags & re.ASCII)
        self.icase = bool(flags & re.IGNORECASE)
        self.multiline = bool(flags & re.MULTILINE)
        self.dotall = bool(flags & re.DOTALL)
        #: emitted an assertion that looks at the character before (^, \A, \b): pyarrow counts by
        #: consuming the text, so after a match such a pattern sees a fresh start, not its left context
        self.looks_back = False
        #: a long window after a character class ("\\d.{0,80}"): RE2 gets slower than Python on it
        self.slow = False

    def seq(self, items: list[Any]) -> str:
        out = []
        prev = None  # the last item that consumes a character
        for i, (op, av) in enumerate(items):
            if op is _C.AT and av is _C.AT_END and not self.multiline and i != len(items) - 1:
                raise _Untranslatable("$ before more pattern")
            if (
                op in (_C.MAX_REPEAT, _C.MIN_REPEAT)
                and av[1] is not _C.MAXREPEAT
                and av[1] > 60
                and [o for o, _ in av[2]] == [_C.ANY]
                and prev in (_C.IN, _C.ANY)
            ):
                # "\d.{0,80}": every digit starts a window RE2's automaton must follow (measured: slower
                # than Python on such a branch); a literal before the window keeps it cheap
                self.slow = True
            out.append(self.item(op, av))
            if op is not _C.AT:
                prev = op
        return "".join(out)

    def item(self, op: Any, av: Any) -> str:
        if op is _C.LITERAL:
            if av in _MAPPED_AWAY:
                raise _Untranslatable("a character the RE2 input maps away")
            if self.icase and av > 127 and _cased(av):
                return f"(?-i:{_lit(av)})"
            return _lit(av)
        if op is _C.NOT_LITERAL:
            if av in _MAPPED_AWAY or (self.icase and av > 127 and _cased(av)):
                raise _Untranslatable("negated cased non-ASCII literal")
            return f"[^{_class_char(av)}]"
        if op is _C.ANY:
            return "(?s:.)" if self.dotall else "."
        if op is _C.IN:
            return self.klass(av)
        if op is _C.AT:
            return self.at(av)
        if op is _C.BRANCH:
            return "(?:" + "|".join(self.seq(list(b)) for b in av[1]) + ")"
        if op is _C.SUBPATTERN:
            _group, add_flags, del_flags, sub = av
            if add_flags or del_flags:
                raise _Untranslatable("inline flags")
            return "(?:" + self.seq(list(sub)) + ")"
        if op in (_C.MAX_REPEAT, _C.MIN_REPEAT):
            lo, hi, sub = av
            if lo > 1000 or (hi is not _C.MAXREPEAT and hi > 1000):
                raise _Untranslatable("repeat count over RE2's 1000")
            body = "(?:" + self.seq(list(sub)) + ")"
            if hi is _C.MAXREPEAT:
                rep = "*" if lo == 0 else "+" if lo == 1 else f"{{{lo},}}"
            else:
                rep = "?" if (lo, hi) == (0, 1) else f"{{{lo}}}" if lo == hi else f"{{{lo},{hi}}}"
            return body + rep + ("?" if op is _C.MIN_REPEAT else "")
        raise _Untranslatable(str(op))

    def at(self, av: Any) -> str:
        if av not in (_C.AT_END, _C.AT_END_STRING):
            self.looks_back = True
        if av is _C.AT_BEGINNING:
            return "(?m:^)" if self.multiline else "\\A"
        if av is _C.AT_END:
            # Python's $: the end, or before a newline that ends the text
            return "(?m:$)" if self.multiline else "(?:\\n?\\z)"
        if av is _C.AT_BEGINNING_STRING:
            return "\\A"
        if av is _C.AT_END_STRING:
            return "\\z"
        if av in (_C.AT_BOUNDARY, _C.AT_NON_BOUNDARY) and self.ascii:
            return "\\b" if av is _C.AT_BOUNDARY else "\\B"
        raise _Untranslatable(str(av))

    def klass(self, items: list[Any]) -> str:
        members = [(op, av) for op, av in items if op is not _C.NEGATE]
        negate = len(members) < len(items)
        flip = {_C.CATEGORY_NOT_DIGIT: _C.CATEGORY_DIGIT, _C.CATEGORY_NOT_SPACE: _C.CATEGORY_SPACE}
        if not self.ascii and len(members) == 1 and members[0][0] is _C.CATEGORY and members[0][1] in flip:
            # \S or \D alone: the complement of the spelled-out class
            return "[" + ("" if negate else "^") + self.category(flip[members[0][1]]) + "]"
        neg, parts = False, []
        for op, av in items:
            if op is _C.NEGATE:
                neg = True
            elif op is _C.LITERAL:
                if av in _MAPPED_AWAY or (self.icase and av > 127 and _cased(av)):
                    raise _Untranslatable("cased non-ASCII class member")
                parts.append(_class_char(av))
            elif op is _C.RANGE:
                lo, hi = av
                if any(c in _MAPPED_AWAY for c in range(lo, hi + 1)):
                    raise _Untranslatable("a range holding a character the RE2 input maps away")
                if self.icase and hi > 127 and any(_cased(c) for c in range(max(lo, 128), hi + 1)):
                    raise _Untranslatable("cased non-ASCII range")
                parts.append(f"{_class_char(lo)}-{_class_char(hi)}")
            elif op is _C.CATEGORY:
                parts.append(self.category(av))
            else:
                raise _Untranslatable(str(op))
        return "[" + ("^" if neg else "") + "".join(parts) + "]"

    def category(self, av: Any) -> str:
        if self.ascii:  # RE2's POSIX classes are ASCII: [:space:] includes \v as Python's \s does
            names = {
                _C.CATEGORY_DIGIT: "[:digit:]", _C.CATEGORY_NOT_DIGIT: "[:^digit:]",
                _C.CATEGORY_SPACE: "[:space:]", _C.CATEGORY_NOT_SPACE: "[:^space:]",
                _C.CATEGORY_WORD: "[:word:]", _C.CATEGORY_NOT_WORD: "[:^word:]",
            }
            if av in names:
                return names[av]
        elif av is _C.CATEGORY_DIGIT:
            return _unicode_class("digit")
        elif av is _C.CATEGORY_SPACE:
            return _unicode_class("space")
        raise _Untranslatable(str(av))


#: characters the RE2 input replaces by NUL: RE2 folds them to k and s under (?i), Python's ASCII mode does not
_MAPPED_AWAY = frozenset({0x212A, 0x17F})
_MAP_AWAY_TABLE = {cp: 0 for cp in _MAPPED_AWAY}
_MAP_AWAY_RE = re.compile("[\u212a\u017f]")


def to_re2(pattern: str, flags: int = 0) -> str | None:
    """``pattern`` in RE2 syntax with Python's meaning (on text prepared by :class:`TextColumn`), or None.

    None when the pattern needs what RE2 lacks (lookaround, backreferences) or reads differently
    (Unicode-mode ``\\w``/``\\b``, Unicode case folding).
    """
    translated = _translate(pattern, flags)
    return None if translated is None else translated[0]


def _translate(pattern: str, flags: int) -> tuple[str, bool, bool] | None:
    """(RE2 pattern, whether it looks back at the character before a position, whether RE2 is slow
    on it), or None."""
    parsed = sre_parse.parse(pattern, flags)
    fl = parsed.state.flags
    if fl & re.IGNORECASE and not fl & re.ASCII:
        return None
    emitter = _Re2Emitter(fl)
    try:
        body = emitter.seq(list(parsed))
    except _Untranslatable:
        return None
    return ("(?i)" if fl & re.IGNORECASE else "") + body, emitter.looks_back, emitter.slow


#: below this many rows a batch is matched in Python (building arrow arrays and calling RE2 per
#: pattern costs more than it saves on a handful of texts)
_MIN_RE2_ROWS = 16


class TextColumn:
    """One text per row of a batch, as Python strings and (built once, shared by every pattern) an arrow array."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self._array: Any = None
        self._built = False

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def array(self) -> Any:
        """The RE2 input (None when a text cannot be UTF-8, e.g. a lone surrogate: Python decides then)."""
        if not self._built:
            self._built = True
            import pyarrow as pa

            texts = [_MAP_AWAY_RE.sub("\x00", t) if not t.isascii() and _MAP_AWAY_RE.search(t) else t
                     for t in self.texts]
            try:
                self._array = pa.array(texts, pa.string())
            except (UnicodeEncodeError, pa.ArrowException):
                self._array = None
        return self._array


class BatchPattern:
    """A regex run over a :class:`TextColumn` at once: RE2 for what translates, Python for the rest.

    ``search`` and ``count`` (``len(findall)``) give exactly what the Python pattern gives per row.
    Branches RE2 cannot run stay in Python (prefiltered) and only see the rows RE2 did not match.
    """

    def __init__(self, pattern: str, flags: int = 0):
        self.python = Prefiltered(pattern, flags)
        self.pattern, self.flags = pattern, self.python.flags
        # branches RE2 runs (over the whole batch) and branches Python runs (on the rows RE2 did not match)
        branches = split_branches(pattern) if self.python.regex.groups == 0 else [pattern]
        done = [(b, _translate(b, flags)) for b in branches]
        fast = [b for b, tr in done if tr is not None and not tr[2]]
        rest = [b for b, tr in done if tr is None or tr[2]]
        whole = _translate(pattern, flags) if not rest else None
        self.re2 = whole[0] if whole is not None else None
        # pyarrow counts by consuming the text: exact only for patterns that never look back
        self._count_re2 = whole[0] if whole is not None and not whole[1] else None
        self._search_re2: str | None = self.re2
        self._search_rest: Prefiltered | None = None
        if rest and fast:
            translated = _translate("|".join(fast), flags)
            self._search_re2 = translated[0] if translated is not None else None
            self._search_rest = Prefiltered("|".join(rest), flags) if translated is not None else None

    def search(self, column: TextColumn) -> Any:
        """A boolean array: does the pattern occur in each text?"""
        import numpy as np
        import pyarrow.compute as pc

        arr = column.array if len(column) >= _MIN_RE2_ROWS else None
        if arr is None or self._search_re2 is None:
            return np.fromiter((self.python.search(t) is not None for t in column.texts), bool, len(column))
        hits = pc.match_substring_regex(arr, pattern=self._search_re2).to_numpy(zero_copy_only=False)
        if self._search_rest is not None:
            hits = hits.copy()
            for i in np.flatnonzero(~hits):
                hits[i] = self._search_rest.search(column.texts[i]) is not None
        return hits

    def count(self, column: TextColumn) -> Any:
        """An int array: how many non-overlapping matches (``len(findall)``) in each text."""
        import numpy as np
        import pyarrow.compute as pc

        arr = column.array if len(column) >= _MIN_RE2_ROWS else None
        if arr is None or self._search_re2 is None:
            return np.fromiter((len(self.python.findall(t)) for t in column.texts), np.int64, len(column))
        if self._count_re2 is not None:
            return pc.count_substring_regex(arr, pattern=self._count_re2).to_numpy(zero_copy_only=False).astype(
                np.int64
            )
        # RE2 finds the rows with a match (no count there: Python counts them)
        counts = np.zeros(len(column), np.int64)
        for i in np.flatnonzero(self.search(column)):
            counts[i] = len(self.python.findall(column.texts[i]))
        return counts


__all__ = [
    "CASE_PARTNERS",
    "BatchPattern",
    "Prefiltered",
    "TextColumn",
    "alnum_count",
    "ascii_alnum_count",
    "ascii_words",
    "compile",
    "fold",
    "required_literals",
    "split_ascii",
    "split_branches",
    "to_re2",
]
