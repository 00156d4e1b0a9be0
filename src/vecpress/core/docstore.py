"""SQLite side of a collection: ids, text, metadata (JSON1) and the full-text index (FTS5).

``docs.rowid`` is the int64 id of the document's vector in the :class:`~vecpress.core.index.Index`.
A file database runs in WAL mode with ``synchronous=FULL``, so a committed transaction survives
a crash and readers never block the writer; with ``sync=False`` (a collection's
``durability="process"``) ``synchronous=NORMAL``: a commit is not fsynced, so it survives the
process being killed but may be rolled back by a power loss (the database stays consistent).
Metadata is stored as JSON text (returned as is) and, through triggers, as one ``fields`` row
per top-level key and list element, indexed for filters (:mod:`vecpress.core.filters`). A
document's row is never updated: a new version is a new row. Every statement is
parameterised; id lists travel
as one JSON array parameter (``IN (SELECT value FROM json_each(?))``), so no statement grows
with the batch and nothing from the user is ever spliced into SQL.

Threads: the writer uses one connection. Reads borrow a connection from a small pool for the
length of one read and give it back (each statement reads one WAL snapshot), so any number of
short-lived threads hold at most :data:`MAX_READERS` connections at once and
:data:`MAX_IDLE_READERS` between reads. An in-memory database has a single connection, shared
under a lock.

Read-only opening: ``mode=ro``; where that fails because the directory is read-only (SQLite
cannot create the ``-shm`` file a WAL database needs), the database is opened with
``immutable=1``. SQLite then assumes nobody changes the file: transactions still in a ``-wal``
file are not seen (a warning says so), and a writer must not be using the directory meanwhile.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .filters import LOWER_FUNCTION, lower, sorted_unique
from .storage import sync_files

DB_FILE = "docs.sqlite"

_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE docs (
    rowid INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    text TEXT,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE VIRTUAL TABLE docs_fts USING fts5(
    text, content='docs', content_rowid='rowid', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TABLE fields (doc INTEGER NOT NULL, key TEXT NOT NULL, kind TEXT NOT NULL, value);
CREATE INDEX fields_by_key ON fields(key, kind, value, doc);
CREATE INDEX fields_by_doc ON fields(doc);
CREATE TRIGGER docs_after_insert AFTER INSERT ON docs BEGIN
    INSERT INTO docs_fts(rowid, text) VALUES (new.rowid, new.text);
    INSERT INTO fields(doc, key, kind, value)
        SELECT new.rowid, key, CASE type WHEN 'text' THEN 's' WHEN 'integer' THEN 'n'
                                         WHEN 'real' THEN 'n' WHEN 'true' THEN 'b'
                                         WHEN 'false' THEN 'b' WHEN 'null' THEN 'z'
                                         WHEN 'array' THEN 'a' ELSE 'o' END,
               CASE type WHEN 'array' THEN json_array_length(value)
                         WHEN 'object' THEN NULL ELSE atom END
        FROM json_each(new.metadata);
    INSERT INTO fields(doc, key, kind, value)
        SELECT new.rowid, top.key, CASE item.type WHEN 'text' THEN 'es' WHEN 'integer' THEN 'en'
                                                  WHEN 'real' THEN 'en' WHEN 'true' THEN 'eb'
                                                  WHEN 'false' THEN 'eb' WHEN 'null' THEN 'ez'
                                                  WHEN 'array' THEN 'ea' ELSE 'eo' END,
               CASE WHEN item.type IN ('array', 'object') THEN NULL ELSE item.atom END
        FROM json_each(new.metadata) AS top, json_each(top.value) AS item
        WHERE top.type = 'array';
END;
CREATE TRIGGER docs_after_delete AFTER DELETE ON docs BEGIN
    INSERT INTO docs_fts(docs_fts, rowid, text) VALUES ('delete', old.rowid, old.text);
    DELETE FROM fields WHERE doc = old.rowid;
END;
"""

_TOKEN = re.compile(r"\w+", re.UNICODE)


def fts_phrases(text: str) -> list[str]:
    """The FTS5 phrases of free text: each distinct word (lower-cased) as a quoted string, so
    operators and punctuation in the text are plain words."""
    tokens = dict.fromkeys(t.lower() for t in _TOKEN.findall(text))
    return [f'"{t}"' for t in tokens]  # \w+ never holds a double quote


def fts_query(text: str) -> str | None:
    """An FTS5 MATCH expression for free text: its words ORed (BM25 ranks the matches)."""
    return " OR ".join(fts_phrases(text)) or None


def _statements(script: str) -> Iterator[str]:
    """The complete SQL statements of a script (trigger bodies hold semicolons)."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending.strip()
            pending = ""


def _id_list(values: Iterable[Any]) -> str:
    return json.dumps([v.item() if isinstance(v, np.generic) else v for v in values])


#: BM25's corpus statistics for a query's words: (rows, tokens, [rows matching each word])
TextStatistics = tuple[int, int, list[int]]

#: the constants of FTS5's ``bm25()`` (``fts5_aux.c``)
BM25_K1 = 1.2
BM25_B = 0.75
#: FTS5 keeps the row count and the token total in this row of its ``_data`` table
_FTS_AVERAGES_ROW = 1


def _read_varint(blob: bytes, at: int) -> tuple[int, int]:
    """SQLite's variable-length integer at ``at`` (as FTS5 writes its sizes): value, next."""
    value = 0
    for i in range(8):
        if at + i >= len(blob):
            raise ValueError("truncated varint")
        byte = blob[at + i]
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            return value, at + i + 1
    if at + 8 >= len(blob):
        raise ValueError("truncated varint")
    return (value << 8) | blob[at + 8], at + 9


def _first_varint(blob: Any) -> int:
    """The token count of a row (the first varint of its ``_docsize`` blob; 0 if absent)."""
    if not isinstance(blob, bytes) or not blob:
        return 0
    return _read_varint(blob, 0)[0]


def _fts_totals(conn: sqlite3.Connection) -> tuple[int, int]:
    """``(rows, tokens)`` of the full-text index, from FTS5's averages record."""
    row = conn.execute("SELECT block FROM docs_fts_data WHERE id = ?",
                       (_FTS_AVERAGES_ROW,)).fetchone()
    if row is None or not isinstance(row[0], bytes) or not row[0]:
        return 0, 0
    try:
        rows, at = _read_varint(row[0], 0)
        tokens, _ = _read_varint(row[0], at)
    except ValueError:
        raise sqlite3.DatabaseError("the full-text index's averages record is damaged") from None
    return rows, tokens


def _bm25_idf(rows: int, matching: int) -> float:
    """FTS5's IDF: ``log((N - n + 0.5) / (n + 0.5))``, and 1e-6 where that is not positive."""
    idf = math.log((rows - matching + 0.5) / (matching + 0.5))
    return idf if idf > 0.0 else 1e-6


def _bm25_norm(length: np.ndarray, average: float) -> np.ndarray:
    """BM25's length term ``k1 (1 - b + b |D| / avgdl)``."""
    return BM25_K1 * (1.0 - BM25_B + BM25_B * length / average)


#: reader connections open at once (more concurrent reads wait for one to be given back)
MAX_READERS = 32
#: reader connections kept open between reads; extras are closed when given back
MAX_IDLE_READERS = 8
#: WAL pages between automatic checkpoints with ``sync=False`` (SQLite's default is 1,000,
#: about every hundred one-document upserts; each checkpoint fsyncs the WAL and the database)
NORMAL_SYNC_CHECKPOINT_PAGES = 10_000
#: SQLite's primary result code for "unable to open" (the low byte of an extended code)
_SQLITE_CANTOPEN = 14


class _ReaderPool:
    """Reader connections lent out one read at a time: at most ``max_open`` exist at once and
    at most ``max_idle`` stay open between reads, however many threads come and go.

    A thread must give its connection back before borrowing another (reads do not nest).
    """

    def __init__(self, connect: Any, *, max_open: int = MAX_READERS,
                 max_idle: int = MAX_IDLE_READERS) -> None:
        self._connect = connect
        self._max_idle = max_idle
        self._slots = threading.BoundedSemaphore(max_open)
        self._lock = threading.Lock()
        self._idle: list[sqlite3.Connection] = []
        self._closed = False

    @contextmanager
    def borrow(self) -> Iterator[sqlite3.Connection]:
        self._slots.acquire()
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None:
                conn = self._connect()
            try:
                yield conn
            finally:
                self._give_back(conn)
        finally:
            self._slots.release()

    def _give_back(self, conn: sqlite3.Connection) -> None:
        with self._lock:
            if not self._closed and len(self._idle) < self._max_idle:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        """Close the idle connections; connections lent out are closed when given back."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class DocStore:
    """The ``docs`` table and its FTS5 index, in ``<directory>/docs.sqlite`` or in memory."""

    def __init__(self, directory: Path | None, *, read_only: bool = False,
                 sync: bool = True) -> None:
        self.read_only = read_only
        #: opened with ``immutable=1`` (read-only filesystem; see the module docstring)
        self.immutable = False
        self._closed = False
        self._file = None if directory is None else directory / DB_FILE
        self._memory_lock = threading.RLock() if self._file is None else None
        self._write_lock = self._memory_lock or threading.Lock()
        self._readers = _ReaderPool(self._open_reader)
        if self._file is None:
            self._writer = self._connect(":memory:")
        elif read_only:
            if not self._file.exists():
                raise FileNotFoundError(f"{self._file} does not exist")
            self._writer = None
            self.immutable = self._needs_immutable()
        else:
            self._writer = self._connect(str(self._file))
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute(f"PRAGMA synchronous={'FULL' if sync else 'NORMAL'}")
            if not sync:  # (a checkpoint fsyncs: rarer, so that few small writes wait for one)
                self._writer.execute(f"PRAGMA wal_autocheckpoint={NORMAL_SYNC_CHECKPOINT_PAGES}")
        self._sync = sync

    # ------------------------------------------------------------------ connections
    @staticmethod
    def _connect(target: str, *, uri: bool = False) -> sqlite3.Connection:
        conn = sqlite3.connect(target, isolation_level=None, check_same_thread=False, uri=uri,
                               timeout=30.0)
        conn.create_function(LOWER_FUNCTION, 1, lower, deterministic=True)
        return conn

    def _open_reader(self) -> sqlite3.Connection:
        if not self.read_only:
            conn = self._connect(str(self._file))
            conn.execute("PRAGMA query_only=ON")
            return conn
        mode = "immutable=1" if self.immutable else "mode=ro"
        return self._connect(f"{self._file.resolve().as_uri()}?{mode}", uri=True)

    def _needs_immutable(self) -> bool:
        """Whether a read-only open must use ``immutable=1``: ``mode=ro`` cannot open the file
        because the ``-shm``/``-wal`` files of WAL mode cannot be created (read-only
        filesystem). Any other failure is left for the first read to report."""
        try:
            probe = self._open_reader()
        except sqlite3.Error:
            return False
        try:
            probe.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return False
        except sqlite3.OperationalError as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF != _SQLITE_CANTOPEN:
                return False
        except sqlite3.Error:
            return False
        finally:
            probe.close()
        wal = self._file.with_name(self._file.name + "-wal")
        if wal.exists() and wal.stat().st_size > 0:
            warnings.warn(f"{self._file} is on a read-only filesystem and opened as immutable; "
                          f"transactions in {wal.name} (a writer that did not close) are not "
                          f"visible", RuntimeWarning, stacklevel=4)
        return True

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        if self._closed:
            raise RuntimeError("this collection is closed; open it again to use it")
        if self._memory_lock is not None:
            with self._memory_lock:
                yield self._writer
            return
        with self._readers.borrow() as conn:
            yield conn

    def backup(self, target: Path) -> None:
        """Copy the database into the new file ``target`` (SQLite's online backup, consistent
        with the last committed write)."""
        with self._reading() as conn:
            destination = sqlite3.connect(str(target))
            try:
                conn.backup(destination)
            finally:
                destination.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed when the block ends, rolled back on an error."""
        if self._closed:
            raise RuntimeError("this collection is closed; open it again to use it")
        if self._writer is None:
            raise PermissionError("this collection is read-only")
        with self._write_lock:
            conn = self._writer
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    def close(self) -> None:
        """Close every connection; a writer opened with ``sync=False`` fsyncs the database
        and its WAL file first (a reader in another process may keep the WAL from being
        checkpointed into the database on close)."""
        self._closed = True
        self._readers.close()
        if self._writer is not None:
            self._writer.close()
            if self._file is not None and not self._sync:
                sync_files(self._file.parent, [self._file.name, f"{self._file.name}-wal"])

    # ------------------------------------------------------------------ schema and meta
    def has_schema(self) -> bool:
        with self._reading() as conn:
            row = conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = 'meta'"
            ).fetchone()
        return bool(row[0])

    def create(self, meta: dict[str, Any]) -> None:
        with self.transaction() as conn:
            for statement in _statements(_SCHEMA):
                conn.execute(statement)
            conn.executemany("INSERT INTO meta(key, value) VALUES (?, ?)",
                             [(k, json.dumps(v)) for k, v in meta.items()])

    def set_meta(self, key: str, value: Any) -> None:
        """Store one metadata entry as JSON (``None`` deletes it), in its own transaction."""
        with self.transaction() as conn:
            if value is None:
                conn.execute("DELETE FROM meta WHERE key = ?", (key,))
            else:
                conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
                             (key, json.dumps(value)))

    def meta(self) -> dict[str, Any]:
        with self._reading() as conn:
            return {k: json.loads(v) for k, v in conn.execute("SELECT key, value FROM meta")}

    # ------------------------------------------------------------------ reads
    def count(self) -> int:
        with self._reading() as conn:
            return int(conn.execute("SELECT count(*) FROM docs").fetchone()[0])

    def rowids(self) -> np.ndarray:
        """Sorted row ids of every document."""
        return self.selected_rowids("SELECT rowid AS doc FROM docs", [])

    def selected_rowids(self, select_sql: str, params: list[Any]) -> np.ndarray:
        """Sorted distinct row ids from a one-column ``SELECT`` (a filter condition).

        They come back as one comma-separated string: building 50,000 Python tuples would
        cost several times more than the indexed scan that finds them.
        """
        with self._reading() as conn:
            text = conn.execute(f"SELECT group_concat(doc) FROM ({select_sql})",
                                params).fetchone()[0]
        if not text:
            return np.zeros(0, dtype=np.int64)
        return sorted_unique(np.fromstring(text, dtype=np.int64, sep=","))

    def max_rowid(self) -> int:
        with self._reading() as conn:
            value = conn.execute("SELECT max(rowid) FROM docs").fetchone()[0]
        return -1 if value is None else int(value)

    def rowids_of(self, ids: list[str], conn: sqlite3.Connection | None = None) -> dict[str, int]:
        """Row ids of the documents with these string ids (absent ids are left out)."""
        sql = "SELECT id, rowid FROM docs WHERE id IN (SELECT value FROM json_each(?))"
        if conn is not None:
            return dict(conn.execute(sql, (_id_list(ids),)).fetchall())
        with self._reading() as reader:
            return dict(reader.execute(sql, (_id_list(ids),)).fetchall())

    def by_rowid(self, rowids: Iterable[int]) -> dict[int, tuple[str, str | None, str]]:
        """``rowid -> (id, text, metadata JSON)`` for the rows that exist."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT rowid, id, text, metadata FROM docs "
                "WHERE rowid IN (SELECT value FROM json_each(?))", (_id_list(rowids),)).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def by_id(self, ids: list[str]) -> dict[str, tuple[int, str | None, str]]:
        """``id -> (rowid, text, metadata JSON)`` for the documents that exist."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT id, rowid, text, metadata FROM docs "
                "WHERE id IN (SELECT value FROM json_each(?))", (_id_list(ids),)).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    def select(self, *, limit: int | None = None, offset: int = 0
               ) -> list[tuple[int, str, str | None, str]]:
        """``(rowid, id, text, metadata JSON)`` of documents in insertion order."""
        with self._reading() as conn:
            return conn.execute("SELECT rowid, id, text, metadata FROM docs ORDER BY rowid "
                                "LIMIT ? OFFSET ?", (-1 if limit is None else limit, offset)
                                ).fetchall()

    def text_search(self, match: str, k: int, allowed: np.ndarray | None
                    ) -> list[tuple[int, float, str, str | None, str]]:
        """Best ``k`` ``(rowid, score, id, text, metadata JSON)`` by BM25 (score = -bm25:
        higher is better), among the ``allowed`` row ids when given."""
        sql = ("SELECT docs.rowid, -bm25(docs_fts), docs.id, docs.text, docs.metadata "
               "FROM docs_fts JOIN docs ON docs.rowid = docs_fts.rowid WHERE docs_fts MATCH ?")
        args: list[Any] = [match]
        if allowed is not None:
            sql += " AND docs.rowid IN (SELECT value FROM json_each(?))"
            args.append(_id_list(allowed.tolist()))
        sql += " ORDER BY bm25(docs_fts), docs.rowid LIMIT ?"
        args.append(k)
        with self._reading() as conn:
            return [(int(r), float(s), i, t, m) for r, s, i, t, m in conn.execute(sql, args)]

    def text_scores(self, match: str, rowids: Iterable[int]) -> dict[int, float]:
        """BM25 scores (-bm25) of the given rows that match; rows that do not are absent."""
        with self._reading() as conn:
            rows = conn.execute(
                "SELECT rowid, -bm25(docs_fts) FROM docs_fts WHERE docs_fts MATCH ? "
                "AND rowid IN (SELECT value FROM json_each(?))", (match, _id_list(rowids))
            ).fetchall()
        return {int(r): float(s) for r, s in rows}

    def text_statistics(self, phrases: list[str]) -> tuple[int, int, list[int]]:
        """BM25's corpus statistics: ``(rows, tokens, [rows matching each phrase])`` of the
        full-text index (rows without text count, as in FTS5's own ``bm25()``)."""
        with self._reading() as conn:
            conn.execute("BEGIN")
            try:
                rows, tokens = _fts_totals(conn)
                hits = [int(conn.execute("SELECT count(*) FROM docs_fts WHERE docs_fts MATCH ?",
                                         (phrase,)).fetchone()[0]) for phrase in phrases]
            finally:
                conn.execute("COMMIT")
        return rows, tokens, hits

    def text_search_with(self, phrases: list[str], k: int, allowed: np.ndarray | None,
                         corpus: tuple[int, int, list[int]]
                         ) -> list[tuple[int, float, str, str | None, str]]:
        """As :meth:`text_search` for the words ``phrases`` ORed, but scored by BM25 with the
        corpus statistics ``corpus`` (``(rows, tokens, rows matching each phrase)``, say the
        sums of :meth:`text_statistics` over the shards of a sharded collection) instead of
        this database's own: with the statistics of the union, each document gets the score
        it would have there.

        FTS5 gives no phrase frequencies to Python, so they are recovered from this
        database's own single-phrase ``bm25()``, whose formula (FTS5's ``fts5_aux.c``) is
        inverted with its own statistics and the document's token count.
        """
        rows, tokens, hits = corpus
        if rows <= 0 or tokens <= 0 or len(hits) != len(phrases):
            return []
        with self._reading() as conn:
            conn.execute("BEGIN")  # one snapshot: the statistics agree with the scores
            try:
                local_rows, local_tokens = _fts_totals(conn)
                found = [conn.execute(
                    "SELECT rowid, -bm25(docs_fts) FROM docs_fts WHERE docs_fts MATCH ?",
                    (phrase,)).fetchall() for phrase in phrases]
                candidates = sorted({r for matches in found for r, _ in matches})
                if allowed is not None:
                    permitted = set(allowed.tolist())
                    candidates = [r for r in candidates if r in permitted]
                sizes = dict(conn.execute(
                    "SELECT id, sz FROM docs_fts_docsize WHERE id IN "
                    "(SELECT value FROM json_each(?))", (_id_list(candidates),)).fetchall())
            finally:
                conn.execute("COMMIT")
        if not candidates or local_rows <= 0:
            return []
        position = {r: i for i, r in enumerate(candidates)}
        length = np.array([_first_varint(sizes.get(r, b"")) for r in candidates], dtype=np.float64)
        score = np.zeros(len(candidates))
        local_norm = _bm25_norm(length, local_tokens / local_rows)
        global_norm = _bm25_norm(length, tokens / rows)
        for matches, phrase_rows in zip(found, hits):
            if not matches:
                continue
            local_idf = _bm25_idf(local_rows, len(matches))
            at = np.array([position.get(r, -1) for r, _ in matches])
            keep = at >= 0
            at = at[keep]
            term = np.array([s for _, s in matches])[keep] / local_idf  # f (k1+1) / (f + norm)
            freq = np.rint(term * local_norm[at] / (BM25_K1 + 1.0 - term))
            score[at] += _bm25_idf(rows, phrase_rows) * freq * (BM25_K1 + 1.0) \
                / (freq + global_norm[at])
        order = sorted(range(len(candidates)), key=lambda i: (-score[i], candidates[i]))[:k]
        best = [candidates[i] for i in order]
        docs = self.by_rowid(best)
        return [(r, float(score[position[r]]), *docs[r]) for r in best if r in docs]

    # ------------------------------------------------------------------ writes (in a transaction)
    @staticmethod
    def insert(conn: sqlite3.Connection, rows: list[tuple[int, str, str | None, str]]) -> None:
        conn.executemany("INSERT INTO docs(rowid, id, text, metadata) VALUES (?, ?, ?, ?)", rows)

    @staticmethod
    def delete_rowids(conn: sqlite3.Connection, rowids: Iterable[int]) -> None:
        conn.execute("DELETE FROM docs WHERE rowid IN (SELECT value FROM json_each(?))",
                     (_id_list(rowids),))

    @staticmethod
    def delete_all(conn: sqlite3.Connection) -> None:
        conn.execute("DELETE FROM docs")
