"""The durable, bounded store-and-forward buffer: SQLite in WAL mode on local disk.

Why it is built this way:

* **Durable before it counts** (ARCHITECTURE rule 2). ``put()`` returns only after the batch is
  committed with ``synchronous=FULL``, so a power cut after that cannot lose it.
* **Group commit.** Each device task awaits its own ``put()``; batches that arrive while a commit
  runs go together into the next transaction, so one fsync serves many devices. That is what keeps
  an SD card alive and lets a slow card keep up with hundreds of devices.
* **One worker thread owns the connection** (rule 7): the event loop only awaits futures. Every
  SQLite call, fsync and ``stat()`` runs there, serialised, so no locking is needed around state.
* **seq is allocated in the transaction that inserts the batch**, from a counter table, so a crash
  can neither lose nor reuse one. Counters are also *reserved* in blocks of ``SEQ_RESERVATION`` in
  ``seq.json`` (written atomically, and fsynced *before* the commit that first uses a new block), so
  if the database is lost or quarantined numbering resumes above every seq ever handed out. The
  price is one extra fsync per block per device, and a gap of at most one block after a loss,
  which a consumer reads as "batches were lost" (true). A fixed jump over a periodically written
  value would be cheaper but is only probably safe; the reservation is certain.
* **Bounded** (rule 3). SQLite never shrinks its file after ``DELETE`` but reuses freed pages, so
  the bound is enforced on *used* pages (``page_count - freelist_count``), measured inside the
  transaction after the insert: if they exceed the budget, the insert is rolled back to a
  savepoint, the oldest batches (any device) are deleted, and the insert is redone, all in one
  transaction. Measuring instead of estimating makes the bound exact whatever the body sizes (a
  2 KB body wastes half a 4 KB page; a 5 KB one spills to an overflow page). The budget is
  ``max_size`` minus a WAL allowance, and the WAL is kept inside that allowance by checkpointing
  often, truncating it (``journal_size_limit``) and capping how much one transaction may carry.
  Drops are counted (metric, ``stats()``, and in the database, so the total survives restarts) and
  logged once per episode.
* **Disk full** (``SQLITE_FULL``) rolls back: nothing committed is touched, seq counters do not
  move, callers get ``BufferError`` and the next ``put()`` tries again. Before giving up, one retry
  deletes the oldest batches so the insert reuses their pages and neither file has to grow; the
  WAL file keeps ``journal_size_limit`` bytes allocated after a checkpoint, which gives that retry
  room to write.
* **Corruption** found at ``open()`` moves the files aside (``buffer.db.corrupt-<UTC time>``) and
  starts empty; seq resumes from ``seq.json`` (and whatever counters can still be read from the bad
  file), never below a seq already handed out.
* **Acks are not fsynced.** Deleting published rows commits with ``synchronous=NORMAL``: the next
  put's fsync makes it durable, and losing one to a power cut only means those batches are sent
  again, which QoS 1 consumers dedupe by (agent, device, seq). That halves the fsyncs at steady
  state.
* **Several destinations, one copy** (``outputs:``). Each row carries ``want``, a bit mask of
  the destinations that want it (each destination has a stable bit, kept in the ``outputs``
  table). A destination's acknowledgement of a row others still want is one small row in
  ``marks`` (``acked``/``held`` masks, keyed by the batch's id): the body is never rewritten. The
  row is deleted when every destination it wants has acknowledged it; with one destination an
  ack is the plain delete it always was. Each destination fetches the rows it wants and has
  neither acknowledged nor set aside, so a dead destination's backlog costs the live one
  nothing but an index lookup per row. Drops (the size bound) take the oldest rows across all
  and are counted per destination that had not acknowledged them.
* **One process per data directory**: an exclusive ``flock`` on ``buffer.lock``, because two
  writers would hand out the same seqs.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from agent.core.buffer import bodies
from agent.ops.metrics import Metrics

log = logging.getLogger(__name__)

MIN_SIZE = 1_000_000
"""Smallest ``max_size`` accepted. Below it the WAL allowance and per-transaction cap would leave
room for only a handful of batches."""

SEQ_RESERVATION = 10_000
"""seqs reserved per ``seq.json`` write; also the largest gap a lost database can leave."""

PAGE_SIZE = 1024
"""Page size of a new database. Every commit rewrites whole pages (the last, partly filled
leaf, the seq counters, the AUTOINCREMENT counter, b-tree interior pages, the free list), so at
shop-floor rates, with a few small batches per commit, small pages are what keep the bytes
written close to the bytes stored (docs/performance.md); SQLite's 4 KB default wrote four
times the overhead. Bodies larger than a page spill to overflow pages, as they did before."""

CACHE_KIB = 256
"""SQLite's page cache per connection, in KiB (its default is 2,000): after an outage the
default one kept 2 MB of drained bodies for good."""


_WAL_MIN = 128 * 1024
_WAL_MAX = 16 * 1024 * 1024
_RECORD_OVERHEAD = 30  # record header and the seq, ts_ms, created columns of one row
_LOG_INTERVAL = 60.0  # seconds between two log lines of one drop (or disk-full) episode
_STAT_INTERVAL = 1.0  # seconds between two stat() calls for the buffer_bytes gauge
_DISK_RESERVE = 256 * 1024  # left free on the file system: seq.json, the -shm file, the lock
_CORRUPT = frozenset({"SQLITE_CORRUPT", "SQLITE_NOTADB"})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ms INTEGER NOT NULL,
    created REAL NOT NULL,
    body BLOB NOT NULL,
    want INTEGER NOT NULL DEFAULT 1
);
CREATE TABLE IF NOT EXISTS marks (
    id INTEGER PRIMARY KEY,
    acked INTEGER NOT NULL DEFAULT 0,
    held INTEGER NOT NULL DEFAULT 0,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS outputs (name TEXT PRIMARY KEY, bit INTEGER NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS seqs (
    device TEXT NOT NULL,
    kind TEXT NOT NULL,
    last INTEGER NOT NULL,
    PRIMARY KEY (device, kind)
);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
"""
# Held (quarantined) rows: a batch a destination's format could not pack keeps its row, its id
# and its seq, marked (in ``marks.held``, per destination) with the reason, so it is never
# acknowledged unsent and can be published once a fixed agent (or a changed format) can pack
# it. The partial index holds only marks with a held bit: counting and releasing them is cheap.
_HELD_INDEX = "CREATE INDEX IF NOT EXISTS marks_held ON marks (id) WHERE held != 0"
_INSERT = (
    "INSERT INTO batches (device, kind, seq, ts_ms, created, body, want) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_SELECT = "SELECT b.id, b.device, b.kind, b.seq, b.ts_ms, b.body, b.created, b.want FROM batches b"
# The rows destination ``:bit`` still has to send: wanted, neither acknowledged nor held by it.
_MINE = (
    "LEFT JOIN marks m ON m.id = b.id WHERE b.want & :bit "
    "AND (m.id IS NULL OR (m.acked | m.held) & :bit = 0)"
)
_MARKS_OF = "SELECT b.id, b.want, coalesce(m.acked, 0), coalesce(m.held, 0) FROM batches b "
DEFAULT_OUTPUT = "default"
"""The ``mqtt`` section's destination: bit 0, the only one a buffer without ``outputs`` has."""
MAX_OUTPUTS = 62  # bits of a SQLite integer mask we use (sign bit left alone)

_Key = tuple[str, str]  # (device, kind)
Item = tuple[str, str, int, bytes, int]  # device, kind, ts_ms, body, want (destination mask)


class BufferError(Exception):
    """A batch was not committed (disk full, I/O error, too large, buffer closed).

    Nothing committed before is lost, and no seq was consumed: the next ``put()`` may succeed.
    """


@dataclass(frozen=True, slots=True)
class StoredBatch:
    id: int  # row id: global insertion order, never reused (AUTOINCREMENT)
    device: str
    kind: str  # what the row is: "data" (values, windows, features) or "event" (alarms)
    seq: int  # per (device, kind); the same for every destination
    ts_ms: int  # when the device answered
    body: bytes  # opaque encoded record; the buffer never looks inside (kept deflated: bodies)
    created: float  # time.time() when committed
    want: int = 1  # the destinations that want it (bit mask, see SqliteStore.set_outputs)


@dataclass(frozen=True, slots=True)
class OutputBacklog:
    """One destination's share of the buffer."""

    batches: int  # rows it wants and has not acknowledged (held ones included)
    oldest_created: float | None  # the oldest of those it can still send
    dropped_total: int  # rows the size bound dropped before it acknowledged them
    quarantined: int = 0  # rows its format could not pack (set aside for it)
    quarantine_reason: str | None = None


@dataclass(frozen=True, slots=True)
class BufferStats:
    batches: int
    bytes: int  # database + WAL on disk, refreshed at most once a second
    dropped_total: int  # since the database was created, restarts included
    oldest_created: float | None
    quarantined: int = 0  # rows some destination set aside: its format could not pack them
    quarantine_reason: str | None = None
    outputs: dict[str, OutputBacklog] | None = None


class _Corrupt(Exception):
    pass


class _NoRoom(Exception):
    pass


def _footprint(payload: int, page_size: int) -> int:
    """Bytes one row of ``payload`` record bytes occupies in an append-only table b-tree.

    It follows SQLite's layout rules (cells never straddle leaf pages; payloads past the local
    limit spill to whole overflow pages), so a transaction's WAL frames and the room a drop frees
    can be sized before running it. It only sizes; the bound itself is measured, not estimated.
    """
    usable = page_size
    max_local = usable - 35
    if payload <= max_local:
        local, overflow = payload, 0
    else:
        min_local = (usable - 12) * 32 // 255 - 23
        k = min_local + (payload - min_local) % (usable - 4)
        local = k if k <= max_local else min_local
        overflow = -(-(payload - local) // (usable - 4))
    cell = local + 14 + (4 if overflow else 0)  # varints, cell pointer, overflow page number
    per_page = max(1, (usable - 8) // cell)
    return overflow * usable + -(-usable // per_page)


class SqliteStore:
    """The synchronous half: everything here runs on the buffer's single worker thread."""

    def __init__(self, data_dir: Path, max_size: int, metrics: Metrics | None) -> None:
        self.path = data_dir / "buffer.db"
        self.seq_path = data_dir / "seq.json"
        self.lock_path = data_dir / "buffer.lock"
        self.max_size = max_size
        self.metrics = metrics
        # WAL allowance: an eighth of the buffer, within bounds; the database gets the rest. The
        # WAL peaks at the checkpoint threshold (a quarter of it) plus one transaction (its rows
        # capped at a half), the last quarter is for the other pages a transaction rewrites.
        # After a checkpoint the file is cut back to a quarter.
        self.wal_allowance = min(max(max_size // 8, _WAL_MIN), _WAL_MAX)
        self.txn_cap = self.wal_allowance // 2
        self.page_size = 4096
        self.budget_pages = 0  # the bound on used pages in force now (see _fit_to_disk)
        self.max_budget_pages = 0  # the bound max_size alone sets
        self.limit = max_size  # max_size, or less while the file system has less room
        self.wal_limit = self.wal_allowance
        self._max_body: int | None = None
        self.conn: sqlite3.Connection | None = None
        self.lock_fd: int | None = None
        self.seqs: dict[_Key, int] = {}
        self.reserved: dict[_Key, int] = {}
        self.count = 0  # every row, held ones included: they occupy the buffer too
        self.held = 0  # rows some destination set aside because its format could not pack them
        self.held_reason: str | None = None  # the latest reason, for the status page
        self.dropped_total = 0
        self.oldest: float | None = None
        self.disk_bytes = 0
        self.commits = 0
        # Destinations: name -> bit mask (bit 0 is the ``mqtt`` section's, always there).
        self.outputs: dict[str, int] = {DEFAULT_OUTPUT: 1}
        self.backlog: dict[int, int] = {1: 0}  # per destination mask: rows it has to send
        self.held_by: dict[int, int] = {1: 0}
        self.held_reasons: dict[int, str | None] = {}
        self.dropped_by: dict[int, int] = {1: 0}
        self.oldest_by: dict[int, tuple[int, float] | None] = {1: None}  # (id, created)
        self.scan_from: dict[int, int] = {}  # per mask: no row it has to send lies below
        self._drops: dict[int, int] = {}  # per mask, in the transaction running now
        self._dropped_at: float | None = None  # monotonic time of the latest drop
        # Acknowledgements to apply in the next insert transaction, and what it applied.
        self._acks_waiting: list[tuple[int, list[int]]] = []
        self._acks_applied: list[tuple[int, int, int | None]] = []
        self._stat_at = 0.0
        self._drop_logged_at: float | None = None
        self._drops_unlogged = 0
        self._full_logged_at: float | None = None

    # -- open / close -----------------------------------------------------------------------------

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock()
        except OSError as exc:
            raise BufferError(f"cannot open {self.path}: {exc}") from exc
        try:
            self._open_locked()
        except (OSError, sqlite3.Error) as exc:
            self.close()
            raise BufferError(f"cannot open {self.path}: {exc}") from exc
        except BaseException:
            self.close()
            raise

    def _open_locked(self) -> None:
        reserved = self._load_seq_file()
        try:
            conn = self._connect_checked()
        except _Corrupt as exc:
            salvaged = self._quarantine(str(exc))
            for key, last in salvaged.items():
                reserved[key] = max(reserved.get(key, 0), last)
            conn = self._connect_checked()
        self.conn = conn
        self.max_budget_pages = (self.max_size - self.wal_allowance) // self.page_size
        self.budget_pages = self.max_budget_pages
        self._fit_to_disk(self._file_bytes())
        self._initialise(reserved)
        self.seqs = {(d, k): last for d, k, last in conn.execute("SELECT * FROM seqs")}
        for key, last in self.seqs.items():
            # A commit moves a counter at most one group past the reservation that preceded it,
            # so a counter far below seq.json belongs to an older copy of the database (restored
            # from a backup, say): jump, a gap is honest, a reused seq is not.
            if reserved.get(key, 0) - last > 2 * SEQ_RESERVATION:
                log.warning(
                    "buffer database is older than seq.json: seq numbering jumps ahead",
                    extra={"device": key[0], "kind": key[1], "last": last, "to": reserved[key]},
                )
                self.seqs[key] = reserved[key]
        self.reserved = dict(reserved)
        for key, last in self.seqs.items():
            self.reserved[key] = max(self.reserved.get(key, 0), last)
        self.outputs = {str(n): 1 << int(b) for n, b in conn.execute("SELECT * FROM outputs")}
        self.count = conn.execute("SELECT count(*) FROM batches").fetchone()[0]
        for name, value in conn.execute("SELECT key, value FROM meta WHERE key LIKE 'dropped%'"):
            if name == "dropped":
                self.dropped_total = int(value)
            elif name.removeprefix("dropped:") in self.outputs:
                self.dropped_by[self.outputs[name.removeprefix("dropped:")]] = int(value)
        self._count_outputs()
        self._fit()
        self._refresh_oldest()
        self._refresh_bytes(force=True)

    def _lock(self) -> None:
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise BufferError(
                f"{self.path.parent} is in use by another process (two writers would reuse seqs)"
            ) from exc
        self.lock_fd = fd

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, isolation_level=None, timeout=0)
        # Only a new database takes it (before its first table); one made by an earlier version
        # keeps its pages, the code sizes everything by the page size it finds.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0] != "wal":
            log.warning("buffer: WAL mode unavailable, using a rollback journal")
        conn.execute("PRAGMA synchronous=FULL")
        # Debian's SQLite zeroes freed pages by default; that doubles the writes of every ack and
        # drop for no benefit here, the pages are reused by the next inserts anyway.
        conn.execute("PRAGMA secure_delete=OFF")
        # The pages a commit touches are few and hot (the newest leaf, the interior pages, the
        # free list): SQLite's default 2 MB cache only held more of a backlog's bodies, which a
        # drain reads once each (from the OS's cache, not the card).
        conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self.page_size = int(conn.execute("PRAGMA page_size").fetchone()[0])
        self._max_body = None
        checkpoint_pages = max(4, self.wal_limit // 4 // self.page_size)
        conn.execute(f"PRAGMA wal_autocheckpoint={checkpoint_pages}")
        conn.execute(f"PRAGMA journal_size_limit={self.wal_limit // 4}")
        return conn

    def _connect_checked(self) -> sqlite3.Connection:
        """Connect and verify; corruption raises ``_Corrupt``, anything else ``BufferError``."""
        conn: sqlite3.Connection | None = None
        try:
            conn = self._connect()
            problems = [r[0] for r in conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise _Corrupt("quick_check: " + "; ".join(problems[:5]))
            return conn
        except sqlite3.Error as exc:
            if conn is not None:
                with contextlib.suppress(sqlite3.Error):
                    conn.close()
            if getattr(exc, "sqlite_errorname", None) in _CORRUPT:
                raise _Corrupt(str(exc)) from exc
            raise BufferError(f"cannot open {self.path}: {exc}") from exc
        except _Corrupt:
            assert conn is not None
            conn.close()
            raise

    def _initialise(self, reserved: dict[_Key, int]) -> None:
        """Create the schema, migrate an older one; in a database new to this directory, seed
        the seq counters.

        A database without the ``initialised`` mark is new (first start, deleted or quarantined):
        its counters start above every seq ``seq.json`` has reserved. The seeding is committed
        with the mark, so a crash during it just repeats it. Counters already in the table are
        authoritative, they moved in the same transactions as the inserts.
        """
        conn = self._require()
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)
            self._migrate()
            conn.execute(_HELD_INDEX)
            conn.execute(
                "INSERT OR IGNORE INTO outputs (name, bit) VALUES (?, 0)", (DEFAULT_OUTPUT,)
            )
            if conn.execute("SELECT 1 FROM meta WHERE key = 'initialised'").fetchone() is None:
                existing = {(d, k) for d, k, _ in conn.execute("SELECT * FROM seqs")}
                conn.executemany(
                    "INSERT INTO seqs (device, kind, last) VALUES (?, ?, ?)",
                    [(d, k, v) for (d, k), v in reserved.items() if (d, k) not in existing],
                )
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('initialised', ?)", (int(time.time()),)
                )
                if reserved:
                    log.warning(
                        "buffer database is new: seq numbering resumes above the known counters",
                        extra={"file": str(self.path), "devices": len(reserved)},
                    )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise BufferError(f"cannot initialise {self.path}: {exc}") from exc

    def _migrate(self) -> None:
        """Bring a buffer written by an earlier version to this schema, in the open transaction.

        * Rows of one destination only (no ``want`` column): they are the ``mqtt`` section's.
        * Held rows (a ``held`` reason column): held for that destination, in ``marks``.
        * Alarm events stored as device ``<device>/event``, kind ``data``: device ``<device>``,
          kind ``event`` (the kind column says what a row is), their seq counters likewise.
        """
        conn = self._require()
        columns = {r[1] for r in conn.execute("PRAGMA table_info(batches)")}
        if "want" not in columns:
            conn.execute("ALTER TABLE batches ADD COLUMN want INTEGER NOT NULL DEFAULT 1")
        if "held" in columns:
            conn.execute(
                "INSERT OR REPLACE INTO marks (id, acked, held, reason) "
                "SELECT id, 0, want, held FROM batches WHERE held IS NOT NULL"
            )
            conn.execute("DROP INDEX IF EXISTS batches_held")
            conn.execute("ALTER TABLE batches DROP COLUMN held")
        suffixed = "instr(device, '/') > 0 AND kind = 'data'"
        head = "substr(device, 1, instr(device, '/') - 1)"
        tail = "substr(device, instr(device, '/') + 1)"
        if conn.execute(f"SELECT 1 FROM seqs WHERE {suffixed} LIMIT 1").fetchone():
            conn.execute(f"UPDATE batches SET device = {head}, kind = {tail} WHERE {suffixed}")
            conn.execute(
                f"UPDATE OR IGNORE seqs SET device = {head}, kind = {tail} WHERE {suffixed}"
            )
            conn.execute(f"DELETE FROM seqs WHERE {suffixed}")

    def set_outputs(self, names: list[str]) -> dict[str, int]:
        """The destinations in the config now; returns each one's bit mask.

        A destination keeps its bit across restarts (the ``outputs`` table); a new one takes a
        free bit and wants only the batches committed from now on. A destination no longer in
        the config lets go of its rows: its bit is cleared from every row and mark, and rows no
        other destination wants are deleted (not counted as drops: nobody is missing them)."""
        conn = self._require()
        names = [DEFAULT_OUTPUT, *(n for n in names if n != DEFAULT_OUTPUT)]
        if len(names) > MAX_OUTPUTS:
            raise BufferError(f"at most {MAX_OUTPUTS} destinations, not {len(names)}")
        current = dict(self.outputs)
        gone = {n: m for n, m in current.items() if n not in names}
        removed = 0
        try:
            conn.execute("BEGIN IMMEDIATE")
            used = {m for n, m in current.items() if n not in gone}
            for name in names:
                if name in current:
                    continue
                bit = next(b for b in range(MAX_OUTPUTS) if 1 << b not in used)
                used.add(1 << bit)
                current[name] = 1 << bit
                conn.execute("INSERT INTO outputs (name, bit) VALUES (?, ?)", (name, bit))
            for name, mask in gone.items():
                conn.execute("DELETE FROM outputs WHERE name = ?", (name,))
                conn.execute("DELETE FROM meta WHERE key = ?", (f"dropped:{name}",))
                conn.execute("UPDATE batches SET want = want & ~? WHERE want & ?", (mask, mask))
                conn.execute(
                    "UPDATE marks SET acked = acked & ~?1, held = held & ~?1 "
                    "WHERE (acked | held) & ?1",
                    (mask,),
                )
                removed += int(conn.execute("DELETE FROM batches WHERE want = 0").rowcount)
            if gone:
                conn.execute(
                    "DELETE FROM marks WHERE NOT EXISTS "
                    "(SELECT 1 FROM batches b WHERE b.id = marks.id)"
                )
                # A row every remaining destination has sent is done.
                removed += int(
                    conn.execute(
                        "DELETE FROM batches WHERE id IN (SELECT b.id FROM batches b JOIN marks m "
                        "ON m.id = b.id WHERE b.want & ~m.acked = 0)"
                    ).rowcount
                )
                conn.execute(
                    "DELETE FROM marks WHERE NOT EXISTS "
                    "(SELECT 1 FROM batches b WHERE b.id = marks.id)"
                )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise BufferError(f"cannot change the destinations: {exc}") from exc
        if gone:
            log.info(
                "destinations removed: their unsent batches no other destination wants deleted",
                extra={"outputs": sorted(gone), "batches": removed},
            )
        self.outputs = {n: m for n, m in current.items() if n not in gone}
        self.count -= removed
        self._count_outputs()
        self._refresh_oldest()
        return dict(self.outputs)

    def _count_outputs(self) -> None:
        """Per destination: the rows it has to send (start, and after the set changed)."""
        conn = self._require()
        masks = list(self.outputs.values())
        self.backlog = dict.fromkeys(masks, 0)
        self.dropped_by = {m: self.dropped_by.get(m, 0) for m in masks}
        self.oldest_by = {m: None for m in masks}
        self.scan_from = {}
        for m in masks:
            row = conn.execute(f"SELECT count(*) FROM batches b {_MINE}", {"bit": m}).fetchone()
            held = conn.execute(
                "SELECT count(*) FROM batches b JOIN marks m ON m.id = b.id "
                "WHERE m.held & :bit AND NOT m.acked & :bit",
                {"bit": m},
            ).fetchone()
            self.backlog[m] = int(row[0]) + int(held[0])
        self._count_held()

    def _name_of(self, mask: int) -> str:
        return next(
            (n for n, m in self.outputs.items() if m == mask), f"bit{mask.bit_length() - 1}"
        )

    def _mask(self, output: str) -> int:
        try:
            return self.outputs[output]
        except KeyError:
            raise BufferError(f"no destination named {output!r}") from None

    def output_stats(self) -> dict[str, OutputBacklog]:
        out = {}
        for name, m in self.outputs.items():
            oldest = self.oldest_by.get(m)
            out[name] = OutputBacklog(
                self.backlog.get(m, 0),
                oldest[1] if oldest is not None else None,
                self.dropped_by.get(m, 0),
                self.held_by.get(m, 0),
                self.held_reasons.get(m),
            )
        return out

    def _quarantine(self, reason: str) -> dict[_Key, int]:
        """Move the unreadable files aside and return whatever seq counters they still hold."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        n = 0
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.corrupt-{stamp}-{n}")
        for suffix in ("", "-wal", "-shm"):
            src = Path(f"{self.path}{suffix}")
            if src.exists():
                src.rename(Path(f"{target}{suffix}"))
        log.error(
            "buffer database is corrupt: moved aside, starting with an empty buffer "
            "(unpublished batches in it are lost)",
            extra={"file": str(self.path), "moved_to": str(target), "reason": reason},
        )
        salvaged: dict[_Key, int] = {}
        with contextlib.suppress(Exception):
            bad = sqlite3.connect(f"file:{target}?mode=ro", uri=True)
            try:
                for device, kind, last in bad.execute("SELECT device, kind, last FROM seqs"):
                    salvaged[_key(str(device), str(kind))] = int(last)
            finally:
                bad.close()
        return salvaged

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(sqlite3.Error):
                # Leaves a single file behind, and an empty WAL for the next start to recover.
                self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            with contextlib.suppress(sqlite3.Error):
                self.conn.close()
            self.conn = None
            self._refresh_bytes(force=True)
        if self._drops_unlogged:
            self._log_drops(0, force=True)
        if self.lock_fd is not None:
            os.close(self.lock_fd)  # releases the flock
            self.lock_fd = None

    # -- seq reservations -------------------------------------------------------------------------

    def _load_seq_file(self) -> dict[_Key, int]:
        try:
            doc = json.loads(self.seq_path.read_text())
            return {_key(d, k): int(v) for d, kinds in doc.items() for k, v in kinds.items()}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            log.warning(
                "seq.json unreadable; seq numbering relies on the database alone until rewritten",
                extra={"file": str(self.seq_path), "error": str(exc)},
            )
            return {}

    def _reserve(self, new: dict[_Key, int]) -> None:
        """Make sure ``seq.json`` covers every seq about to be committed (fsync before commit)."""
        if all(seq <= self.reserved.get(key, 0) for key, seq in new.items()):
            return
        reserved = dict(self.reserved)
        for key, seq in new.items():
            if seq > reserved.get(key, 0):
                reserved[key] = seq + SEQ_RESERVATION
        doc: dict[str, dict[str, int]] = {}
        for (device, kind), value in sorted(reserved.items()):
            doc.setdefault(device, {})[kind] = value
        tmp = self.seq_path.with_name(self.seq_path.name + ".tmp")
        try:
            with open(tmp, "w") as f:
                json.dump(doc, f, separators=(",", ":"))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.seq_path)
            dir_fd = os.open(self.seq_path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink()
            self._log_full(exc)
            raise BufferError(f"cannot write {self.seq_path}: {exc}") from exc
        self.reserved = reserved

    # -- commit -----------------------------------------------------------------------------------

    def commit_group(
        self, items: list[Item], acks: dict[str, list[int]] | None = None
    ) -> list[int | BufferError]:
        """Commit a group in as few transactions as the WAL allowance permits; per-item results.

        The group is split only when its pages would overflow the WAL allowance; an item that
        alone exceeds it is refused without affecting the others. ``acks`` (destination: the
        row ids it sent) are applied in the first transaction, so that the pages the deletes
        and the inserts both rewrite (the table's interior pages, the free list, the header)
        go to disk once; if that transaction fails they are applied on their own.
        """
        self._acks_waiting = [
            (self.outputs[name], ids) for name, ids in (acks or {}).items() if name in self.outputs
        ]
        try:
            return self._commit_items(items)
        finally:
            waiting, self._acks_waiting = self._acks_waiting, []
            for bit, ids in waiting:  # no transaction took them
                self.ack(ids, self._name_of(bit))

    def _commit_items(self, items: list[Item]) -> list[int | BufferError]:
        results: list[int | BufferError] = []
        chunk: list[Item] = []
        chunk_bytes = 0
        for item in items:
            size = self._item_footprint(item)
            if size > self.txn_cap:
                if chunk:
                    results.extend(self._commit_chunk(chunk))
                    chunk, chunk_bytes = [], 0
                results.append(
                    BufferError(
                        f"batch of {len(item[3])} bytes is larger than the buffer accepts "
                        f"(about {self.max_body} bytes with max_size={self.max_size})"
                    )
                )
                continue
            if chunk and chunk_bytes + size > self.txn_cap:
                results.extend(self._commit_chunk(chunk))
                chunk, chunk_bytes = [], 0
            chunk.append(item)
            chunk_bytes += size
        if chunk:
            results.extend(self._commit_chunk(chunk))
        return results

    @property
    def max_body(self) -> int:
        """Largest body ``put()`` always accepts (with device and kind names up to 64 bytes)."""
        if self._max_body is None:

            def fits(n: int) -> bool:
                return _footprint(n + 64 + _RECORD_OVERHEAD, self.page_size) <= self.txn_cap

            lo, hi = 0, self.txn_cap
            while lo < hi:  # the footprint grows with the body, in page-sized steps
                mid = (lo + hi + 1) // 2
                lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
            while lo > 0 and not fits(lo):
                lo -= 1
            self._max_body = lo
        return self._max_body

    def _item_footprint(self, item: Item) -> int:
        device, kind, _, body, _ = item
        return self._row_footprint(device, kind, body)

    def _row_footprint(self, device: str, kind: str, body: bytes) -> int:
        return _footprint(len(body) + len(device) + len(kind) + _RECORD_OVERHEAD, self.page_size)

    def _commit_chunk(self, items: list[Item]) -> list[int | BufferError]:
        new: dict[_Key, int] = {}
        seqs: list[int] = []
        for device, kind, _, _, _ in items:
            key = (device, kind)
            seq = new.get(key, self.seqs.get(key, 0)) + 1
            new[key] = seq
            seqs.append(seq)
        try:
            self._reserve(new)
        except BufferError as exc:
            return [exc] * len(items)
        now = time.time()
        # Deflated here, on the worker thread, not on the event loop (agent.core.buffer.bodies).
        rows = [
            (device, kind, seq, ts_ms, now, bodies.pack(body), want)
            for (device, kind, ts_ms, body, want), seq in zip(items, seqs, strict=True)
        ]
        need = sum(
            self._row_footprint(device, kind, body) for device, kind, _, _, _, body, _ in rows
        )
        self._drops = {}
        try:
            try:
                dropped = self._transaction(rows, new, need, squeeze=False)
            except sqlite3.OperationalError as exc:
                if getattr(exc, "sqlite_errorname", None) != "SQLITE_FULL":
                    raise
                self._rollback()
                self._log_full(exc)
                # A checkpoint may let the WAL restart from its beginning, where its file already
                # has room; the retry deletes the oldest batches so no file needs to grow.
                with contextlib.suppress(sqlite3.Error):
                    self._require().execute("PRAGMA wal_checkpoint(PASSIVE)")
                dropped = self._transaction(rows, new, need, squeeze=True)
        except (sqlite3.Error, _NoRoom) as exc:
            self._rollback()
            if isinstance(exc, sqlite3.Error):
                self._log_full(exc)
            err = BufferError(f"batch not committed: {exc}")
            return [err] * len(items)
        for bit, deleted, counted in self._acks_applied:
            self._acked(bit, deleted, counted)
        self._acks_applied = []
        self.commits += 1
        self.seqs.update(new)
        self.count += len(items) - dropped
        for *_, want in items:
            for mask in self.backlog:
                if want & mask:
                    self.backlog[mask] += 1
        if dropped:
            self._count_dropped(dropped)
        else:
            for mask, oldest in self.oldest_by.items():
                if oldest is None and any(want & mask for *_, want in items):
                    self._refresh_oldest(mask)
        self._full_logged_at = None
        self._keep_wal_small()
        self._refresh_bytes()
        return list(seqs)

    def _count_dropped(self, dropped: int) -> None:
        """Account for the rows the transaction just committed dropped: per destination that
        had not acknowledged them (``self._drops``), in total, in the metric and the log."""
        self.dropped_total += dropped
        for mask, n in self._drops.items():
            self.backlog[mask] = max(0, self.backlog.get(mask, 0) - n)
            self.dropped_by[mask] = self.dropped_by.get(mask, 0) + n
            if self.metrics is not None:
                self.metrics.buffer_dropped.labels(self._name_of(mask)).inc(n)
        self._drops = {}
        self._dropped_at = time.monotonic()
        self._log_drops(dropped)
        self._count_held()
        self._refresh_oldest()

    def _transaction(
        self,
        rows: list[tuple[str, str, int, int, float, bytes, int]],
        new: dict[_Key, int],
        need: int,
        *,
        squeeze: bool,
    ) -> int:
        """Insert ``rows`` within the bound, dropping the oldest batches as needed; return drops.

        ``squeeze`` (after disk full): the database may not grow by a single page, every insert
        must land in pages freed by deleting the oldest batches.
        """
        conn = self._require()
        ps = self.page_size
        self._drops = {}
        conn.execute("BEGIN IMMEDIATE")
        # Acknowledgements that waited for this commit are deleted after the inserts: pages
        # deleted before the savepoint below and rewritten inside it would be copied to a
        # statement journal, a temporary file on disk once past 64 KB (at 10,000 points/s it
        # was, every commit). Unless room is short: then first, so that no drop takes (and
        # counts as lost) a batch that was delivered. They wait on until COMMIT.
        self._acks_applied = []
        acked = not self._acks_waiting
        start_pages, start_used = self._pages()
        allowed = start_pages if squeeze else max(self.budget_pages, start_pages)
        limit = min(self.budget_pages, allowed)
        dropped = 0
        # Drop by estimate first so that, when full, the insert usually fits at the first try.
        short = start_used + -(-need // ps) - limit
        if short > 0 and not acked:
            acked = self._apply_waiting_acks()
            start_pages, start_used = self._pages()
            short = start_used + -(-need // ps) - limit
        if short > 0:
            dropped += self._drop_oldest(short * ps)
        while True:
            conn.execute("SAVEPOINT ins")
            try:
                conn.executemany(_INSERT, rows)
                pages, used = self._pages()
                over = max(used - self.budget_pages, pages - allowed)
            except sqlite3.OperationalError as exc:
                full = getattr(exc, "sqlite_errorname", None) == "SQLITE_FULL"
                if not (squeeze and full and conn.in_transaction):
                    raise
                over = -(-need // ps)
            if over <= 0:
                conn.execute("RELEASE ins")
                break
            conn.execute("ROLLBACK TO ins")
            conn.execute("RELEASE ins")
            if not acked:  # the room they free first
                acked = self._apply_waiting_acks()
                continue
            n = self._drop_oldest(over * ps)
            if n == 0:
                raise _NoRoom(
                    "no room even with the buffer emptied"
                    if not squeeze
                    else "disk full and no batch left to drop"
                )
            dropped += n
        if not acked:
            self._apply_waiting_acks()
        conn.executemany(
            "INSERT INTO seqs (device, kind, last) VALUES (?, ?, ?) "
            "ON CONFLICT (device, kind) DO UPDATE SET last = excluded.last",
            [(d, k, s) for (d, k), s in new.items()],
        )
        if dropped:
            self._store_drop_totals(dropped)
        conn.execute("COMMIT")
        self._acks_waiting = []
        return dropped

    def _apply_waiting_acks(self) -> bool:
        """In the open transaction: delete what the acknowledgements waiting for this commit
        allow; bookkept once it commits (``_acks_applied``)."""
        self._acks_applied = [
            (bit, *self._delete_acked(ids, bit)) for bit, ids in self._acks_waiting
        ]
        return True

    def _store_drop_totals(self, dropped: int) -> None:
        """Write the drop counters (total and per destination) in the open transaction, so
        they survive restarts; the in-memory ones move only once it committed."""
        totals = [("dropped", self.dropped_total + dropped)]
        totals += [
            (f"dropped:{self._name_of(mask)}", self.dropped_by.get(mask, 0) + n)
            for mask, n in self._drops.items()
        ]
        self._require().executemany(
            "INSERT INTO meta (key, value) VALUES (?, ?) "
            "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            totals,
        )

    def _drop_oldest(self, nbytes: int) -> int:
        """Delete the oldest batches that together occupy about ``nbytes``; return how many.

        Each dropped row counts, in ``self._drops``, for every destination that wanted it and
        had not acknowledged it."""
        conn = self._require()
        covered = 0
        cutoff: int | None = None
        cur = conn.execute(
            "SELECT id, length(body) + length(device) + length(kind) FROM batches ORDER BY id"
        )
        for row_id, payload in cur:
            covered += _footprint(int(payload) + _RECORD_OVERHEAD, self.page_size)
            cutoff = int(row_id)
            if covered >= nbytes:
                break
        cur.close()
        if cutoff is None:
            return 0
        for _, want, acked, _ in conn.execute(
            f"{_MARKS_OF} LEFT JOIN marks m ON m.id = b.id WHERE b.id <= ?", (cutoff,)
        ):
            pending = int(want) & ~int(acked)
            for mask in self.backlog:
                if pending & mask:
                    self._drops[mask] = self._drops.get(mask, 0) + 1
        n = int(conn.execute("DELETE FROM batches WHERE id <= ?", (cutoff,)).rowcount)
        conn.execute("DELETE FROM marks WHERE id <= ?", (cutoff,))
        return n

    def _fit(self) -> None:
        """Bring a database from an earlier run within a ``max_size`` that may have been lowered."""
        conn = self._require()
        pages, used = self._pages()
        if used > self.budget_pages:
            self._drops = {}
            try:
                conn.execute("BEGIN IMMEDIATE")
                dropped = 0
                while used > self.budget_pages:
                    n = self._drop_oldest((used - self.budget_pages) * self.page_size)
                    if n == 0:
                        break
                    dropped += n
                    pages, used = self._pages()
                self._store_drop_totals(dropped)
                conn.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise BufferError(f"cannot shrink {self.path} to max_size: {exc}") from exc
            self.count -= dropped
            self._count_dropped(dropped)
        if pages > self.max_budget_pages:
            # The file keeps its high-water mark after deletes; only VACUUM gives pages back. It
            # needs temporary space about the size of the database, once, at start.
            try:
                conn.execute("VACUUM")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                log.error(
                    "buffer file larger than max_size and could not be shrunk",
                    extra={"file": str(self.path), "max_size": self.max_size, "error": str(exc)},
                )
            else:
                log.info(
                    "buffer file shrunk to fit max_size",
                    extra={"file": str(self.path), "max_size": self.max_size},
                )

    @property
    def pressed(self) -> bool:
        """Short of room: the disk bounds the buffer below ``max_size``, or a drop was needed
        in the last minute. Then the commit window is off (batches committed at once, as with
        ``commit_interval: 0``, acknowledgements applied at once): a drop sized for a whole
        window, or an acknowledgement still waiting, would take batches already delivered and
        count them as lost."""
        recent = self._dropped_at is not None and time.monotonic() - self._dropped_at < 60
        return recent or self.limit < self.max_size

    def _pages(self) -> tuple[int, int]:
        """(page_count, used pages) as the current transaction sees them."""
        conn = self._require()
        pages = int(conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(conn.execute("PRAGMA freelist_count").fetchone()[0])
        return pages, pages - free

    def _keep_wal_small(self) -> None:
        """Backstop for the autocheckpoint, which gives up silently (for instance on disk full)."""
        try:
            size = os.stat(f"{self.path}-wal").st_size
        except OSError:
            return
        if size > self.wal_limit * 3 // 4:
            with contextlib.suppress(sqlite3.Error):
                # RESTART, not TRUNCATE: the next commit cuts the file to journal_size_limit and
                # keeps that much allocated, room a commit can still use when the disk is full.
                self._require().execute("PRAGMA wal_checkpoint(RESTART)")

    # -- fetch / ack ------------------------------------------------------------------------------

    def fetch(
        self, after_id: int, limit: int, upto_id: int | None, output: str = DEFAULT_OUTPUT
    ) -> list[StoredBatch]:
        """The rows ``output`` still has to send, in id order."""
        if limit <= 0:
            return []
        conn = self._require()
        bit = self._mask(output)
        try:
            upto = "" if upto_id is None else "AND b.id <= :upto "
            cur = conn.execute(
                f"{_SELECT} {_MINE} AND b.id > :after {upto}ORDER BY b.id LIMIT :limit",
                {"bit": bit, "after": after_id, "upto": upto_id, "limit": limit},
            )
            return [
                StoredBatch(i, device, kind, seq, ts, bodies.unpack(body), created, want)
                for i, device, kind, seq, ts, body, created, want in cur
            ]
        except sqlite3.Error as exc:
            raise BufferError(f"cannot read the buffer: {exc}") from exc

    def ack(self, ids: list[int], output: str = DEFAULT_OUTPUT) -> None:
        """``output`` has sent these rows: delete those no other destination still needs, mark
        the rest as sent by it (a small ``marks`` row: the body is not rewritten)."""
        conn = self._require()
        bit = self._mask(output)
        try:
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("BEGIN IMMEDIATE")
            deleted, counted = self._delete_acked(ids, bit)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            log.error(
                "buffer could not delete published batches; they will be sent again",
                extra={"error": str(exc), "batches": len(ids), "output": output},
            )
            return
        finally:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA synchronous=FULL")
        self._acked(bit, deleted, counted)
        self._keep_wal_small()
        self._refresh_bytes()

    def _delete_acked(self, ids: list[int], bit: int) -> tuple[int, int | None]:
        """In the open transaction: ``ack``'s deletes and marks; (rows deleted, rows counted
        off the destination's backlog, None: all deleted ones)."""
        conn = self._require()
        done: list[tuple[int]] = []
        later: list[tuple[int, int]] = []
        counted: int | None = None
        if len(self.outputs) == 1 and not self.held:
            # One destination: an ack is the plain delete it always was.
            done = [(i,) for i in ids]
        else:
            counted = 0
            for chunk in _chunks(ids, 500):
                marks = ", ".join("?" * len(chunk))
                for row_id, want, acked, _ in conn.execute(
                    f"{_MARKS_OF} LEFT JOIN marks m ON m.id = b.id WHERE b.id IN ({marks})",
                    chunk,
                ):
                    if not want & bit or acked & bit:
                        continue  # not ours, or acknowledged before
                    counted += 1
                    if want & ~(acked | bit):
                        later.append((row_id, bit))
                    else:
                        done.append((row_id,))
        cur = conn.executemany("DELETE FROM batches WHERE id = ?", done)
        deleted = max(0, cur.rowcount)
        if counted is not None:
            conn.executemany("DELETE FROM marks WHERE id = ?", done)
            conn.executemany(
                "INSERT INTO marks (id, acked) VALUES (?, ?) "
                "ON CONFLICT (id) DO UPDATE SET acked = acked | excluded.acked",
                later,
            )
        return deleted, counted

    def _acked(self, bit: int, deleted: int, counted: int | None) -> None:
        """After the transaction that deleted acknowledged rows committed."""
        self.count -= deleted
        self.backlog[bit] = max(0, self.backlog[bit] - (deleted if counted is None else counted))
        self._refresh_oldest(bit)

    def hold(self, ids: list[int], reason: str, output: str = DEFAULT_OUTPUT) -> int:
        """Set rows aside for ``output`` with ``reason``: it no longer fetches them and never
        acknowledges them as sent; they still count against ``max_size`` and go first when it is
        full, like any old batch."""
        conn = self._require()
        bit = self._mask(output)
        fresh: list[int] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for chunk in _chunks(ids, 500):
                fresh += [
                    int(i)
                    for i, want, acked, held in conn.execute(
                        f"{_MARKS_OF} LEFT JOIN marks m ON m.id = b.id WHERE b.id IN "
                        f"({', '.join('?' * len(chunk))})",
                        chunk,
                    )
                    if want & bit and not (acked | held) & bit
                ]
            conn.executemany(
                "INSERT INTO marks (id, held, reason) VALUES (?, ?, ?) ON CONFLICT (id) "
                "DO UPDATE SET held = held | excluded.held, reason = excluded.reason",
                [(i, bit, reason) for i in fresh],
            )
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise BufferError(f"cannot set batches aside: {exc}") from exc
        self.held_reason = reason
        self.held_reasons[bit] = reason
        self._count_held()
        self._refresh_oldest(bit)
        return len(fresh)

    def release(self) -> int:
        """Make every held row publishable again (at start, and when a format was rebuilt:
        what one agent could not pack, the next may).

        The rows are inserted anew (same device, kind, seq, ts and body; a new row id; wanted by
        the destinations that had not sent them yet) so that a publisher already past their old
        ids finds them like any new batch; the consumer orders by ``seq`` as it does after any
        replay."""
        if not self.held:
            return 0
        conn = self._require()
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO batches (device, kind, seq, ts_ms, created, body, want) "
                "SELECT b.device, b.kind, b.seq, b.ts_ms, b.created, b.body, b.want & ~m.acked "
                "FROM batches b JOIN marks m ON m.id = b.id WHERE m.held != 0 ORDER BY b.id"
            )
            cur = conn.execute(
                "DELETE FROM batches WHERE id IN (SELECT id FROM marks WHERE held != 0)"
            )
            conn.execute("DELETE FROM marks WHERE held != 0")
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise BufferError(f"cannot release held batches: {exc}") from exc
        self.held_reasons.clear()
        self._count_held()
        self._refresh_oldest()
        return max(0, cur.rowcount)

    def _count_held(self) -> None:
        conn = self._require()
        self.held = 0
        held_by = dict.fromkeys(self.backlog, 0)
        for (held,) in conn.execute("SELECT held FROM marks WHERE held != 0"):
            self.held += 1
            for mask in held_by:
                if held & mask:
                    held_by[mask] += 1
        self.held_by = held_by
        for mask, n in held_by.items():
            if n and self.held_reasons.get(mask) is None:
                row = conn.execute(
                    "SELECT reason FROM marks WHERE held & ? ORDER BY id DESC LIMIT 1", (mask,)
                ).fetchone()
                self.held_reasons[mask] = str(row[0]) if row and row[0] is not None else None
            elif not n:
                self.held_reasons.pop(mask, None)
        if not self.held:
            self.held_reason = None
        elif self.held_reason is None:
            self.held_reason = next((r for r in self.held_reasons.values() if r), None)

    def max_id(self) -> int:
        try:
            row = self._require().execute("SELECT max(id) FROM batches").fetchone()
        except sqlite3.Error as exc:
            raise BufferError(f"cannot read the buffer: {exc}") from exc
        return int(row[0]) if row and row[0] is not None else 0

    # -- helpers ----------------------------------------------------------------------------------

    def _require(self) -> sqlite3.Connection:
        if self.conn is None:
            raise BufferError("buffer is not open")
        return self.conn

    def _rollback(self) -> None:
        conn = self.conn
        if conn is not None and conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
        self._drops = {}
        self._acks_applied = []

    def _refresh_oldest(self, mask: int | None = None) -> None:
        """The oldest row each destination can still send (``mask``: only that one's).

        Cheap at any backlog: no change ever adds a row a destination has to send below the
        oldest it had (inserts and releases take new, higher ids), so each search starts where
        the last one ended (``scan_from``) instead of stepping again over rows sent by this
        destination that another one still holds."""
        conn = self._require()
        for m in self.backlog if mask is None else (mask,):
            start = self.scan_from.get(m, 0)
            row = conn.execute(
                f"SELECT b.id, b.created FROM batches b {_MINE} AND b.id >= :start "
                "ORDER BY b.id LIMIT 1",
                {"bit": m, "start": start},
            ).fetchone()
            if row is not None:
                self.oldest_by[m] = (int(row[0]), float(row[1]))
                self.scan_from[m] = int(row[0])
            else:
                self.oldest_by[m] = None
                top = conn.execute("SELECT max(id) FROM batches").fetchone()[0]
                self.scan_from[m] = max(start, int(top or 0) + 1)
        found = [o[1] for o in self.oldest_by.values() if o is not None]
        self.oldest = min(found) if found else None

    def _refresh_bytes(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._stat_at < _STAT_INTERVAL:
            return
        self._stat_at = now
        self.disk_bytes = self._file_bytes()
        if self.conn is not None:
            self._fit_to_disk(self.disk_bytes)

    def _file_bytes(self) -> int:
        total = 0
        for suffix in ("", "-wal"):
            with contextlib.suppress(OSError):
                total += os.stat(f"{self.path}{suffix}").st_size
        return total

    def _fit_to_disk(self, files: int) -> None:
        """Bound the buffer by the room the file system really has, when that is below max_size.

        A disk that fills up (a small partition, a quota, another program's logs) would
        otherwise meet the buffer with ENOSPC, and in WAL mode that can wedge it: the batches sit
        in the WAL, a checkpoint needs the database file to grow to take them, and deleting the
        oldest needs new WAL frames. So once a second the bound in force (and the WAL's share of
        it) is recomputed from what our files hold plus the free space, less a small reserve:
        the ordinary drop-oldest path then makes room, counted, before the disk is full, and
        the bound grows back to max_size when space returns.
        """
        try:
            st = os.statvfs(self.path.parent)
        except OSError:
            return
        room = files + st.f_bavail * st.f_frsize - _DISK_RESERVE
        limit = min(self.max_size, max(room, 2 * _WAL_MIN))
        wal = min(max(limit // 8, _WAL_MIN), _WAL_MAX)
        budget = max(1, (limit - wal) // self.page_size)
        if budget == self.budget_pages and wal == self.wal_limit:
            return
        was_limited = self.limit < self.max_size
        self.limit, self.wal_limit, self.budget_pages = limit, wal, budget
        conn = self.conn
        if conn is not None:
            with contextlib.suppress(sqlite3.Error):
                conn.execute(f"PRAGMA wal_autocheckpoint={max(4, wal // 4 // self.page_size)}")
                conn.execute(f"PRAGMA journal_size_limit={wal // 4}")
        limited = limit < self.max_size
        if limited and not was_limited:
            log.warning(
                "disk has less room than buffer.max_size: the buffer keeps within %d bytes",
                limit,
                extra={"file": str(self.path), "limit": limit, "max_size": self.max_size},
            )
        elif was_limited and not limited:
            log.info(
                "disk has room again: the buffer may grow to max_size",
                extra={"file": str(self.path), "max_size": self.max_size},
            )

    def _log_drops(self, n: int, *, force: bool = False) -> None:
        """One WARNING per episode, then at most one a minute summing up the drops since."""
        self._drops_unlogged += n
        now = time.monotonic()
        if force or self._drop_logged_at is None or now - self._drop_logged_at >= _LOG_INTERVAL:
            dropped = self._drops_unlogged
            log.warning(
                "buffer full: dropped %d oldest batches (bound %d bytes)",
                dropped,
                self.limit,
                extra={
                    "dropped": dropped,
                    "dropped_total": self.dropped_total,
                    "max_size": self.max_size,
                },
            )
            self._drop_logged_at = now
            self._drops_unlogged = 0

    def _log_full(self, exc: BaseException) -> None:
        now = time.monotonic()
        if self._full_logged_at is None or now - self._full_logged_at >= _LOG_INTERVAL:
            self._full_logged_at = now
            log.error(
                "buffer commit failed; batches not stored, the next put retries",
                extra={"error": str(exc), "file": str(self.path)},
            )


def _key(device: str, kind: str) -> _Key:
    """A seq counter's key; an earlier version's ``<device>/event`` (kind ``data``) is
    ``(<device>, event)`` now."""
    head, _, tail = device.partition("/")
    return (head, tail) if tail and kind == "data" else (device, kind)


def _chunks(ids: list[int], size: int) -> list[list[int]]:
    """SQLite limits the parameters of one statement; lookups by id go in chunks."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]
