"""A cost guard for the filters and SQL expressions clients send (search filters, deletes, count_rows,
update values, add_columns expressions, projections).

Lance evaluates them with DataFusion, which has no per-query deadline or memory bound we can set from
pylance 14 (`scanner()`, `to_table()` and `count_rows()` take no memory pool size or timeout, and a
scalar function's output is not charged to DataFusion's memory pool at all). So one expression could make
a process allocate without limit: `lpad(s, 2000000000, 'x')` grew an executor by 1.5 GB,
`repeat(s, 50000000)` aborted executors and the query node with a failed 114 GB allocation.

The guard is the appliance's instead, as PostgreSQL's `work_mem` would be for this case: a small tokenizer
(string literals with '' escapes, quoted identifiers, numbers, identifiers, punctuation) and an allowlist
of the functions an expression may call, each of which produces at most a constant factor more data than
it reads. Functions that build values of a size an argument chooses are refused (repeat, array_repeat,
range, ...) or have that argument bounded by a literal check (lpad/rpad: a literal length of at most
`limits.MAX_FILTER_SIZE_ARG`); replace/regexp_replace take literal patterns whose replacement grows a
value at most 4x. A refused expression is a 400 `limit_exceeded` naming the function or the limit, raised
before Lance sees it. Pure Python: a 3,000-character filter is checked in a few milliseconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from appliance import limits
from appliance.errors import InvalidInput, LimitExceeded

# Functions whose output is at most a constant factor of their input (per row), by family.
_MATH = """abs acos acosh asin asinh atan atan2 atanh cbrt ceil cos cosh cot degrees exp factorial floor gcd isnan
iszero lcm ln log log10 log2 nanvl pi power pow radians random round signum sin sinh sqrt tan tanh trunc
greatest least"""
_STRING = """ascii bit_length btrim char_length character_length chr concat concat_ws contains ends_with find_in_set
initcap instr left length lower ltrim md5 octet_length position reverse right rtrim sha224 sha256 sha384
sha512 split_part starts_with strpos substr substring substr_index substring_index to_hex translate trim upper
regexp_like regexp_match regexp_count decode digest uuid string_to_array contains_tokens"""
_CONDITIONAL = "coalesce nullif nvl nvl2 ifnull"
_TIME = """now current_date current_time today date_part datepart date_trunc datetrunc date_bin extract to_date
to_char to_timestamp to_timestamp_seconds to_timestamp_millis to_timestamp_micros to_timestamp_nanos
to_unixtime from_unixtime make_date"""
_NESTED = """array_length array_has array_has_all array_has_any array_contains array_position array_element
array_extract array_ndims array_dims array_empty empty cardinality list_has list_has_all list_has_any
list_contains list_length list_element list_extract get_field make_array named_struct struct array_distinct
array_sort array_min array_max json_extract json_exists json_get json_get_string
json_get_int json_get_float json_get_bool json_array_contains json_array_length"""
ALLOWED_FUNCTIONS = frozenset((_MATH + " " + _STRING + " " + _CONDITIONAL + " " + _TIME + " " + _NESTED).split())

# Functions that build values whose size an argument chooses: position of that argument.
SIZE_ARGUMENT = {"lpad": 1, "rpad": 1}
# Functions whose replacement can grow a value: (position of the pattern, position of the replacement).
REPLACING = {"replace": (1, 2), "regexp_replace": (1, 2)}
REPLACE_GROWTH = 4
# Functions that grow a value by a factor (replace: REPLACE_GROWTH, encode: 2); nested, they would multiply.
GROWING = frozenset({*REPLACING, "encode"})
# Functions (and `||`, and [a, b] array literals) whose output holds every operand: each operand counts
# against limits.MAX_FILTER_FANOUT, so `s || s || ...` or concat(s, s, ...) cannot copy a column 800 times.
CONCATENATING = frozenset({"concat", "concat_ws", "make_array", "array", "struct", "named_struct"})
CONCAT_WS_SEPARATOR = 64
# Named refusals, so the client learns why rather than "not allowed".
REFUSED = {
    "repeat": "builds a value of a size its argument chooses",
    "array_repeat": "builds a value of a size its argument chooses",
    "list_repeat": "builds a value of a size its argument chooses",
    "range": "builds a value of a size its argument chooses",
    "generate_series": "builds a value of a size its argument chooses",
    "array_resize": "builds a value of a size its argument chooses",
    "list_resize": "builds a value of a size its argument chooses",
    "array_fill": "builds a value of a size its argument chooses",
    "levenshtein": "costs time quadratic in its arguments' length",
    "overlay": "is not supported in filters",
    "array_to_string": "repeats its separator once per element",
}
# Keywords that may precede "(" without being a function call.
_KEYWORDS = frozenset("""and or not in is null true false like ilike similar between case when then else end as
escape distinct from cast try_cast interval""".split())
_CAST_TYPES = frozenset("""int integer bigint smallint tinyint int2 int4 int8 signed unsigned float real double
decimal numeric varchar string text char boolean bool date timestamp time precision""".split())


_ALLOWED = "allowed functions: " + ", ".join(sorted(ALLOWED_FUNCTIONS | {"lpad", "rpad", "replace", "regexp_replace",
                                                                       "encode", "arrow_cast", "cast", "try_cast"}))


@dataclass(frozen=True)
class Token:
    kind: str  # "string", "ident", "quoted", "number", "punct"
    text: str  # a string literal's value (unquoted, '' undone), an identifier, a number, punctuation
    at: int


_SPACE = re.compile(r"\s+")
_NUMBER = re.compile(r"(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[^\W\d]\w*")
_PUNCT = re.compile(r"<>|!=|<=|>=|\|\||::|->>|->|@>|<@|[^\w\s'\"`]")


def tokenize(text: str) -> list[Token]:
    """Tokens of an SQL expression; InvalidInput for an unterminated string or quoted identifier."""
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        space = _SPACE.match(text, i)
        if space:
            i = space.end()
            continue
        if text.startswith("--", i) or text.startswith("/*", i):
            raise InvalidInput("comments are not allowed in a filter")
        if ch in "'\"`":  # a string literal ('...'), or a quoted identifier ("..." or `...`)
            j, parts = i + 1, []
            while True:
                end = text.find(ch, j)
                if end < 0:
                    raise InvalidInput(f"unterminated {'string' if ch == chr(39) else 'quoted identifier'} "
                                       f"at character {i} of the filter")
                parts.append(text[j:end])
                if text.startswith(ch * 2, end):  # a doubled quote stands for one
                    parts.append(ch)
                    j = end + 2
                    continue
                break
            tokens.append(Token("string" if ch == "'" else "quoted", "".join(parts), i))
            i = end + 1
            continue
        for kind, pattern in (("number", _NUMBER), ("ident", _IDENT), ("punct", _PUNCT)):
            match = pattern.match(text, i)
            if match:
                tokens.append(Token(kind, match.group(), i))
                i = match.end()
                break
        else:  # pragma: no cover - _PUNCT matches any other single character
            raise InvalidInput(f"unexpected character {ch!r} in the filter")
    return tokens


def check_expression(text: str, what: str = "filter") -> None:
    """Refuse an expression that could cost more than a query may (LimitExceeded naming the function or
    the limit), or that cannot be tokenized (InvalidInput). Whether it parses and type-checks is Lance's to
    say: this only guards the cost."""
    if len(text) > limits.MAX_FILTER_CHARS:
        raise LimitExceeded(f"{what} is longer than {limits.MAX_FILTER_CHARS} characters",
                            f"limit: {limits.MAX_FILTER_CHARS} characters")
    tokens = tokenize(text)
    depth = fanout = growing = 0
    for index, token in enumerate(tokens):
        previous = tokens[index - 1] if index else None
        if token.kind == "punct" and token.text in "([":
            depth += 1
            if depth > limits.MAX_FILTER_DEPTH:
                raise LimitExceeded(f"{what} nests parentheses deeper than {limits.MAX_FILTER_DEPTH}",
                                    f"limit: depth <= {limits.MAX_FILTER_DEPTH}")
            if token.text == "[" and (previous is None or previous.kind == "punct" and previous.text not in ")]"):
                fanout += len(_arguments(tokens, index))  # an array literal [a, b, ...], not s['field']
        elif token.kind == "punct" and token.text in ")]":
            depth -= 1
        elif token.kind == "punct" and token.text == "||":
            fanout += 1 if fanout else 2
        if fanout > limits.MAX_FILTER_FANOUT:
            raise LimitExceeded(f"{what} concatenates more than {limits.MAX_FILTER_FANOUT} values",
                                f"limit: {limits.MAX_FILTER_FANOUT} operands of ||, concat() and array builders")
        if token.kind not in ("ident", "quoted"):
            continue
        following = tokens[index + 1] if index + 1 < len(tokens) else None
        if following is None or following.kind != "punct" or following.text != "(":
            continue  # a column, a keyword or a type name, not a call
        name = token.text.lower()
        if previous is not None and previous.kind == "punct" and previous.text == ".":
            raise LimitExceeded(f"method call '.{token.text}(' is not allowed in a {what}")
        if previous is not None and (previous.text == "::" or previous.text.lower() == "as"):
            sizes = [float(t.text) for arg in _arguments(tokens, index + 1) for t in arg if t.kind == "number"]
            if name not in _CAST_TYPES or any(size > 76 for size in sizes):
                raise LimitExceeded(f"the type {token.text}(...) is not allowed in a {what}",
                                    f"allowed types: {', '.join(sorted(_CAST_TYPES))}")
            continue  # a parameterised type of a cast: DECIMAL(10, 2), VARCHAR(20)
        if token.kind == "ident" and name in ("cast", "try_cast"):
            _check_cast(tokens, index + 1, what)
            continue
        if token.kind == "ident" and name in _KEYWORDS:
            continue
        if name in REFUSED:
            raise LimitExceeded(f"function {name}() is not allowed in a {what}: it {REFUSED[name]}", _ALLOWED)
        args = _arguments(tokens, index + 1)
        if name in SIZE_ARGUMENT:
            _check_size_argument(name, args, SIZE_ARGUMENT[name], what)
        elif name in REPLACING:
            _check_replacement(name, args, *REPLACING[name], what=what)
        elif name == "arrow_cast":
            _check_arrow_cast(args, what)
        elif name not in ALLOWED_FUNCTIONS and name not in GROWING:
            raise LimitExceeded(f"invalid {what}: function {name}() is not allowed in a {what}", _ALLOWED)
        if name in GROWING:
            growing += 1
            if growing > limits.MAX_FILTER_GROWING:
                raise LimitExceeded(f"{what} calls replace(), regexp_replace() or encode() more than "
                                    f"{limits.MAX_FILTER_GROWING} times", "each may grow a value a few times over")
        if name in CONCATENATING:
            fanout += len(args)
            if name == "concat_ws":
                separator = _literal(args[0], "string") if args else None
                if separator is None or len(separator) > CONCAT_WS_SEPARATOR:
                    raise LimitExceeded(f"concat_ws() takes a string literal of at most {CONCAT_WS_SEPARATOR} "
                                        f"characters as its separator in a {what}")
        if fanout > limits.MAX_FILTER_FANOUT:
            raise LimitExceeded(f"{what} concatenates more than {limits.MAX_FILTER_FANOUT} values",
                                f"limit: {limits.MAX_FILTER_FANOUT} operands of ||, concat() and array builders")


def _arguments(tokens: list[Token], open_at: int) -> list[list[Token]]:
    """The arguments (as token lists) of the call whose "(" is tokens[open_at]."""
    args: list[list[Token]] = [[]]
    depth = 0
    for token in tokens[open_at:]:
        if token.kind == "punct" and token.text in "([":
            depth += 1
            if depth == 1:
                continue
        elif token.kind == "punct" and token.text in ")]":
            depth -= 1
            if depth == 0:
                break
        elif depth == 1 and token.kind == "punct" and token.text == ",":
            args.append([])
            continue
        args[-1].append(token)
    return args if args != [[]] else []


def _literal(arg: list[Token], kind: str) -> str | None:
    """The literal an argument consists of (a number may carry a sign), or None."""
    if len(arg) == 1 and arg[0].kind == kind:
        return arg[0].text
    if kind == "number" and len(arg) == 2 and arg[0].text in "+-" and arg[1].kind == "number":
        return arg[0].text + arg[1].text
    return None


def _check_size_argument(name: str, args: list[list[Token]], position: int, what: str) -> None:
    bound = limits.MAX_FILTER_SIZE_ARG
    value = _literal(args[position], "number") if len(args) > position else None
    try:
        size = float(value) if value is not None else None
    except ValueError:
        size = None
    if size is None:
        raise LimitExceeded(f"the length argument of {name}() must be a number literal (at most {bound}) "
                            f"in a {what}", f"limit: {name} length <= {bound}")
    if size > bound:
        raise LimitExceeded(f"the length argument of {name}() must be at most {bound}, got {value}",
                            f"limit: {name} length <= {bound}")


def _check_replacement(name: str, args: list[list[Token]], pattern_at: int, replacement_at: int,
                       what: str) -> None:
    pattern = _literal(args[pattern_at], "string") if len(args) > pattern_at else None
    replacement = _literal(args[replacement_at], "string") if len(args) > replacement_at else None
    if pattern is None or replacement is None:
        raise LimitExceeded(f"{name}() takes string literals as its pattern and replacement in a {what}")
    allowed = REPLACE_GROWTH * max(1, len(pattern) if name == "replace" else 1)
    if len(replacement) > allowed:
        raise LimitExceeded(f"the replacement of {name}() may be at most {allowed} characters, "
                            f"got {len(replacement)}", f"limit: a replacement grows a value at most "
                            f"{REPLACE_GROWTH}x")


def _check_cast(tokens: list[Token], open_at: int, what: str) -> None:
    """CAST(x AS type): the type must be a basic scalar type."""
    args = _arguments(tokens, open_at)
    body = args[0] if len(args) == 1 else []
    as_at = max((i for i, t in enumerate(body) if t.kind == "ident" and t.text.lower() == "as"), default=-1)
    type_tokens = body[as_at + 1:] if as_at >= 0 else []
    names = [t.text.lower() for t in type_tokens if t.kind == "ident"]
    numbers = [t.text for t in type_tokens if t.kind == "number"]
    if not names or any(n not in _CAST_TYPES for n in names) or any(float(n) > 76 for n in numbers):
        shown = " ".join(t.text for t in type_tokens)[:40] or "?"
        raise LimitExceeded(f"CAST to {shown!r} is not allowed in a {what}",
                            f"allowed types: {', '.join(sorted(_CAST_TYPES))}")


_ARROW_TYPE = re.compile(r"^(?:Boolean|U?Int(?:8|16|32|64)|Float(?:16|32|64)|Utf8|LargeUtf8|Utf8View|Date32|"
                         r"Date64|Timestamp\((?:Second|Millisecond|Microsecond|Nanosecond), None\)|"
                         r"Decimal128\(\d{1,2}, \d{1,2}\))$")


def _check_arrow_cast(args: list[list[Token]], what: str) -> None:
    target = _literal(args[1], "string") if len(args) > 1 else None
    if target is None or not _ARROW_TYPE.match(target):
        raise LimitExceeded(f"arrow_cast() to {target!r} is not allowed in a {what}",
                            "allowed: Boolean, (U)Int8-64, Float16-64, Utf8, Date32/64, Timestamp(unit, None), "
                            "Decimal128(p, s)")
