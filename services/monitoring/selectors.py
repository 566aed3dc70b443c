"""Prometheus series selectors, as `match[]` takes them: `name{label="v", l2=~"re", l3!="x", l4!~"re"}`,
`{__name__=~"cpu.*"}`, and Prometheus 3's quoted names (`{"cpu.usage", "a.b"="v"}`).

Semantics are Prometheus': a missing label has the value "", regular expressions are fully
anchored, and a selector needs at least one matcher that does not match the empty string.
Strings take Go's escapes in "..." and '...', none in `...`. Regular expressions are compiled
with Python's `re`, which reads the RE2 syntax Prometheus users write (classes, alternation,
repetition, `(?i)`); RE2-only classes such as `\\pL` are refused with the reason.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from libs.errors import InvalidArgument

FIELD = "match[]"
NAME_LABEL = "__name__"
METRIC_NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
OPERATORS = ("=~", "!~", "!=", "=")  # longest first
MAX_SELECTORS = 100
MAX_SELECTOR_CHARS = 4096
_SIMPLE_ESCAPES = {
    "a": "\a",
    "b": "\b",
    "f": "\f",
    "n": "\n",
    "r": "\r",
    "t": "\t",
    "v": "\v",
    "\\": "\\",
    '"': '"',
    "'": "'",
}


@dataclass(frozen=True)
class Matcher:
    """One label matcher: label, operator (=, !=, =~, !~) and operand."""

    label: str
    op: str
    value: str
    pattern: re.Pattern[str] | None = None

    def matches(self, value: str) -> bool:
        """Whether a label value (\"\" when the label is missing) satisfies the matcher."""
        if self.op == "=":
            return value == self.value
        if self.op == "!=":
            return value != self.value
        hit = self.pattern.fullmatch(value) is not None
        return hit if self.op == "=~" else not hit


@dataclass(frozen=True)
class Selector:
    """A parsed series selector: the text it came from and its matchers (the name is `__name__`)."""

    text: str
    matchers: tuple[Matcher, ...]

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether a series with these labels (its name under `__name__`) is selected."""
        return all(m.matches(labels.get(m.label, "")) for m in self.matchers)

    def equal_values(self, label: str) -> frozenset[str] | None:
        """The one value `label` must equal, as a set, when an `=` matcher pins it; else None."""
        for m in self.matchers:
            if m.label == label and m.op == "=":
                return frozenset({m.value})
        return None


class _Parser:
    """A small recursive-descent parser over one selector's text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, reason: str) -> InvalidArgument:
        return InvalidArgument(f"{self.text!r}: {reason} (at character {self.pos + 1})", FIELD)

    def skip_space(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def peek(self) -> str:
        self.skip_space()
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def identifier(self, pattern: re.Pattern[str]) -> str | None:
        self.skip_space()
        found = pattern.match(self.text, self.pos)
        if found is None:
            return None
        self.pos = found.end()
        return found.group()

    def string(self) -> str:
        quote = self.peek()
        if quote not in ('"', "'", "`"):
            raise self.fail("expected a quoted string")
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            ch = self.text[self.pos]
            self.pos += 1
            if ch == quote:
                return "".join(out)
            if ch == "\\" and quote != "`":
                out.append(self._escape())
            elif ch == "\n" and quote != "`":
                raise self.fail("a quoted string cannot span lines")
            else:
                out.append(ch)
        raise self.fail("unterminated quoted string")

    def _escape(self) -> str:
        if self.pos >= len(self.text):
            raise self.fail("unterminated escape sequence")
        ch = self.text[self.pos]
        self.pos += 1
        if ch in _SIMPLE_ESCAPES:
            return _SIMPLE_ESCAPES[ch]
        digits = {"x": 2, "u": 4, "U": 8}.get(ch)
        if digits is not None:
            code = self.text[self.pos : self.pos + digits]
            if len(code) != digits or not all(c in "0123456789abcdefABCDEF" for c in code):
                raise self.fail(f"\\{ch} needs {digits} hexadecimal digits")
            self.pos += digits
            return chr(int(code, 16))
        if ch in "01234567":
            code = self.text[self.pos - 1 : self.pos + 2]
            if len(code) != 3 or not all(c in "01234567" for c in code):
                raise self.fail("an octal escape needs 3 digits")
            self.pos += 2
            return chr(int(code, 8))
        raise self.fail(f"unknown escape sequence \\{ch}")

    def label_name(self) -> str:
        if self.peek() in ('"', "'", "`"):
            return self.string()
        name = self.identifier(LABEL_NAME)
        if name is None:
            raise self.fail("expected a label name")
        return name

    def operator(self) -> str | None:
        self.skip_space()
        for op in OPERATORS:
            if self.text.startswith(op, self.pos):
                self.pos += len(op)
                return op
        return None


def _matcher(label: str, op: str, value: str, parser: _Parser) -> Matcher:
    if op in ("=~", "!~"):
        try:
            # fullmatch anchors the whole pattern, alternations included, as Prometheus does.
            return Matcher(label, op, value, re.compile(value, re.DOTALL))
        except re.error as exc:
            raise parser.fail(f"{value!r} is not a valid regular expression for {label}: {exc}") from None
    return Matcher(label, op, value)


def parse_selector(text: str) -> Selector:
    """Parse one series selector; InvalidArgument naming `match[]` and the reason otherwise."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise InvalidArgument(f"a selector may be at most {MAX_SELECTOR_CHARS} characters", FIELD)
    p = _Parser(text)
    matchers: list[Matcher] = []
    name = p.identifier(METRIC_NAME)
    if name is not None:
        matchers.append(Matcher(NAME_LABEL, "=", name))
    if p.peek() == "{":
        p.pos += 1
        while p.peek() != "}":
            if not p.peek():
                raise p.fail("unterminated label matchers: expected '}'")
            quoted = p.peek() in ('"', "'", "`")
            label = p.label_name()
            op = p.operator()
            if op is None:
                if not quoted or p.peek() not in (",", "}"):
                    raise p.fail(f"expected an operator (=, !=, =~, !~) after {label!r}")
                # Prometheus 3: a lone quoted string is the metric name.
                if any(m.label == NAME_LABEL for m in matchers):
                    raise p.fail("the metric name is given twice")
                matchers.append(Matcher(NAME_LABEL, "=", label))
            else:
                if label == NAME_LABEL and name is not None:
                    raise p.fail("the metric name is given twice")
                matchers.append(_matcher(label, op, p.string(), p))
            if p.peek() == ",":
                p.pos += 1
            elif not p.peek():
                raise p.fail("unterminated label matchers: expected '}'")
            elif p.peek() != "}":
                raise p.fail("expected ',' or '}' after a label matcher")
        p.pos += 1
    elif name is None:
        raise p.fail("expected a metric name or '{'")
    if p.peek():
        raise p.fail(f"unexpected {p.peek()!r} after the selector")
    if not any(not m.matches("") for m in matchers):
        raise InvalidArgument(
            f"{text!r}: a selector needs at least one matcher that does not match the empty string "
            '(a metric name, or a label matcher such as job="x")',
            FIELD,
        )
    return Selector(text, tuple(matchers))


def parse_selectors(texts: Sequence[str]) -> tuple[Selector, ...]:
    """Parse every `match[]` value; at most MAX_SELECTORS of them."""
    if len(texts) > MAX_SELECTORS:
        raise InvalidArgument(f"at most {MAX_SELECTORS} selectors are accepted, got {len(texts)}", FIELD)
    return tuple(parse_selector(t) for t in texts)
