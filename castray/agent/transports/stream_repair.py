"""How a stream run sends: the source's stream down the chain, and repairs: what sinks lack
after their streams ended, sent again from the source or a recipient upstream that has it,
to consecutive sinks re-linked into one chain. The run's state is ``StreamRun``'s
(``stream``).
"""

from __future__ import annotations

import logging
import time

import ray
from ray.exceptions import RayError

from castray.agent.dataplane import all_chunks
from castray.agent.reasons import cause_of, reason
from castray.agent.transports.stream_parts import (
    SOURCE_PROBE_TIMEOUT,
    Member,
    Recipient,
    Repair,
    Send,
    answers,
    runs_to_repair,
    supplier_for,
)
from castray.agent.transports.stream_state import RunState
from castray.errors import OriginFailed, SourceChanged

log = logging.getLogger(__name__)


class ChainRepairing(RunState):
    """Streams sent, and what a sink lacks sent again (the state is ``StreamRun``'s)."""

    def _send(
        self,
        supplier: Member,
        path: str | None,
        target: str,
        chunks: list[tuple[int, int, int]],
        forward: bool,
        to: list[Recipient] | None = None,
    ) -> None:
        ref = supplier.handle.send_stream.remote(
            self.spec.transfer_id,
            path,
            target,
            self.spec.secret,
            chunks,
            forward,
            self.spec.rate_limit,
        )
        self._sends[ref] = Send(supplier.id, to or [])
        self._asked_to_send.add(supplier.id)

    def _collect_sends(self) -> None:
        """Streams that ended: a source that died ends the transfer; a repair stream that
        failed is planned again at once, from another holder if there is one (its recipients
        may never have seen it start, and would otherwise wait for the stall timeout)."""
        if not self._sends:
            return
        ready, _ = ray.wait(list(self._sends), num_returns=len(self._sends), timeout=0)
        for ref in ready:
            sent = self._sends.pop(ref)
            try:
                self._served[sent.supplier] += int(ray.get(ref))
                continue
            except RayError as exc:
                why = reason(exc)
                if isinstance(cause_of(exc), OriginFailed):
                    self._origin_failed(why)
                    return
                if isinstance(cause_of(exc), SourceChanged):
                    self._error, self._error_passes = why, False
                    return
            source = self.spec.source
            if (
                source is not None
                and sent.supplier == source.id
                and not answers(source.handle, SOURCE_PROBE_TIMEOUT)
            ):
                self._error = f"the source {sent.supplier} died: {why}"
                return
            log.info(
                "transfer %s: a stream from %s ended early: %s",
                self.spec.transfer_id,
                sent.supplier,
                why,
            )
            if sent.targets:
                self._unfit.add(sent.supplier)
                now = time.monotonic()
                for recipient in sent.targets:
                    recipient.streams_before_repair = None
                    recipient.failed_repairs += 1
                    recipient.repair_after = now + min(8.0, 2.0 ** (recipient.failed_repairs - 1))

    def _repair(self) -> None:
        """Runs of consecutive open recipients whose streams ended with chunks missing get one
        repair stream each, re-linked around whoever is in between. Never waits: the
        re-links are asked for now, and the stream is sent once they are done
        (``_send_repairs``). A chunk that keeps arriving damaged fails its recipient after
        ``chunk_retries`` checks; chunks missing because a stream broke upstream are not
        retries (only repairs that bring nothing new, in a row, are)."""
        self._send_repairs()
        if not all(self._all_known(r) for r in self._recipients if r.open):
            return  # while the file is fetched, a chunk not verified may be unchecked yet
        retries = self.spec.tunables.chunk_retries
        for run in runs_to_repair(self._recipients):
            for recipient in run:
                status = recipient.status
                assert status is not None
                worst = max(status.damaged, key=lambda d: d[1], default=None)
                if worst is not None and worst[1] > retries:
                    self._fail(recipient, f"chunk {worst[0]} failed its check {worst[1]} times")
                    continue
                if status.verified_bytes > recipient.verified_at_repair:
                    recipient.fruitless = recipient.failed_repairs = 0
                elif recipient.failed_repairs == 0:  # a repair reached it and brought nothing
                    recipient.fruitless += 1
                if recipient.fruitless > retries:
                    self._fail(
                        recipient,
                        f"chunk {status.missing[0]} still missing after {recipient.fruitless} "
                        "attempts to send it (the stream to it kept breaking)",
                    )
            run = [r for r in run if r.open]
            if not run:
                continue
            missing = set().union(*(r.status.missing for r in run if r.status))
            supplier, path = supplier_for(self.spec, self._recipients, run[0], missing, self._unfit)
            self._unfit.clear()
            if supplier is None:
                for recipient in run:
                    self._fail(
                        recipient, "chunks are missing that no one in this cluster has left to send"
                    )
                continue
            relinks = []
            for position, recipient in enumerate(run):
                nxt = run[position + 1].member.data_address if position + 1 < len(run) else None
                relinks.append(recipient.member.handle.relink.remote(self.spec.transfer_id, nxt))
                recipient.streams_before_repair = recipient.status.streams_seen  # type: ignore[union-attr]
                recipient.verified_at_repair = recipient.status.verified_bytes  # type: ignore[union-attr]
            every = all_chunks(self.spec.size, self.spec.chunk_size)
            chunks = [c for c in every if c[0] in missing]
            resumed = all(r.resuming for r in run)
            for recipient in run:
                recipient.resuming = False
            if resumed:
                self._resumed += len(chunks)
            else:
                self._resent += len(chunks)
            log.info(
                "transfer %s: %s %d chunk(s) from %s to %s",
                self.spec.transfer_id,
                "resuming with" if resumed else "sending again",
                len(chunks),
                supplier.id,
                ", ".join(r.member.id for r in run),
            )
            self._repairs.append(Repair(run, supplier, path, chunks, relinks))
        self._send_repairs()

    def _send_repairs(self) -> None:
        """Send each repair whose re-links are done; a recipient whose re-link failed (its
        actor died) fails alone, and its run is planned again."""
        for repair in list(self._repairs):
            ready, _ = ray.wait(repair.relinks, num_returns=len(repair.relinks), timeout=0)
            if len(ready) < len(repair.relinks):
                continue
            self._repairs.remove(repair)
            broken = False
            for recipient, ref in zip(repair.run, repair.relinks, strict=True):
                try:
                    ray.get(ref)
                except RayError as exc:
                    self._cut_off(recipient, f"its actor or node died: {reason(exc)}")
                    broken = True
            if broken or not all(r.open for r in repair.run):
                for recipient in repair.run:
                    recipient.streams_before_repair = None
                continue
            head = repair.run[0].member.data_address
            self._send(repair.supplier, repair.path, head, repair.chunks, True, repair.run)
