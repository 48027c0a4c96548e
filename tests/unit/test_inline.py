"""Which stream transfers go inside Ray's calls (``transports.inline``) and which take the
chain: a small file, whole, to a few recipients of the source's cluster only."""

from __future__ import annotations

import dataclasses

import pytest

from castray.agent.transports import inline
from castray.agent.transports.stream_parts import Member, StreamSpec
from castray.protocol import AgentTunables


def _member(n: int) -> Member:
    return Member(f"node_{n}", handle=None, data_address=f"127.0.0.{n}:9000")


SMALL = StreamSpec(
    transfer_id="t1",
    file_name="config.json",
    size=64 * 1024,
    chunk_size=8 * 1024 * 1024,
    manifest=[b"\0" * 32],
    expected_blake3="ab" * 32,
    secret=b"secret",
    recipients=[_member(2), _member(3)],
    source=_member(1),
    source_path="config.json",
    downstream=None,
    tunables=AgentTunables(),
)


def test_a_small_file_to_a_few_recipients_here_goes_inline() -> None:
    assert inline.fits(SMALL)
    assert inline.fits(dataclasses.replace(SMALL, size=0))
    assert inline.fits(dataclasses.replace(SMALL, size=inline.INLINE_BYTES))


@pytest.mark.parametrize(
    "change",
    [
        {"size": inline.INLINE_BYTES + 1},  # Ray would carry it through its object store
        {"recipients": [_member(n) for n in range(2, 3 + inline.INLINE_RECIPIENTS)]},
        {"recipients": []},  # every recipient is in another cluster
        {"downstream": "127.0.0.9:9000"},  # the stream goes on to another cluster
        {"source": None, "source_path": None},  # the source is in another cluster
        {"resume": True},  # only the chunks each recipient lacks are sent
        {"send_on": (0,)},
        {"await_stream": True},
        {"origin_fetch": "f1"},  # the bytes are still being fetched
        {"rate_limit": 1000},  # a rate to keep to
    ],
)
def test_anything_else_takes_the_chain(change: dict[str, object]) -> None:
    assert not inline.fits(dataclasses.replace(SMALL, **change))  # type: ignore[arg-type]
