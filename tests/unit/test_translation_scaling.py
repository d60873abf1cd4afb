"""No request or answer makes its translation slow: what the front door decodes and converts,
and what the providers' wire formats read back, take time linear in their size. Asserted as
scaling (8 times the input may not take much more than 8 times as long), never as absolute
time; CPU time, so that a loaded machine's scheduling does not count."""

from __future__ import annotations

import anyio
import pytest

from quotad.daemon.errors import RequestError
from quotad.daemon.front_door import openai, wire
from tests.support.scaling import LINEAR_RATIO_BOUND, cpu_time

SMALL = 500
LARGE = 8 * SMALL


def _refused_integer(body: bytes) -> str:
    with pytest.raises(RequestError) as refused:
        anyio.run(wire.decode_body, openai.CHAT_DECODER, body)
    return refused.value.message


def test_an_integer_past_64_bits_is_named_in_linear_time() -> None:
    """Where the integer is was spelt out for every item looked through: a key of k
    characters holding n items made n paths of k characters each (a 48 KB body, k = n =
    16,000, took 186 ms and 281 MB; a megabyte's would not fit in memory). Only the
    integer's is spelt now. Here k = 32 n: the large body's paths were 512 MB."""

    def body(size: int) -> bytes:
        items = b",".join([b"0"] * size)
        tool = b'{"x": ' + b"9" * 20 + b', "' + b"k" * (32 * size) + b'": [' + items + b"]}"
        return b'{"model": "m", "messages": [{"role": "user", "content": "x"}], "tools": [%s]}' % (
            tool
        )

    small, large = body(SMALL), body(LARGE)
    assert (
        _refused_integer(large) == "tools[0].x: an integer of 20 digits is out of range (64 bits)"
    )
    ratio = cpu_time(lambda: _refused_integer(large)) / cpu_time(lambda: _refused_integer(small))
    assert ratio < LINEAR_RATIO_BOUND
