"""The filter cost guard (appliance/storage/filters.py): tokenizer, allowlist, bounded size arguments."""

from __future__ import annotations

import time

import lance
import pyarrow as pa
import pytest

from appliance import limits
from appliance.errors import InvalidInput, LimitExceeded
from appliance.storage.filters import ALLOWED_FUNCTIONS, check_expression, tokenize
from appliance.storage.tables import check_filter_text


def test_tokenizer_kinds_and_escapes() -> None:
    tokens = tokenize('lower("Odd ""col""") = \'it\'\'s\' AND `x y` >= -1.5e3 OR s || \'a\' <> \'b\'')
    assert [(t.kind, t.text) for t in tokens] == [
        ("ident", "lower"), ("punct", "("), ("quoted", 'Odd "col"'), ("punct", ")"), ("punct", "="),
        ("string", "it's"), ("ident", "AND"), ("quoted", "x y"), ("punct", ">="), ("punct", "-"),
        ("number", "1.5e3"), ("ident", "OR"), ("ident", "s"), ("punct", "||"), ("string", "a"),
        ("punct", "<>"), ("string", "b")]


@pytest.mark.parametrize("text", ["label = 'abc", 'x = "abc', "a -- comment", "a /* c */ = 1"])
def test_tokenizer_refuses_unterminated_quotes_and_comments(text: str) -> None:
    with pytest.raises(InvalidInput):
        tokenize(text) if "'" in text or '"' in text else check_expression(text)


# Filters the test suite and the README use, and the kinds of expressions users write: all must pass.
NORMAL = [
    "id < 0", "tag = 'new3'", "n >= 10 AND n < 20", "row IN (1, 2, 3)", "label IS NULL", "label IS NOT NULL",
    "NOT (a = 1 OR b = 2)", "price BETWEEN 1 AND 2", "s LIKE 'a%'", "s ILIKE '%B%'", "s NOT LIKE 'x_'",
    "cast(s as int) = 1", "CAST(x AS DOUBLE) > 0.5", "try_cast(s AS BIGINT) IS NULL", "CAST(d AS DECIMAL(10, 2)) > 1",
    "x::varchar = 'a'", "(id + 1) * 2 % 3 = 0", "id / 0 > 1", "lower(s) = 'a'", "upper(s) = 'A'",
    "length(s) > 3", "starts_with(s, 'a')", "ends_with(s, 'z')", "contains(s, 'mid')",
    "regexp_match(s, '(') IS NOT NULL", "regexp_like(s, '^a.*')", "substr(s, 1, 2) = 'ab'", "trim(s) = 'a'",
    "lpad(s, 10, '0') = '000000000a'", "rpad(s, 4) = 'ab  '", "replace(s, 'a', 'bb') = 'bb'",
    "coalesce(s, 'none') = 'none'", "CASE WHEN id > 1 THEN 'a' ELSE 'b' END = 'a'", "abs(x - 1) < 0.1",
    "date_trunc('day', ts) = '2024-01-01'", "array_has(tags, 'x')", "array_length(tags) > 2",
    "s['field'] = 1", "s.field = 1", "concat(a, '-', b) = 'x-y'", "a || '-' || b = 'x-y'",
    "arrow_cast(id, 'Utf8') = '1'", "_rowid >= 10", "\"Odd Column\" = 1", "`odd column` = 1",
    "id IN (" + ", ".join(map(str, range(500))) + ")",
    " OR ".join(f"id = {i}" for i in range(300)),
]


@pytest.mark.parametrize("text", NORMAL)
def test_normal_filters_pass(text: str) -> None:
    check_expression(text)


@pytest.mark.parametrize(("text", "named"), [
    ("lpad(s, 2000000000, 'x') = 'a'", "lpad"),
    ("rpad(s, 1e10) = 'a'", "rpad"),
    ("lpad(s, id) = 'a'", "lpad"),  # a size that is not a literal
    ("repeat(s, 50000000) = 'a'", "repeat"),
    ("REPEAT (s, 5) = 'a'", "repeat"),
    ('"repeat"(s, 5) = \'a\'', "repeat"),
    ("array_repeat(s, 1000000000) IS NULL", "array_repeat"),
    ("array_length(range(0, 1000000000000)) > 1", "range"),
    ("levenshtein(s, s) > 1", "levenshtein"),
    ("replace(s, 'a', s) = 'x'", "replace"),  # a replacement that is a column: quadratic
    ("replace(s, 'a', '" + "x" * 100 + "') = 'x'", "replacement"),
    ("replace(replace(replace(s, 'a', 'aaaa'), 'a', 'aaaa'), 'a', 'aaaa') = 'x'", "more than"),
    ("encode(encode(encode(s, 'hex'), 'hex'), 'hex') = 'x'", "more than"),
    ("concat_ws('" + "x" * 100 + "', s, s) = 'a'", "concat_ws"),
    (" || ".join(["s"] * 100) + " = 'a'", "concatenates"),
    ("concat(" + ", ".join(["s"] * 100) + ") = 'a'", "concatenates"),
    ("array_length([" + ", ".join(["s"] * 100) + "]) = 1", "concatenates"),
    ("sum(id) > 1", "sum"),
    ("s.repeat(5) = 'a'", "method"),
    ("CAST(s AS FixedSizeBinary(2000000000)) IS NULL", "CAST"),
    ("arrow_cast(s, 'FixedSizeList(1000000000, Int8)') IS NULL", "arrow_cast"),
    ("(" * 100 + "id = 1" + ")" * 100, "deeper"),
    ("label = '" + "x" * 10_000 + "'", "longer"),
])
def test_bombs_are_refused_naming_the_limit(text: str, named: str) -> None:
    with pytest.raises(LimitExceeded, match=named) as caught:
        check_expression(text)
    assert caught.value.status == 400 and caught.value.code == "limit_exceeded"


def test_check_filter_text_applies_the_guard() -> None:
    with pytest.raises(LimitExceeded, match="repeat"):
        check_filter_text("repeat(s, 50000000) = 'a'")
    with pytest.raises(InvalidInput, match="update value"):
        check_filter_text("  ", "update value")


def test_the_guard_is_fast() -> None:
    text = " OR ".join(f"lower(s) = 'v{i}'" for i in range(200))[: limits.MAX_FILTER_CHARS - 10]
    text = text.rsplit(" OR ", 1)[0]
    started = time.perf_counter()
    for _ in range(20):
        check_expression(text)
    assert (time.perf_counter() - started) / 20 < 0.05


def test_allowed_functions_exist_in_lance(tmp_path) -> None:
    """Each allowlisted function is one Lance knows (a name it does not know would only hide a typo)."""
    table = pa.table({"s": ["a"], "x": [1.0], "id": [1]})
    ds = lance.write_dataset(table, str(tmp_path / "t.lance"))
    unknown = []
    for name in sorted(ALLOWED_FUNCTIONS):
        try:
            ds.scanner(filter=f"{name}() IS NULL", limit=1).explain_plan()
        except Exception as exc:  # a wrong arity is fine; "Invalid function" is not
            if "Invalid function" in str(exc):
                unknown.append(name)
    assert set(unknown) <= {"extract"}, unknown  # EXTRACT(field FROM ts) is syntax, not a call
