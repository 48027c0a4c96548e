"""Transfer history and groups in SQLite under the data dir; they survive restarts.

Each transfer is stored whole as its JSON snapshot, written at every state change (not at
every progress tick). Calls block on disk: the services call them from worker threads.
"""

from __future__ import annotations

import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path

from castray.models import CopyRemoval, Group, Pin, Transfer, TransferStatus
from castray.server.transfer_state import interrupted

_SCHEMA = """
CREATE TABLE IF NOT EXISTS transfers (
    id TEXT PRIMARY KEY,
    created_at TEXT NOT NULL,
    status TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS transfers_by_time ON transfers (created_at DESC);
CREATE TABLE IF NOT EXISTS groups (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS removals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pins (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS clusters (
    name TEXT PRIMARY KEY,
    address TEXT NOT NULL,
    ray_token TEXT
);
"""


class History:
    """One SQLite file; one connection guarded by a lock."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)  # it may hold a Ray token: the user's alone
        path.chmod(0o600)
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # WAL with NORMAL sync cannot corrupt the database; a power cut may lose the last
        # few history rows, which is cheaper than an fsync per transfer state change.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # ---- transfers -------------------------------------------------------------------

    def save(self, transfer: Transfer) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO transfers (id, created_at, status, body) VALUES (?,?,?,?)",
                (
                    transfer.id,
                    transfer.created_at.isoformat(),
                    transfer.status.value,
                    transfer.model_dump_json(),
                ),
            )

    def get(self, transfer_id: str) -> Transfer | None:
        with self._lock:
            row = self._db.execute(
                "SELECT body FROM transfers WHERE id = ?", (transfer_id,)
            ).fetchone()
        return Transfer.model_validate_json(row[0]) if row else None

    def page(self, limit: int, offset: int) -> tuple[list[Transfer], int]:
        """Newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM transfers ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                (limit, offset),
            ).fetchall()
            total = self._db.execute("SELECT COUNT(*) FROM transfers").fetchone()[0]
        return [Transfer.model_validate_json(r[0]) for r in rows], int(total)

    def interrupt_unfinished(self) -> list[str]:
        """Mark transfers left queued or running by a previous run as interrupted; their ids."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM transfers WHERE status IN (?, ?)",
                (TransferStatus.QUEUED.value, TransferStatus.RUNNING.value),
            ).fetchall()
        now = datetime.now(timezone.utc)
        for (body,) in rows:
            transfer = Transfer.model_validate_json(body)
            self.save(
                interrupted(transfer, "CastRay stopped while this transfer was in flight", now)
            )
        return [Transfer.model_validate_json(body).id for (body,) in rows]

    def resumable_interrupted(self) -> list[str]:
        """Transfers that CastRay's stopping interrupted (gracefully or not) and whose
        recipients kept what they verified, oldest first: what ``auto_resume`` takes up."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM transfers WHERE status = ?",
                (TransferStatus.INTERRUPTED.value,),
            ).fetchall()
        found = [Transfer.model_validate_json(body) for (body,) in rows]
        return [t.id for t in sorted(found, key=lambda t: t.created_at) if t.resumable]

    # ---- storage sweeps ----------------------------------------------------------------

    def save_removals(self, removals: list[CopyRemoval]) -> None:
        with self._lock:
            self._db.executemany(
                "INSERT INTO removals (body) VALUES (?)", [(r.model_dump_json(),) for r in removals]
            )

    def removals(self, limit: int) -> list[CopyRemoval]:
        """The latest removals by a storage sweep, newest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM removals ORDER BY seq DESC LIMIT ?", (limit,)
            ).fetchall()
        return [CopyRemoval.model_validate_json(r[0]) for r in rows]

    # ---- external clusters -----------------------------------------------------------

    def clusters(self) -> list[tuple[str, str, str | None]]:
        """External clusters connected and not disconnected: name, address, Ray token given."""
        with self._lock:
            rows = self._db.execute("SELECT name, address, ray_token FROM clusters").fetchall()
        return [(str(n), str(a), t) for n, a, t in rows]

    def save_cluster(self, name: str, address: str, ray_token: str | None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO clusters (name, address, ray_token) VALUES (?, ?, ?)",
                (name, address, ray_token),
            )

    def forget_cluster(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM clusters WHERE name = ?", (name,))

    # ---- groups ----------------------------------------------------------------------

    def groups(self) -> list[Group]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM groups ORDER BY name").fetchall()
        return [Group.model_validate_json(r[0]) for r in rows]

    def save_group(self, group: Group) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO groups (name, body) VALUES (?, ?)",
                (group.name, group.model_dump_json()),
            )

    def delete_group(self, name: str) -> bool:
        with self._lock:
            cursor = self._db.execute("DELETE FROM groups WHERE name = ?", (name,))
        return cursor.rowcount > 0

    # ---- pins ------------------------------------------------------------------------

    def pins(self) -> list[Pin]:
        with self._lock:
            rows = self._db.execute("SELECT body FROM pins").fetchall()
        return [Pin.model_validate_json(r[0]) for r in rows]

    def save_pin(self, pin: Pin) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO pins (id, body) VALUES (?, ?)",
                (pin.id, pin.model_dump_json()),
            )

    def delete_pin(self, pin_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM pins WHERE id = ?", (pin_id,))
