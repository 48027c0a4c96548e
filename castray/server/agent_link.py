"""The server's side of the agent protocol: one agent process, its pipes, its requests.

The link never blocks the event loop: the agent is an asyncio subprocess, replies resolve
futures, and everything else the agent says is handed to ``on_message``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from castray.errors import AgentFailure, AgentTimeout, ClusterUnavailable, error_from_code
from castray.protocol import (
    AGENT_MESSAGE,
    AgentConfig,
    AgentMessage,
    Done,
    Operation,
    Reply,
    Request,
    Shutdown,
)

log = logging.getLogger(__name__)

LINE_LIMIT = 16 * 1024 * 1024
"""Longest protocol line accepted from an agent."""

RAY_AUTH_VARIABLES = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")
"""Ray's token settings: an agent gets only those its cluster may see, never the server's own."""
SERVER_SECRETS = ("CASTRAY_TOKEN", "CASTRAY_TOKEN_FILE")
"""The API token (and where it is): an agent, and every Ray worker it starts, has no use for
it, and a Ray worker's environment is visible to whatever runs in it."""

R = TypeVar("R", bound=BaseModel)
OnMessage = Callable[[AgentMessage], None]
OnExit = Callable[[int | None], None]


def _agent_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """This process's environment without Ray's token settings nor the API token."""
    dropped = {*RAY_AUTH_VARIABLES, *SERVER_SECRETS}
    return {k: v for k, v in environ.items() if k not in dropped}


class AgentLink:
    """Starts one agent process and talks to it."""

    def __init__(
        self, config: AgentConfig, log_file: Path, on_message: OnMessage, on_exit: OnExit
    ) -> None:
        self.config = config
        self.log_file = log_file
        self._on_message = on_message
        self._on_exit = on_exit
        self._process: asyncio.subprocess.Process | None = None
        self._pending: dict[int, asyncio.Future[Reply]] = {}
        self._ids = itertools.count(1)
        self._reader: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.returncode is None

    async def start(self, env: dict[str, str]) -> None:
        """Start the agent; ``env`` is added to this process's environment for it."""
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        with self.log_file.open("ab") as log_out:
            self._process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "castray.agent",
                self.config.model_dump_json(),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_out,
                limit=LINE_LIMIT,
                start_new_session=True,
                env={**_agent_environment(os.environ), **env},
            )
        self._reader = asyncio.create_task(self._read(), name=f"agent-{self.config.cluster}")

    async def request(self, body: Operation, reply: type[R], timeout: float) -> R:
        """Send one operation and wait for its reply, read as ``reply``; agent errors are
        raised as ours."""
        process = self._process
        if process is None or process.returncode is not None or process.stdin is None:
            raise ClusterUnavailable(f"the agent of cluster {self.config.cluster!r} is not running")
        request = Request(id=next(self._ids), body=body)
        future: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request.id] = future
        try:
            process.stdin.write(request.model_dump_json().encode() + b"\n")
            await process.stdin.drain()
            answer = await asyncio.wait_for(future, timeout)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise ClusterUnavailable(
                f"the agent of cluster {self.config.cluster!r} went away"
            ) from exc
        except TimeoutError as exc:
            raise AgentTimeout(
                f"the agent of cluster {self.config.cluster!r} did not answer {body.op} "
                f"within {timeout:g} s; its log is {self.log_file}"
            ) from exc
        finally:
            self._pending.pop(request.id, None)
        if answer.error_code is not None:
            raise error_from_code(answer.error_code, answer.error_message or "agent error")
        try:
            return reply.model_validate(answer.result or {})
        except ValidationError as exc:
            raise AgentFailure(
                f"the agent of cluster {self.config.cluster!r} answered {body.op} with "
                f"something that is not a {reply.__name__}"
            ) from exc

    async def stop(self, grace: float) -> None:
        """Ask the agent to shut down; within ``grace`` seconds in all, its whole process group
        (Ray's processes of an embedded cluster included) is gone."""
        process = self._process
        if process is None:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if process.returncode is None:
            with contextlib.suppress(Exception):
                await self.request(Shutdown(), Done, timeout=grace / 2)
            if process.stdin is not None:
                with contextlib.suppress(OSError, RuntimeError):
                    process.stdin.close()
            try:
                await asyncio.wait_for(process.wait(), max(deadline - loop.time(), 0.05))
            except TimeoutError:
                log.warning(
                    "agent of %s did not stop in %g s; killing it", self.config.cluster, grace
                )
        # Whatever the agent left running in its group goes with it.
        self._signal_group(signal.SIGKILL)
        await process.wait()
        if self._reader is not None:
            await self._reader

    def kill_group(self) -> None:
        """Kill whatever the agent left running in its process group (an embedded Ray's
        processes, after the agent itself died)."""
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self._process.pid, sig)

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        stdout = self._process.stdout
        while True:
            try:
                line = await stdout.readline()
            except ValueError:
                log.error("agent of %s sent an over-long line; ignored", self.config.cluster)
                continue
            if not line:
                break
            self._dispatch(line)
        code = await self._process.wait()
        for future in self._pending.values():
            if not future.done():
                future.set_exception(
                    AgentFailure(
                        f"the agent of cluster {self.config.cluster!r} exited (code {code}); "
                        f"its log is {self.log_file}"
                    )
                )
        self._on_exit(code)

    def _dispatch(self, line: bytes) -> None:
        try:
            message = AGENT_MESSAGE.validate_json(line)
        except ValidationError as exc:
            log.error("unreadable line from agent of %s: %s", self.config.cluster, exc)
            return
        if isinstance(message, Reply):
            future = self._pending.get(message.id)
            if future is not None and not future.done():
                future.set_result(message)
            return
        self._on_message(message)
