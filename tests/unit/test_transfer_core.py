"""The transfer core without Ray: planning, every state transition, and the service over an
in-memory agent gateway. (The same paths run against real Ray in tests/integration.)"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel

from castray.config import Settings
from castray.errors import (
    AgentFailure,
    FileExists,
    GroupNotFound,
    InvalidRequest,
    NodeNotFound,
    NodeUnavailable,
)
from castray.models import (
    EndpointState,
    NodeKind,
    NodeStatus,
    RayClusterState,
    RecipientStatus,
    Transfer,
    TransferCreate,
    TransferStatus,
    Transport,
)
from castray.protocol import (
    CancelTransfer,
    Done,
    FileSize,
    ImportListening,
    ImportTransfer,
    LinksProbed,
    ManifestRead,
    Operation,
    ProbeFile,
    ProbeLinks,
    ReadManifest,
    RecipientFinished,
    StartTransfer,
    TransferFinished,
    TransferOpened,
    TransferProgress,
)
from castray.server import origin_keep
from castray.server.events import EventHub
from castray.server.history import History
from castray.server.library import Library
from castray.server.origin_fetch import choose_fetcher
from castray.server.paces import REMEMBER_SECONDS, PaceBook
from castray.server.registry import Registry
from castray.server.transfer_plan import LocatedFile, plan_transfer
from castray.server.transfer_state import RECIPIENT_NEXT, TRANSFER_NEXT, TransferState
from castray.server.transfers import TransferService

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=timezone.utc)
FILE = LocatedFile("/lib/f.bin", "f.bin", 1000, "ab" * 32)


def _registry(*nodes: tuple[str, str, str], dead: set[str] = frozenset()) -> Registry:  # type: ignore[assignment]
    """Endpoints ``(id, cluster, address)``; every cluster connected."""
    registry = Registry()
    for cluster in dict.fromkeys(c for _, c, _ in nodes):
        registry.add_cluster(cluster, is_home=cluster == "home", is_external=cluster != "home")
        registry.cluster_seen(
            cluster,
            RayClusterState(
                address=f"{cluster}:6379", ray_version="2", node_count=1, alive_nodes=1
            ),
        )
    for node_id, cluster, address in nodes:
        registry.put_endpoint(
            cluster,
            EndpointState(
                id=node_id,
                ray_node_id=f"ray-{address}",
                address=address,
                status=NodeStatus.DEAD if node_id in dead else NodeStatus.ALIVE,
                kind=NodeKind.RAY_NODE,
                storage_dir=f"/s/{node_id}",
                data_address=f"{address}:{7000 + len(node_id)}",
            ),
        )
    return registry


NODES = (
    ("src", "home", "10.0.0.1"),
    ("b2", "home", "10.0.0.3"),
    ("a1", "home", "10.0.0.2"),
    ("a2", "home", "10.0.0.2"),
    ("x1", "ext", "10.1.0.1"),
)


def _request(**changes: Any) -> TransferCreate:
    body: dict[str, Any] = {
        "source_node": "src",
        "file": "f.bin",
        "mode": "broadcast",
        "transport": "object-store",
    }
    return TransferCreate(**(body | changes))


# ---- planning ----------------------------------------------------------------------------


def test_a_url_kept_in_the_library_is_fetched_on_the_servers_machine(tmp_path: Path) -> None:
    """The library is on the server's disk: a node there fetches (127.0.0.N is this machine,
    10.0.0.N is not), a node elsewhere named to fetch is refused, and so is a taken name."""
    registry = _registry(*NODES, ("here", "ext", "127.0.0.5"))
    url = {"source_url": "https://example.com/m.bin", "source_node": None, "file": None}
    request = _request(**url, keep_in_library=True)
    assert choose_fetcher(request, registry, {})[0] == "src"
    assert choose_fetcher(request, registry, {}, origin_keep.can_keep)[0] == "here"
    named = _request(**url, mode="multicast", recipients=["here", "a1"])
    fetcher, rest = choose_fetcher(named, registry, {}, origin_keep.can_keep)
    assert fetcher == "here" and rest.recipients == ["a1"] and rest.mode.value == "unicast"
    library = Library(tmp_path)
    origin_keep.check_request(library, registry, "m.bin", None)
    origin_keep.check_request(library, registry, "m.bin", "here")
    with pytest.raises(InvalidRequest, match="not on the server's machine"):
        origin_keep.check_request(library, registry, "m.bin", "a1")
    (tmp_path / "m.bin").write_bytes(b"x")
    with pytest.raises(FileExists, match="give the copies another name"):
        origin_keep.check_request(library, registry, "m.bin", None)
    elsewhere = _registry(*NODES)
    with pytest.raises(NodeUnavailable, match="alive node on the server's machine"):
        origin_keep.check_request(library, elsewhere, "n.bin", None)


def test_a_broadcast_plans_a_chain_per_cluster_crossing_each_host_once() -> None:
    plan = plan_transfer("t1", _request(), _registry(*NODES), {}, FILE)

    assert [n.id for n in plan.local] == ["a1", "a2", "b2"]  # 10.0.0.2 twice, then .3
    assert {c: [n.id for n in nodes] for c, nodes in plan.remote.items()} == {"ext": ["x1"]}
    assert plan.clusters == ["home", "ext"]
    assert not plan.needs_size  # a library file's size is known


def test_a_file_of_unknown_size_for_another_cluster_needs_a_probe_first() -> None:
    unknown = LocatedFile("sub/f.bin", "f.bin")
    remote = plan_transfer("t", _request(), _registry(*NODES), {}, unknown)
    local = plan_transfer(
        "t", _request(mode="unicast", recipients=["a1"]), _registry(*NODES), {}, unknown
    )

    assert remote.needs_size and not local.needs_size
    assert remote.sized(42).file.size == 42


def test_dead_nodes_are_left_out_of_a_broadcast_and_refused_by_name() -> None:
    registry = _registry(*NODES, dead={"b2"})

    plan = plan_transfer("t", _request(), registry, {}, FILE)

    assert "b2" not in [n.id for n in plan.recipients]
    with pytest.raises(NodeUnavailable):
        plan_transfer("t", _request(mode="multicast", recipients=["a1", "b2"]), registry, {}, FILE)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"source_node": "nobody"}, NodeNotFound),
        ({"mode": "unicast", "recipients": ["a1", "a2"]}, InvalidRequest),
        ({"mode": "multicast", "recipients": []}, InvalidRequest),
        ({"mode": "multicast", "recipients": ["src"]}, InvalidRequest),
        ({"mode": "multicast", "recipients": ["a1", "a1"]}, InvalidRequest),
        ({"mode": "multicast", "group": "none"}, GroupNotFound),
    ],
)
def test_bad_requests_are_refused_while_planning(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        plan_transfer("t", _request(**changes), _registry(*NODES), {}, FILE)


def test_a_group_and_named_recipients_are_joined_without_repeats() -> None:
    groups = {"pair": ["a2", "b2"]}

    plan = plan_transfer(
        "t",
        _request(mode="multicast", recipients=["a2"], group="pair"),
        _registry(*NODES),
        groups,
        FILE,
    )

    assert sorted(n.id for n in plan.recipients) == ["a2", "b2"]


def _broadcast_taking(
    seconds: dict[str, float], size: int = 64 * 1024 * 1024, **request: Any
) -> Transfer:
    """A finished stream broadcast of ``size`` bytes whose recipients each took the given
    seconds (those not named are left out of it)."""
    registry = _registry(*(n for n in NODES if n[0] in {"src", *seconds}))
    big = LocatedFile("/lib/w.bin", "w.bin", size, "ab" * 32)
    body = {"transport": "stream", "mode": "multicast", "recipients": list(seconds)}
    plan = plan_transfer("t", _request(**(body | request)), registry, {}, big)
    state = TransferState.start(plan, T0)
    for node, took in seconds.items():
        state.recipient_finished(
            RecipientFinished(transfer_id="t", recipient=node, ok=True, path="/s/w.bin"),
            T0 + timedelta(seconds=took),
        )
    return state.finish(_finished(size=size), T0 + timedelta(seconds=max(seconds.values())))


def test_a_recipient_much_slower_than_the_others_last_time_starts_at_the_chains_end() -> None:
    """A slow member paces everyone after it in a chain until the agent moves it: one that
    took a tenth of the best pace in the last broadcast starts the next one at the end (and
    the agent is told it is there for its pace), the others keep their relay order."""
    paces = PaceBook()
    paces.learn(_broadcast_taking({"a1": 40.0, "a2": 4.0, "b2": 6.0}))
    registry = _registry(*NODES[:4])

    plan = plan_transfer("t2", _request(), registry, {}, FILE, paces=paces)

    assert [n.id for n in plan.local] == ["a2", "b2", "a1"]
    # b2 took 0.67 of the best (as one after a slow one found at the first look): not slow.
    assert plan.placed_last == {"a1"}


def test_a_host_that_took_a_slow_ones_pace_goes_before_it_and_is_learned_again() -> None:
    """The placed ones are not moved behind each other (``pace.slow_one``), so one behind a
    slow one takes its pace, whatever its own. Two slow ones that ended close together: the
    later goes first next time, where its own pace shows. A fast host that once took a slow
    one's pace is learned fast from that next run on; two equally slow ones swap places,
    which costs nobody anything."""
    paces = PaceBook()
    registry = _registry(*NODES[:4])
    paces.learn(_broadcast_taking({"a1": 40.0, "a2": 4.0, "b2": 41.0}))
    plan = plan_transfer("t2", _request(), registry, {}, FILE, paces=paces)
    assert [n.id for n in plan.local] == ["a2", "b2", "a1"], "b2 may have taken a1's pace"

    paces.learn(_broadcast_taking({"a1": 40.0, "a2": 4.0, "b2": 4.2}))  # b2 was fast after all
    plan = plan_transfer("t3", _request(), registry, {}, FILE, paces=paces)
    assert [n.id for n in plan.local] == ["a2", "b2", "a1"] and plan.placed_last == {"a1"}

    paces.learn(_broadcast_taking({"a1": 40.5, "a2": 4.0, "b2": 40.0}))  # both slow alike
    plan = plan_transfer("t4", _request(), registry, {}, FILE, paces=paces)
    assert [n.id for n in plan.local] == ["a2", "a1", "b2"]


@pytest.mark.parametrize(
    "taught",
    [
        {"size": 1024 * 1024},  # small: its times are fixed costs
        {"mode": "unicast", "recipients": ["a1"], "took": {"a1": 40.0}},
        {"transport": "object-store"},
        {"took": {"a1": 2.6, "a2": 1.0, "b2": 1.0}},  # a busy machine's spread: 1.6 s
    ],
    ids=["small-file", "unicast", "object-store", "a-short-lag"],
)
def test_what_teaches_nothing_of_a_pace_leaves_the_chain_as_it_was(taught: dict[str, Any]) -> None:
    taught = dict(taught)
    took = taught.pop("took", {"a1": 40.0, "a2": 4.0, "b2": 4.0})
    size = taught.pop("size", 64 * 1024 * 1024)
    paces = PaceBook()
    paces.learn(_broadcast_taking(took, size, **taught))

    plan = plan_transfer("t2", _request(), _registry(*NODES[:4]), {}, FILE, paces=paces)

    assert [n.id for n in plan.local] == ["a1", "a2", "b2"] and not plan.placed_last


def test_a_learned_pace_is_forgotten_and_a_feeding_part_keeps_its_order() -> None:
    """An hour on, a pace says little of a link; and a part that passes the stream on to the
    next cluster keeps its slow one in place (at its end it would pace that cluster)."""
    now = [0.0]
    paces = PaceBook(clock=lambda: now[0])
    paces.learn(_broadcast_taking({"a1": 40.0, "a2": 4.0, "b2": 4.0}))

    feeding = plan_transfer("t2", _request(), _registry(*NODES), {}, FILE, paces=paces)
    assert [n.id for n in feeding.local] == ["a1", "a2", "b2"] and not feeding.placed_last
    now[0] = REMEMBER_SECONDS + 1
    assert paces.share("a1") is None
    later = plan_transfer("t3", _request(), _registry(*NODES[:4]), {}, FILE, paces=paces)
    assert [n.id for n in later.local] == ["a1", "a2", "b2"]


# ---- the state machine ---------------------------------------------------------------------


def _state(*recipients: str, parts: int = 1) -> TransferState:
    registry = _registry(*(n for n in NODES if n[0] in {"src", *recipients}))
    plan = plan_transfer(
        "t", _request(mode="multicast", recipients=list(recipients)), registry, {}, FILE
    )
    state = TransferState.start(plan, T0)
    state.parts = parts
    return state


def _progress(**done: int) -> TransferProgress:
    return TransferProgress(transfer_id="t", bytes_total=1000, bytes_done=done)


def _finished(**changes: Any) -> TransferFinished:
    return TransferFinished(**({"transfer_id": "t", "size": 1000, "blake3": "ab" * 32} | changes))


def test_every_end_is_final_and_every_start_can_reach_every_end() -> None:
    for table in (TRANSFER_NEXT, RECIPIENT_NEXT):
        ends = [s for s, nexts in table.items() if not nexts]
        starts = [s for s, nexts in table.items() if nexts]
        for start in starts:
            assert set(ends) <= table[start]  # type: ignore[operator]
    assert TransferStatus.QUEUED not in TRANSFER_NEXT[TransferStatus.RUNNING]
    assert RecipientStatus.PENDING not in RECIPIENT_NEXT[RecipientStatus.RUNNING]


def test_the_first_verified_bytes_start_the_transfer_running() -> None:
    state = _state("a1", "a2")
    assert state.transfer.status is TransferStatus.QUEUED

    nothing_yet = state.progress(_progress(a1=0, a2=0))
    assert state.transfer.status is TransferStatus.QUEUED
    event = state.progress(_progress(a1=100, a2=0))

    assert nothing_yet is not None and event is not None
    assert event.bytes_done == {"a1": 100, "a2": 0}
    assert state.transfer.status is TransferStatus.RUNNING
    assert state.transfer.recipients["a1"].status is RecipientStatus.RUNNING
    assert state.transfer.recipients["a2"].status is RecipientStatus.PENDING


def test_a_finished_recipient_ignores_late_progress_and_a_second_finish() -> None:
    state = _state("a1", "a2")
    state.progress(_progress(a1=500))

    completed = state.recipient_finished(
        RecipientFinished(transfer_id="t", recipient="a1", ok=True, path="/s/a1/f.bin"),
        T0 + timedelta(seconds=1),
    )
    state.progress(_progress(a1=10))
    again = state.recipient_finished(
        RecipientFinished(transfer_id="t", recipient="a1", ok=False, error="late"),
        T0 + timedelta(seconds=1),
    )

    assert completed is not None and completed.recipient_state.status is RecipientStatus.COMPLETED
    assert again is None
    a1 = state.transfer.recipients["a1"]
    assert (a1.status, a1.bytes_done, a1.path) == (RecipientStatus.COMPLETED, 1000, "/s/a1/f.bin")


def test_a_failed_recipient_keeps_the_bytes_it_had_and_the_reason() -> None:
    state = _state("a1")
    state.progress(_progress(a1=300))

    failed = state.recipient_finished(
        RecipientFinished(transfer_id="t", recipient="a1", ok=False, error="disk full"),
        T0 + timedelta(seconds=1),
    )

    assert failed is not None
    assert failed.recipient_state.bytes_done == 300
    assert failed.recipient_state.error == "disk full"


@pytest.mark.parametrize(
    ("completed", "outcome", "status"),
    [
        ({"a1", "a2"}, {}, TransferStatus.COMPLETED),
        ({"a1"}, {}, TransferStatus.PARTIALLY_FAILED),
        (set(), {"error": "the source died"}, TransferStatus.FAILED),
        ({"a1"}, {"cancelled": True}, TransferStatus.CANCELLED),
    ],
)
def test_the_end_follows_from_the_recipients(
    completed: set[str], outcome: dict[str, Any], status: TransferStatus
) -> None:
    state = _state("a1", "a2")
    state.progress(_progress(a1=100, a2=100))
    for rid in completed:
        state.recipient_finished(
            RecipientFinished(transfer_id="t", recipient=rid, ok=True), T0 + timedelta(seconds=1)
        )

    final = state.finish(_finished(**outcome), T0 + timedelta(seconds=2))

    assert final.status is status
    assert final.finished_at == T0 + timedelta(seconds=2)
    others = [r for rid, r in final.recipients.items() if rid not in completed]
    expected = RecipientStatus.CANCELLED if outcome.get("cancelled") else RecipientStatus.FAILED
    assert all(r.status is expected for r in others)
    if status is TransferStatus.COMPLETED:
        assert final.throughput_bps == 1000.0  # 2 copies of 1000 bytes in 2 s


def test_a_transfer_with_failed_recipients_says_why_in_its_own_error() -> None:
    state = _state("a1", "a2", "b2")
    state.recipient_finished(
        RecipientFinished(transfer_id="t", recipient="a1", ok=True), T0 + timedelta(seconds=1)
    )
    state.recipient_finished(
        RecipientFinished(transfer_id="t", recipient="a2", ok=False, error="disk full"),
        T0 + timedelta(seconds=1),
    )

    final = state.finish(_finished(), T0)

    assert final.status is TransferStatus.PARTIALLY_FAILED
    assert final.error == "2 of 3 recipients failed: a2: disk full; b2: not finished"


def test_a_transfer_ends_when_every_cluster_part_has() -> None:
    state = _state("a1", parts=2)

    assert state.part_finished(_finished(chunks_resent=1)) is None
    outcome = state.part_finished(_finished(chunks_resent=2, error="x1 failed"))

    assert outcome is not None
    assert outcome.chunks_resent == 3
    assert outcome.error == "x1 failed"


def test_an_ended_transfer_changes_no_more() -> None:
    state = _state("a1")
    final = state.finish(_finished(cancelled=True), T0)

    assert state.progress(_progress(a1=10)) is None
    assert state.interrupt("stopping", T0).status is TransferStatus.CANCELLED
    assert state.finish(_finished(), T0).status is TransferStatus.CANCELLED
    assert state.transfer == final


def test_a_transfer_in_flight_when_castray_stops_is_interrupted() -> None:
    state = _state("a1")
    state.progress(_progress(a1=1))

    assert state.interrupt("CastRay stopped", T0).status is TransferStatus.INTERRUPTED


# ---- the service over an in-memory gateway ----------------------------------------------------


class FakeAgents:
    """An ``AgentGateway`` that answers from a script and remembers what it was asked."""

    def __init__(
        self, fail: type[Operation] | None = None, links_down: dict[str, str] | None = None
    ) -> None:
        self.asked: list[tuple[str, Operation]] = []
        self._fail = fail
        self._links_down = links_down or {}

    async def request(
        self, cluster: str, body: Operation, reply: type[BaseModel], timeout: float | None = None
    ) -> Any:
        self.asked.append((cluster, body))
        if self._fail is not None and isinstance(body, self._fail):
            raise AgentFailure("the agent could not")
        answers: dict[type[BaseModel], BaseModel] = {
            LinksProbed: LinksProbed(failures=self._links_down),
            ManifestRead: ManifestRead(size=777, manifest=["cd" * 32], blake3="ef" * 32),
            FileSize: FileSize(size=777),
            ImportListening: ImportListening(host="127.0.0.1", port=4242, secret="ab" * 32),
            TransferOpened: TransferOpened(size=1000),
            Done: Done(),
        }
        return answers[reply]


def _service(tmp_path: Path, agents: FakeAgents) -> tuple[TransferService, EventHub, History]:
    events = EventHub()
    history = History(tmp_path / "history.sqlite3")
    library = Library(tmp_path / "library")
    (tmp_path / "library").mkdir()
    (tmp_path / "library" / "f.bin").write_bytes(b"x" * 1000)
    settings = Settings(data_dir=tmp_path, cancel_timeout=0.5)
    registry = _registry(*NODES)
    return (
        TransferService(settings, registry, agents, library, history, events, {}),
        events,
        history,
    )


def test_the_service_launches_imports_before_the_source_and_follows_to_the_end(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[list[str], Any, FakeAgents]:
        agents = FakeAgents()
        service, events, history = _service(tmp_path, agents)
        watching = events.subscribe()
        started = await service.start(_request())
        tid = started.id
        service.on_transfer_message(
            TransferProgress(transfer_id=tid, bytes_total=1000, bytes_done={"a1": 500})
        )
        for rid in ("a1", "a2", "b2", "x1"):
            service.on_transfer_message(RecipientFinished(transfer_id=tid, recipient=rid, ok=True))
        for _ in ("home", "ext"):
            service.on_transfer_message(
                TransferFinished(transfer_id=tid, size=1000, blake3="ab" * 32)
            )
        final = await service.wait(tid, 5)
        await service.close()
        kinds = [watching.queue.get_nowait().type.value for _ in range(watching.queue.qsize())]
        return kinds, (final, history.get(tid)), agents

    kinds, (final, stored), agents = asyncio.run(scenario())

    assert [type(body) for _, body in agents.asked] == [ImportTransfer, StartTransfer]
    assert agents.asked[0][0] == "ext" and agents.asked[1][0] == "home"
    start = agents.asked[1][1]
    assert isinstance(start, StartTransfer)
    assert start.recipients == ["a1", "a2", "b2"]
    assert start.exports == [("127.0.0.1", 4242, "ab" * 32)]
    assert kinds[0] == "transfer_started"
    assert kinds[-1] == "transfer_finished"
    assert kinds.count("recipient_completed") == 4
    assert final.status is TransferStatus.COMPLETED
    assert stored is not None and stored.status is TransferStatus.COMPLETED


def test_a_launch_that_fails_is_told_and_cancelled_everywhere(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[str], FakeAgents]:
        agents = FakeAgents(fail=StartTransfer)
        service, events, _ = _service(tmp_path, agents)
        watching = events.subscribe()
        with pytest.raises(AgentFailure):
            await service.start(_request())
        await service.close()
        return [
            watching.queue.get_nowait().type.value for _ in range(watching.queue.qsize())
        ], agents

    kinds, agents = asyncio.run(scenario())

    assert kinds == ["transfer_started", "transfer_finished"]
    cancelled = [cluster for cluster, body in agents.asked if isinstance(body, CancelTransfer)]
    assert cancelled == ["home", "ext"]


def test_a_cluster_going_down_fails_its_transfers_with_the_reason(tmp_path: Path) -> None:
    async def scenario() -> Any:
        service, _, _ = _service(tmp_path, FakeAgents())
        started = await service.start(_request())
        service.on_cluster_down("ext", "its agent exited")
        final = await service.get(started.id)
        await service.close()
        return final

    final = asyncio.run(scenario())

    assert final.status is TransferStatus.FAILED
    assert "cluster ext is down: its agent exited" in final.error


def test_a_source_file_of_unknown_size_is_probed_before_other_clusters_are_asked(
    tmp_path: Path,
) -> None:
    async def scenario() -> FakeAgents:
        agents = FakeAgents()
        service, _, _ = _service(tmp_path, agents)
        await service.start(_request(file="received/f.bin"))
        await service.close()
        return agents

    agents = asyncio.run(scenario())

    assert [type(body) for _, body in agents.asked] == [ProbeFile, ImportTransfer, StartTransfer]
    imported = agents.asked[1][1]
    assert isinstance(imported, ImportTransfer) and imported.size == 777


# ---- the stream transport ------------------------------------------------------------------


def test_a_stream_plan_passes_through_every_cluster_in_one_chain() -> None:
    plan = plan_transfer("t", _request(transport="stream"), _registry(*NODES), {}, FILE)

    assert plan.transport is Transport.STREAM
    assert [(a.id, b.id) for a, b in plan.links] == [
        ("src", "a1"),
        ("a1", "a2"),
        ("a2", "b2"),
        ("b2", "x1"),
    ]
    assert [(cluster, [n.id for n in nodes]) for cluster, nodes in plan.parts] == [
        ("home", ["a1", "a2", "b2"]),
        ("ext", ["x1"]),
    ]


def _asked(agents: FakeAgents) -> list[tuple[str, str]]:
    return [(cluster, type(body).__name__) for cluster, body in agents.asked]


def test_a_stream_checks_its_hops_and_links_each_part_to_the_next(tmp_path: Path) -> None:
    async def scenario() -> tuple[FakeAgents, Any]:
        agents = FakeAgents()
        service, _, _ = _service(tmp_path, agents)
        first = await service.start(_request(transport="stream"))
        await service.start(_request(transport="stream"))  # hops checked a moment ago
        await service.close()
        return agents, first

    agents, first = asyncio.run(scenario())

    assert _asked(agents)[:3] == [
        ("home", "ProbeLinks"),
        ("ext", "ImportTransfer"),
        ("home", "StartTransfer"),
    ]
    assert [kind for _, kind in _asked(agents)].count("ProbeLinks") == 1
    probe = agents.asked[0][1]
    assert isinstance(probe, ProbeLinks) and len(probe.links) == 4
    imported, started = agents.asked[1][1], agents.asked[2][1]
    assert isinstance(imported, ImportTransfer) and isinstance(started, StartTransfer)
    assert imported.transport is Transport.STREAM and imported.stream is not None
    assert started.stream is not None and imported.stream.downstream is None
    assert started.stream.downstream == "10.1.0.1:7002"  # x1, the next part's first
    assert started.stream.secret == imported.stream.secret
    assert started.expected_blake3 == FILE.blake3 or started.expected_blake3 is not None
    assert first.transport is Transport.STREAM and first.transport_note is None


def test_a_hop_that_cannot_be_made_sends_the_transfer_through_the_object_store(
    tmp_path: Path,
) -> None:
    async def scenario() -> tuple[FakeAgents, Any]:
        agents = FakeAgents(links_down={"a2 -> 10.0.0.3:7002": "connection refused"})
        service, _, _ = _service(tmp_path, agents)
        started = await service.start(_request(transport="stream"))
        await service.close()
        return agents, started

    agents, started = asyncio.run(scenario())

    assert started.transport is Transport.OBJECT_STORE
    assert "a2 -> 10.0.0.3:7002" in (started.transport_note or "")
    assert "connection refused" in (started.transport_note or "")
    launched = [
        body for _, body in agents.asked if isinstance(body, ImportTransfer | StartTransfer)
    ]
    assert all(body.transport is Transport.OBJECT_STORE for body in launched)


def test_a_file_outside_the_library_is_read_by_its_source_for_the_manifest(
    tmp_path: Path,
) -> None:
    async def scenario() -> FakeAgents:
        agents = FakeAgents()
        service, _, _ = _service(tmp_path, agents)
        await service.start(_request(transport="stream", file="received/f.bin"))
        await service.close()
        return agents

    agents = asyncio.run(scenario())

    read = agents.asked[0][1]
    assert isinstance(read, ReadManifest) and read.endpoint_id == "src"
    started = agents.asked[-1][1]
    assert isinstance(started, StartTransfer) and started.stream is not None
    assert started.stream.size == 777 and started.stream.manifest == ["cd" * 32]
    assert started.expected_blake3 == "ef" * 32
