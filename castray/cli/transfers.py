"""Client commands for files and transfers: ``send`` (with live progress), ``transfers``,
``cancel``, ``resume``, ``generate``, ``files``."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.progress import Progress, TaskID

from castray.cli.library import library_name
from castray.cli.options import (
    DEFAULT_SERVER,
    DetachOption,
    JsonOption,
    ServerOption,
    TokenOption,
)
from castray.cli.output import err, out, print_json_or, print_table
from castray.cli.progress import transfer_progress
from castray.client import Client, EventStream
from castray.errors import FileMissing, InvalidRequest
from castray.models import (
    RecipientCompletedEvent,
    RecipientFailedEvent,
    RecipientState,
    Transfer,
    TransferAccepted,
    TransferFinishedEvent,
    TransferProgressEvent,
    TransferStatus,
    Transport,
)
from castray.sizes import binary_size, parse_rate
from castray.sources.policy import mask

POLL_EVERY = 1.0
"""Seconds without a word about our transfer after which its state is fetched over REST."""


def send(
    file: Annotated[
        str,
        typer.Argument(
            help="A local file (uploaded first), a library name, or a URL (s3://bucket/key, "
            "https://...) that one node fetches once and sends on."
        ),
    ],
    source: Annotated[
        str | None,
        typer.Option(
            "--from", help="The node that sends (of a URL: that fetches it; else one is chosen)."
        ),
    ] = None,
    to: Annotated[str | None, typer.Option("--to", help="Comma-separated recipient nodes.")] = None,
    group: Annotated[str | None, typer.Option("--group", help="Multicast to a group.")] = None,
    everyone: Annotated[
        bool, typer.Option("--all", help="Broadcast to every other alive node.")
    ] = False,
    detach: DetachOption = False,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="If an earlier transfer of this file to these recipients did not finish, "
            "resume it: send only what they lack.",
        ),
    ] = False,
    transport: Annotated[
        Transport | None,
        typer.Option(
            "--transport",
            help="stream (TCP between the endpoints) or object-store (through Ray); "
            "the server's default when not given.",
        ),
    ] = None,
    rate: Annotated[
        str | None,
        typer.Option(
            "--rate",
            help='Send at most this fast, e.g. "50MB/s" (within the endpoints\' own limits).',
        ),
    ] = None,
    copies_name: Annotated[
        str | None,
        typer.Option(
            "--as",
            help="Of a URL: the name the copies get (the URL's last path segment otherwise).",
        ),
    ] = None,
    keep_in_library: Annotated[
        bool,
        typer.Option(
            "--keep-in-library",
            help="Of a URL: the library keeps the fetched object too (a pin can then name it).",
        ),
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Send a file from one node to others and follow it to the end.

    Exit code 0 when every recipient has a verified copy, 1 otherwise.
    """
    recipients = [r.strip() for r in to.split(",") if r.strip()] if to else None
    if sum(map(bool, (recipients, group, everyone))) != 1:
        raise InvalidRequest("say who receives the file: exactly one of --to, --group or --all")
    if rate is not None:
        parse_rate(rate)  # a typo is told before anything is uploaded
    if copies_name is not None and not _is_url(file):
        raise InvalidRequest(
            "--as names the copies of a URL; a local file's copies take its name in the "
            "library (rename it, or upload it under another name first)"
        )
    if keep_in_library and not _is_url(file):
        raise InvalidRequest(
            "--keep-in-library keeps what a URL fetched; a local file sent is kept in the "
            "library anyway (it is uploaded there first)"
        )
    if _is_url(file):
        with Client(server, token) as client:
            if not json_out:
                err.print(f"fetching {mask(file)} ...", highlight=False)
            _run(
                client,
                lambda: client.send(
                    source,
                    copies_name,
                    recipients,
                    group,
                    transport,
                    rate,
                    source_url=file,
                    keep_in_library=keep_in_library,
                ),
                detach,
                json_out,
            )
        return
    if source is None:
        raise InvalidRequest("say which node sends the file: --from NODE")
    with Client(server, token) as client:
        name = library_name(client, file, quiet=json_out)
        earlier = _unfinished(client, source, name, recipients)
        if earlier is not None and resume:
            _run(client, lambda: client.resume(earlier.id), detach, json_out)
            return
        if earlier is not None and not json_out:
            err.print(
                f"transfer {earlier.id} of {name} to {', '.join(recipients or [])} did not finish"
                f" ({earlier.status.value}); 'castray send ... --resume' would send only what "
                "its recipients lack. Sending it whole.",
                highlight=False,
            )
        _run(
            client,
            lambda: _start(client, file, source, name, recipients, group, transport, rate),
            detach,
            json_out,
        )


def _is_url(file: str) -> bool:
    """A URL to fetch (the server refuses schemes other than s3, https and http), not a
    local path or a library name."""
    return re.match(r"[a-zA-Z][a-zA-Z0-9+.\-]*://", file) is not None


def resume(
    transfer_id: Annotated[str, typer.Argument(help="An interrupted or failed transfer.")],
    detach: DetachOption = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Resume a transfer that did not finish: its recipients get only the chunks they lack.

    Exit code 0 when every recipient has a verified copy, 1 otherwise.
    """
    with Client(server, token) as client:
        _run(client, lambda: client.resume(transfer_id), detach, json_out)


def _run(
    client: Client, begin: Callable[[], TransferAccepted], detach: bool, json_out: bool
) -> None:
    """Start a transfer with ``begin`` and follow it to its end (or, ``detach``, don't)."""
    if detach:
        accepted = begin()
        print_json_or(json_out, accepted.model_dump_json(), accepted.transfer_id)
        return
    with client.events() as stream:
        accepted = begin()
        if not json_out:
            err.print(f"transfer [bold]{accepted.transfer_id}[/]", highlight=False)
        try:
            final = _follow(client, stream, accepted.transfer_id, show=not json_out)
        except KeyboardInterrupt:
            err.print(
                f"stopped watching; the transfer goes on. Cancel it with "
                f"'castray cancel {accepted.transfer_id}'."
            )
            raise typer.Exit(code=130) from None
    if json_out:
        out.print_json(final.model_dump_json())
    else:
        _print_outcome(final)
    if final.status is not TransferStatus.COMPLETED:
        raise typer.Exit(code=1)


def _unfinished(
    client: Client, source: str, name: str, recipients: list[str] | None
) -> Transfer | None:
    """The newest resumable transfer of this file from ``source`` to exactly ``recipients``."""
    if not recipients:
        return None
    for transfer in client.transfers(limit=50).transfers:
        if (
            transfer.resumable
            and transfer.source_node == source
            and transfer.source_file == name
            and set(transfer.recipients) == set(recipients)
        ):
            return transfer
    return None


def _start(
    client: Client,
    typed: str,
    source: str,
    name: str,
    recipients: list[str] | None,
    group: str | None,
    transport: Transport | None,
    rate: str | None,
) -> TransferAccepted:
    """Start the transfer; a file found nowhere is named as missing here too."""
    try:
        return client.send(source, name, recipients, group, transport, rate)
    except FileMissing as exc:
        if Path(typed).expanduser().exists():
            raise
        raise FileMissing(
            f"no file {typed!r} on this machine, nor of that name in the server's library "
            f"('castray files' lists it) or in the storage of {source}"
        ) from exc


def _follow(client: Client, stream: EventStream, transfer_id: str, show: bool) -> Transfer:
    """Progress bars fed by /ws events; once a second the REST state settles what they missed."""
    transfer = client.transfer(transfer_id)
    label = max((len(rid) for rid in transfer.recipients), default=8)
    with transfer_progress(err, label, disable=not show) as progress:
        # The size from the start: a bar added without one reads "0/100 bytes" for a frame.
        total = transfer.bytes_total or None
        tasks = {
            rid: progress.add_task(rid, total=total, status="", rate=None)
            for rid in transfer.recipients
        }
        _show_all(progress, tasks, transfer)
        synced = time.monotonic()
        while not transfer.status.finished:
            message = stream.next(timeout=POLL_EVERY)
            data = message.data if message else None
            if isinstance(data, TransferProgressEvent) and data.transfer_id == transfer_id:
                for rid, done in data.bytes_done.items():
                    if rid in tasks:
                        progress.update(tasks[rid], total=data.bytes_total, completed=done)
            elif (
                isinstance(data, RecipientCompletedEvent | RecipientFailedEvent)
                and data.transfer_id == transfer_id
            ):
                _show_recipient(progress, tasks[data.recipient], data.recipient_state)
            elif isinstance(data, TransferFinishedEvent) and data.transfer.id == transfer_id:
                synced = 0.0
            if time.monotonic() - synced >= POLL_EVERY:
                transfer = client.transfer(transfer_id)
                synced = time.monotonic()
                _show_all(progress, tasks, transfer)
    return transfer


def _show_all(progress: Progress, tasks: dict[str, TaskID], transfer: Transfer) -> None:
    for rid, state in transfer.recipients.items():
        progress.update(tasks[rid], total=transfer.bytes_total or None)
        _show_recipient(progress, tasks[rid], state)


def _show_recipient(progress: Progress, task: TaskID, state: RecipientState) -> None:
    progress.update(
        task,
        completed=state.bytes_done,
        status=state.status.value,
        rate=state.throughput_bps or None,
    )


def _print_outcome(transfer: Transfer) -> None:
    print_table(
        ["recipient", "status", "ended after", "MB/s", "copy"],
        [
            [rid, s.status.value, *_pace(transfer, s), s.path or ""]
            for rid, s in transfer.recipients.items()
        ],
        whole=(0, 4),
        drop=(3, 2),
    )
    for rid, state in transfer.recipients.items():
        if state.error:
            line = f"{rid} {state.status.value}: {state.error}"
            out.print(line, style="red", highlight=False, markup=False)
    if transfer.transport_note:
        out.print(
            f"sent through the {transfer.transport.value} transport: {transfer.transport_note}",
            style="yellow",
            highlight=False,
            markup=False,
        )
    if transfer.placed_last:
        out.print(
            f"{', '.join(transfer.placed_last)}: at the end of the chain from the start, for "
            "the slow pace taken last time",
            highlight=False,
            markup=False,
        )
    if transfer.library_file is not None:
        out.print(f"the library keeps it as {transfer.library_file}", highlight=False, markup=False)
    if transfer.library_note is not None:
        out.print(
            f"the library: {transfer.library_note}", style="yellow", highlight=False, markup=False
        )
    speed = ""
    if transfer.throughput_bps:
        speed = f", {transfer.throughput_bps / 1e6:.1f} MB/s to the last copy"
    files = f"{transfer.folder_files} files, " if transfer.folder_files is not None else ""
    source = transfer.source_node
    if transfer.origin is not None:
        source = f"{transfer.origin}, fetched once by {source} (which keeps a copy too),"
    out.print(
        f"{transfer.status.value}: {transfer.file.name} ({files}{transfer.bytes_total} bytes) "
        f"from {source} by {transfer.transport.value}{speed}; "
        "every copy BLAKE3-verified"
        if transfer.status is TransferStatus.COMPLETED
        else f"{transfer.status.value}: {transfer.error or 'some recipients have no copy'}",
        highlight=False,
        markup=False,
    )


def _pace(transfer: Transfer, state: RecipientState) -> tuple[str, str]:
    """When a recipient's copy ended, from the transfer's start, and the rate it took: with a
    slow recipient, the transfer's own rate is the slow one's; these show who had it when."""
    began = transfer.started_at or transfer.created_at
    ended = f"{(state.finished_at - began).total_seconds():.1f} s" if state.finished_at else ""
    rate = f"{state.throughput_bps / 1e6:.1f}" if state.throughput_bps else ""
    return ended, rate


def transfers(
    transfer_id: Annotated[str | None, typer.Argument(help="Show one transfer in full.")] = None,
    limit: Annotated[int, typer.Option(help="How many of the newest to list.")] = 20,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """List transfers, newest first, or show one with each recipient."""
    with Client(server, token) as client:
        if transfer_id:
            one = client.transfer(transfer_id)
            if json_out:
                out.print_json(one.model_dump_json())
            else:
                out.print(
                    f"[bold]{one.id}[/] {one.mode.value} of {escape(one.file.name)} from "
                    f"{one.source_node}, created {one.created_at:%Y-%m-%d %H:%M:%S}",
                    highlight=False,
                )
                _print_outcome(one)
            return
        page = client.transfers(limit)
    if json_out:
        out.print_json(page.model_dump_json())
        return
    rows = [
        [
            t.id,
            t.status.value,
            t.file.name,
            binary_size(t.bytes_total),
            f"{t.source_node} → {_recipients(t)}",
            f"{t.throughput_bps / 1e6:.1f}" if t.throughput_bps else "",
            f"{t.created_at.astimezone():%H:%M:%S}",
        ]
        for t in page.transfers
    ]
    print_table(
        ["id", "status", "file", "size", "from → to", "MB/s", "created"],
        rows,
        whole=(0, 1),
        drop=(6, 5, 4, 3),
    )
    out.print(f"{len(page.transfers)} of {page.total}", style="dim")


def cancel(
    transfer_id: Annotated[str, typer.Argument(help="The transfer to stop.")],
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Cancel a transfer in flight (partial copies are removed); of one that ended unfinished,
    discard what its recipients kept to resume it."""
    with Client(server, token) as client:
        result = client.cancel(transfer_id)
    print_json_or(json_out, result.model_dump_json(), f"{result.id}: {result.status.value}")


def generate(
    size: Annotated[str, typer.Argument(help='Bytes, or with a unit: "10MB", "1.5GiB".')],
    content_type: Annotated[
        str, typer.Option("--type", help="random, text or pattern.")
    ] = "random",
    name: Annotated[str | None, typer.Option(help="File name in the library.")] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace a library file of that name.")
    ] = False,
    server: ServerOption = DEFAULT_SERVER,
    token: TokenOption = None,
    json_out: JsonOption = False,
) -> None:
    """Create a test file in the server's library (a file of that name is kept, unless
    --overwrite)."""
    with Client(server, token) as client:
        made = client.generate(size, content_type, name, overwrite)
    print_json_or(
        json_out,
        made.model_dump_json(),
        f"{made.file}: {made.size} bytes, BLAKE3 {made.blake3}",
    )


def files(
    server: ServerOption = DEFAULT_SERVER, token: TokenOption = None, json_out: JsonOption = False
) -> None:
    """List the files in the server's library."""
    with Client(server, token) as client:
        listed = client.files()
    if json_out:
        out.print_json(json.dumps([f.model_dump(mode="json") for f in listed]))
        return
    print_table(
        ["name", "bytes", "BLAKE3", "modified"],
        [[f.name, str(f.size), f.blake3, f"{f.modified:%Y-%m-%d %H:%M}"] for f in listed],
    )


def _recipients(transfer: Transfer) -> str:
    names = list(transfer.recipients)
    return names[0] if len(names) == 1 else f"{len(names)} nodes"
