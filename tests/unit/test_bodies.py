"""Native request bodies are strict: a field the endpoint does not know is refused by name."""

from __future__ import annotations

import pytest

from appliance.errors import InvalidInput
from appliance.query.request import SEARCH_PARAMS, check_fields, parse_index_request, search_fields


def test_an_unknown_field_is_named_with_the_accepted_ones() -> None:
    with pytest.raises(InvalidInput) as caught:
        check_fields({"vector": [1.0], "k": 1, "filtr": "x = 1"}, search_fields(), "a search body")
    message = caught.value.message
    assert message.startswith("unknown field 'filtr' in a search body; accepted: vector, vectors, k, ")
    assert "filter" in message


def test_every_search_parameter_is_a_field_of_a_json_search() -> None:
    body = {"vector": [1.0], **{name: None for name in SEARCH_PARAMS}}
    check_fields(body, search_fields(), "a search body")  # no error


def test_an_index_body_refuses_unknown_fields_before_anything_else() -> None:
    with pytest.raises(InvalidInput, match="unknown field 'backgroud' in an index body; accepted: background, metric"):
        parse_index_request({"backgroud": True})
    assert parse_index_request({"background": True, "codec": "sq8"})[0] is True
