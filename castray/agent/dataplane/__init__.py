"""The data plane inside an endpoint actor: file bytes travel on TCP streams between
endpoints, Ray only carries the control calls. ``wire`` says how a connection opens and
what travels on it, ``sink`` receives a transfer (its parts: ``sink_receiving``,
``sink_writing``, ``sink_links``, ``sink_status``, over ``sink_state``), ``forwarding`` passes
what a sink receives on to the next,
``port`` is the listener sinks receive on, ``sender`` streams a file out."""

from castray.agent.dataplane.port import (
    MAX_GREETING,
    MAX_GREETING_PER_PEER,
    REFUSALS_LOGGED,
    DataPort,
)
from castray.agent.dataplane.sender import Stopper, send
from castray.agent.dataplane.sink import SinkStatus, StreamSink
from castray.agent.dataplane.wire import (
    END,
    FORWARD,
    FRAME,
    HELLO,
    StreamError,
    all_chunks,
    connect,
    hello,
    probe,
)

__all__ = [
    "END",
    "FORWARD",
    "FRAME",
    "HELLO",
    "MAX_GREETING",
    "MAX_GREETING_PER_PEER",
    "REFUSALS_LOGGED",
    "DataPort",
    "SinkStatus",
    "Stopper",
    "StreamError",
    "StreamSink",
    "all_chunks",
    "connect",
    "hello",
    "probe",
    "send",
]
