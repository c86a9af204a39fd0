"""The durable, bounded store-and-forward buffer (SQLite in WAL mode).

Why it is built this way:

* **Durable before it counts.** ``put()`` returns only after the batch is committed with
  ``synchronous=FULL``: a power cut after that cannot lose it (ARCHITECTURE rule 2).
* **Group commit.** Every device task awaits its own ``put()``; batches that arrive while a commit
  is running are committed together in the next transaction. One fsync serves many devices, which
  is what keeps a Raspberry Pi's SD card alive.
* **seq in the same transaction.** Each (device, kind) has a counter stored in the database and
  bumped in the transaction that inserts the batch, so a crash can neither lose nor reuse one.
  The counters are also *reserved* in blocks in a side file (``seq.json``, written atomically
  only once per block), so even if the database is lost or quarantined, numbering resumes above
  anything ever handed out: a consumer sees a gap (data was lost) but never a reused seq.
* **Bounded.** Used pages (``page_count - freelist_count``) are kept under ``max_size`` minus an
  allowance for the WAL, which is checkpointed and truncated before it outgrows that allowance.
  Freed pages are reused, so the file stays at its high-water mark instead of growing. When full,
  the oldest batches (any device) are dropped in the same transaction, counted, and logged once
  per episode.
* **Off the event loop.** One worker thread owns the connection; the loop only awaits futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agent.metrics import Metrics

log = logging.getLogger(__name__)

MIN_SIZE = 1_000_000
SEQ_RESERVATION = 10_000  # seqs reserved per side-file write (and the largest gap after a loss)
_ROW_OVERHEAD = 64  # bytes a row costs beyond its body (keys, header, b-tree cell), an estimate
_DROP_CHUNK = 64
_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS seqs (device TEXT NOT NULL, kind TEXT NOT NULL, last INTEGER NOT NULL,
                                 PRIMARY KEY (device, kind));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""


class BufferError(Exception):
    """A batch could not be committed (disk full, I/O error); nothing already committed is lost."""


@dataclass(frozen=True, slots=True)
class StoredBatch:
    id: int  # global insertion order
    device: str
    kind: str  # "data"; "event" for alarm events
    seq: int
    ts_ms: int  # when the device answered
    body: bytes  # opaque encoded record
    created: float  # time.time() when committed


@dataclass(frozen=True, slots=True)
class BufferStats:
    batches: int
    bytes: int
    dropped_total: int
    oldest_created: float | None


_Item = tuple[str, str, int, bytes]


class Buffer:
    def __init__(self, data_dir: Path, max_size: int, metrics: Metrics | None = None) -> None:
        if max_size < MIN_SIZE:
            raise ValueError(f"buffer max_size must be at least {MIN_SIZE} bytes")
        self.path = Path(data_dir) / "buffer.db"
        self._seq_file = Path(data_dir) / "seq.json"
        self.max_size = max_size
        self._metrics = metrics
        self._wal_allowance = min(max(max_size // 8, 128 * 1024), 16 * 1024 * 1024)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="buffer")
        self._conn: sqlite3.Connection | None = None
        self._page_size = 4096
        self._seqs: dict[tuple[str, str], int] = {}
        self._reserved: dict[tuple[str, str], int] = {}
        self._pending: list[tuple[_Item, asyncio.Future[int]]] = []
        self._committer: asyncio.Task[None] | None = None
        self._count = 0
        self._dropped = 0
        self._oldest: float | None = None
        self._bytes = 0
        self._bytes_checked = 0.0
        self._dropping_since: float | None = None
        self._closed = False
        self.commits = 0  # transactions that carried batches; tests check group commit with it
        self.new_data = asyncio.Event()  # set after each commit; the publisher waits on it

    # -- life cycle -------------------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)
        self._publish_stats()

    async def close(self) -> None:
        if self._closed:
            return
        if self._committer is not None:
            await asyncio.gather(self._committer, return_exceptions=True)
        self._closed = True
        with contextlib.suppress(Exception):
            await self._run(self._close)
        self._executor.shutdown(wait=True)

    # -- the API the event loop uses --------------------------------------------------------------

    async def put(self, device: str, ts_ms: int, body: bytes, kind: str = "data") -> int:
        """Commit one batch durably and return its seq (group-committed with concurrent puts)."""
        if self._closed:
            raise BufferError("buffer is closed")
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending.append(((device, kind, ts_ms, body), fut))
        if self._committer is None or self._committer.done():
            self._committer = asyncio.create_task(self._commit_pending(), name="buffer-commit")
        return await fut

    async def fetch(
        self, after_id: int, limit: int, upto_id: int | None = None
    ) -> list[StoredBatch]:
        """Batches with ``after_id < id <= upto_id``, oldest first."""
        rows: list[StoredBatch] = await self._run(self._fetch, after_id, limit, upto_id)
        return rows

    async def ack(self, ids: Sequence[int]) -> None:
        """Delete batches the broker acknowledged. Idempotent."""
        if ids:
            await self._run(self._ack, list(ids))
            self._publish_stats()

    async def max_id(self) -> int:
        last: int = await self._run(self._max_id)
        return last

    def stats(self) -> BufferStats:
        return BufferStats(self._count, self._bytes, self._dropped, self._oldest)

    # -- event-loop side of group commit ----------------------------------------------------------

    async def _commit_pending(self) -> None:
        while self._pending:
            group, self._pending = self._pending, []
            items = [item for item, _ in group]
            try:
                seqs = await self._run(self._commit, items)
            except Exception as exc:
                err = exc if isinstance(exc, BufferError) else BufferError(str(exc))
                for _, fut in group:
                    if not fut.done():
                        fut.set_exception(err)
            else:
                for (_, fut), seq in zip(group, seqs, strict=True):
                    if not fut.done():
                        fut.set_result(seq)
                self.new_data.set()
            self._publish_stats()

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def _publish_stats(self) -> None:
        m = self._metrics
        if m is None:
            return
        m.buffer_batches.set(self._count)
        m.buffer_bytes.set(self._bytes)
        m.buffer_oldest_age.set(max(0.0, time.time() - self._oldest) if self._oldest else 0.0)

    # -- worker thread ----------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        self._page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        conn.execute(
            f"PRAGMA wal_autocheckpoint={max(16, self._wal_allowance // 2 // self._page_size)}"
        )
        conn.execute(f"PRAGMA journal_size_limit={self._wal_allowance // 2}")
        return conn

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        reserved = self._load_seq_file()
        try:
            conn = self._connect()
            ok = conn.execute("PRAGMA quick_check").fetchone()[0]
            if ok != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {ok}")
            conn.executescript(_SCHEMA)
        except sqlite3.DatabaseError as exc:
            with contextlib.suppress(Exception):
                conn.close()
            self._quarantine(str(exc))
            conn = self._connect()
            conn.executescript(_SCHEMA)
        self._conn = conn
        fresh = conn.execute("SELECT count(*) FROM seqs").fetchone()[0] == 0
        self._seqs = {(d, k): last for d, k, last in conn.execute("SELECT * FROM seqs")}
        if fresh and reserved:
            # The database was lost or quarantined: resume above every seq ever reserved.
            self._seqs = dict(reserved)
            log.warning("sequence numbers resumed from seq.json after losing the buffer")
        self._reserved = dict(reserved)
        for key, last in self._seqs.items():
            self._reserved[key] = max(self._reserved.get(key, 0), last)
        self._count = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
        row = conn.execute("SELECT value FROM meta WHERE key='dropped'").fetchone()
        self._dropped = int(row[0]) if row else 0
        self._refresh_oldest()
        self._refresh_bytes(force=True)

    def _quarantine(self, reason: str) -> None:
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(str(self.path) + suffix)
            if src.exists():
                src.rename(Path(str(target) + suffix))
        log.error(
            "buffer database unreadable: moved aside, starting with an empty buffer",
            extra={"file": str(self.path), "moved_to": str(target), "reason": reason},
        )

    def _load_seq_file(self) -> dict[tuple[str, str], int]:
        try:
            doc = json.loads(self._seq_file.read_text())
            return {(d, k): int(v) for d, kinds in doc.items() for k, v in kinds.items()}
        except (OSError, ValueError, AttributeError, TypeError):
            return {}

    def _save_seq_file(self, reserved: dict[tuple[str, str], int]) -> None:
        doc: dict[str, dict[str, int]] = {}
        for (device, kind), value in reserved.items():
            doc.setdefault(device, {})[kind] = value
        tmp = self._seq_file.with_suffix(".tmp")
        with open(tmp, "w") as f:
            json.dump(doc, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._seq_file)
        dir_fd = os.open(self._seq_file.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

    def _used_bytes(self, conn: sqlite3.Connection) -> int:
        pages = conn.execute("PRAGMA page_count").fetchone()[0]
        free = conn.execute("PRAGMA freelist_count").fetchone()[0]
        return int((pages - free) * self._page_size)

    def _commit(self, items: list[_Item]) -> list[int]:
        conn = self._conn
        if conn is None:
            raise BufferError("buffer is not open")
        budget = self.max_size - self._wal_allowance
        incoming = sum(len(body) + _ROW_OVERHEAD for *_, body in items)
        if incoming > budget // 2:
            raise BufferError(f"batch of {incoming} bytes does not fit in the buffer")
        seqs_after = dict(self._seqs)
        out: list[int] = []
        rows = []
        now = time.time()
        for device, kind, ts_ms, body in items:
            seq = seqs_after.get((device, kind), 0) + 1
            seqs_after[(device, kind)] = seq
            out.append(seq)
            rows.append((device, kind, seq, ts_ms, now, body))
        reserved = dict(self._reserved)
        if any(seq > reserved.get(key, 0) for key, seq in seqs_after.items()):
            for key, seq in seqs_after.items():
                if seq > reserved.get(key, 0):
                    reserved[key] = seq + SEQ_RESERVATION
            self._save_seq_file(reserved)
        dropped = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            # Make room first, so the inserts reuse the freed pages instead of growing the file.
            while self._count - dropped > 0 and self._used_bytes(conn) + incoming > budget:
                dropped += self._drop_oldest(conn)
            conn.executemany(
                "INSERT INTO batches (device, kind, seq, ts_ms, created, body) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                rows,
            )
            while self._used_bytes(conn) > budget and self._count - dropped > 0:
                dropped += self._drop_oldest(conn)
            conn.executemany(
                "INSERT OR REPLACE INTO seqs (device, kind, last) VALUES (?, ?, ?)",
                [(d, k, s) for (d, k), s in seqs_after.items() if self._seqs.get((d, k)) != s],
            )
            if dropped:
                conn.execute(
                    "INSERT OR REPLACE INTO meta (key, value) VALUES ('dropped', ?)",
                    (self._dropped + dropped,),
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            self._log_commit_failure(exc)
            raise BufferError(f"commit failed: {exc}") from exc
        self._seqs = seqs_after
        self._reserved = reserved
        self.commits += 1
        self._count += len(items) - dropped
        if self._oldest is None or dropped:
            self._refresh_oldest()
        if dropped:
            self._dropped += dropped
            if self._metrics is not None:
                self._metrics.buffer_dropped.inc(dropped)
            self._log_drop(dropped)
        elif self._dropping_since is not None:
            self._dropping_since = None
        self._keep_wal_small(conn)
        self._refresh_bytes()
        return out

    def _drop_oldest(self, conn: sqlite3.Connection) -> int:
        cur = conn.execute(
            "DELETE FROM batches WHERE id IN (SELECT id FROM batches ORDER BY id LIMIT ?)",
            (_DROP_CHUNK,),
        )
        return int(cur.rowcount)

    def _log_drop(self, n: int) -> None:
        now = time.monotonic()
        if self._dropping_since is None or now - self._dropping_since > 60:
            self._dropping_since = now
            log.warning(
                "buffer full: dropping the oldest batches",
                extra={"dropped": n, "dropped_total": self._dropped, "max_size": self.max_size},
            )

    def _log_commit_failure(self, exc: sqlite3.Error) -> None:
        log.error(
            "buffer commit failed; batches of this cycle not stored", extra={"error": str(exc)}
        )

    def _keep_wal_small(self, conn: sqlite3.Connection) -> None:
        wal = Path(str(self.path) + "-wal")
        try:
            size = wal.stat().st_size
        except OSError:
            return
        if size > self._wal_allowance * 3 // 4:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    def _refresh_oldest(self) -> None:
        assert self._conn is not None
        row = self._conn.execute("SELECT created FROM batches ORDER BY id LIMIT 1").fetchone()
        self._oldest = float(row[0]) if row else None

    def _refresh_bytes(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._bytes_checked < 1.0:
            return
        self._bytes_checked = now
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(str(self.path) + suffix).st_size
        self._bytes = total

    def _fetch(self, after_id: int, limit: int, upto_id: int | None) -> list[StoredBatch]:
        assert self._conn is not None
        if upto_id is None:
            cur = self._conn.execute(
                "SELECT id, device, kind, seq, ts_ms, body, created FROM batches "
                "WHERE id > ? ORDER BY id LIMIT ?",
                (after_id, limit),
            )
        else:
            cur = self._conn.execute(
                "SELECT id, device, kind, seq, ts_ms, body, created FROM batches "
                "WHERE id > ? AND id <= ? ORDER BY id LIMIT ?",
                (after_id, upto_id, limit),
            )
        return [StoredBatch(*row) for row in cur]

    def _ack(self, ids: list[int]) -> None:
        assert self._conn is not None
        try:
            self._conn.execute("BEGIN")
            cur = self._conn.executemany("DELETE FROM batches WHERE id = ?", [(i,) for i in ids])
            self._conn.execute("COMMIT")
        except sqlite3.Error as exc:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("ROLLBACK")
            log.error("buffer delete failed; batches will be sent again", extra={"error": str(exc)})
            return
        self._count -= max(0, cur.rowcount)
        self._refresh_oldest()
        self._refresh_bytes()

    def _max_id(self) -> int:
        assert self._conn is not None
        row = self._conn.execute("SELECT max(id) FROM batches").fetchone()
        return int(row[0]) if row and row[0] is not None else 0

    def _close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self._conn.close()
            self._conn = None
