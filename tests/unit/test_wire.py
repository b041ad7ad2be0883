from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.planner.plan import WireError, decode, encode


@given(nq=st.integers(0, 5), d=st.integers(1, 7), k=st.integers(0, 4))
def test_round_trip(nq: int, d: int, k: int) -> None:
    rng = np.random.default_rng(nq * 100 + d)
    q = rng.normal(size=(nq, d)).astype(np.float32)
    ids = rng.integers(0, 2**63, size=(nq, k), dtype=np.uint64)
    header, (q2, ids2) = decode(encode({"k": k, "tasks": ["a"]}, [q, ids]))
    assert header == {"k": k, "tasks": ["a"]}
    assert np.array_equal(q, q2) and np.array_equal(ids, ids2) and ids2.dtype == np.uint64


@pytest.mark.parametrize("body", [b"", b"XXXX\x00\x00\x00\x00", b"VAP1\xff\x00\x00\x00{}", b"VAP1\x02\x00\x00\x00{x"])
def test_malformed_messages_raise_wire_error(body: bytes) -> None:
    with pytest.raises(WireError):
        decode(body)


def test_truncated_and_trailing_data_raise() -> None:
    msg = encode({}, [np.ones((2, 3), np.float32)])
    with pytest.raises(WireError):
        decode(msg[:-1])
    with pytest.raises(WireError):
        decode(msg + b"\x00")
