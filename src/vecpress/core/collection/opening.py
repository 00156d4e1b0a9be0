"""Creating and opening a :class:`~vecpress.core.collection.Collection`'s directory: its
SQLite documents and its index, the stored settings checked against the given ones, and the
reconciliation of the two stores after a crash."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from .. import storage
from ..docstore import DB_FILE, DocStore
from ..index import METRIC_ALIASES, Index
from ..relevance import DEFAULT_PARAMS, RelevanceParams

FORMAT_NAME = "vecpress-collection"
FORMAT_VERSION = 1
INDEX_DIR = "index"
#: key of the fitted relevance parameters in the collection's metadata (SQLite ``meta``)
RELEVANCE_META_KEY = "relevance"


class _Opening:
    """The :class:`~vecpress.core.collection.Collection` methods that create and open it."""

    # ------------------------------------------------------------------ create / open
    def _create(self, given: dict[str, Any]) -> None:
        if given["dim"] is None:
            raise TypeError("dim is required to create a collection: Collection(dim, path=...)")
        options = {k: v for k, v in given.items() if k not in ("dim", "bits", "metric")}
        bits = 4 if given["bits"] is None else given["bits"]
        metric = "cosine" if given["metric"] is None else given["metric"]
        # an in-memory Index validates every argument before any file exists
        index = Index(given["dim"], metric=metric, bits=bits, path=None, **options)
        meta = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "dim": index.dim,
                "metric": index.metric, "bits": index.bits, "index_options": options}
        if self._path is not None:
            path = self._path
            if path.exists() and not path.is_dir():
                raise NotADirectoryError(f"path={str(path)!r} is a file; give a directory")
            if path.exists() and any(p.name != storage.LOCK_FILE for p in path.iterdir()):
                raise FileExistsError(f"path={str(path)!r} is a non-empty directory that holds "
                                      f"no vecpress collection; choose a new or empty directory")
            path.mkdir(parents=True, exist_ok=True)
            self._lock = storage.DirectoryLock(path)
        try:
            # SQLite first: a crash before the Index directory exists leaves an empty collection
            # that the next open completes (see _open)
            self._store = DocStore(self._path, sync=self._durability == "full")
            self._store.create(meta)
            if self._path is not None:
                index = Index(given["dim"], metric=metric, bits=bits,
                              path=self._path / INDEX_DIR, durability=self._durability,
                              **options)
        except BaseException:
            if hasattr(self, "_store"):
                self._store.close()
            self._release_lock()
            raise
        self._index = index
        self._read_only = False
        self._meta = meta
        self._next_rowid = 0

    def _open(self, given: dict[str, Any], *, read_only: bool) -> None:
        path = self._path
        for name in (DB_FILE, f"{DB_FILE}-wal", f"{DB_FILE}-shm", f"{DB_FILE}-journal"):
            storage.require_plain(path / name)  # SQLite would follow a link out of the store
        storage.require_plain(path / INDEX_DIR, directory=True)
        if not read_only:
            self._lock = storage.DirectoryLock(path)
        try:
            self._store = DocStore(path, read_only=read_only,
                                   sync=self._durability == "full")
            self._meta = self._checked_meta(given)
            self._relevance = self._stored_relevance(self._meta)
            index_path = path / INDEX_DIR
            if (index_path / storage.MANIFEST).exists():
                self._index = Index.load(index_path, read_only=read_only,
                                         durability=self._durability)
            elif self._store.count() == 0 and not read_only:
                # a crash while creating: SQLite was written, the Index directory was not
                self._index = Index(self._meta["dim"], metric=self._meta["metric"],
                                    bits=self._meta["bits"], path=index_path,
                                    durability=self._durability,
                                    **self._meta["index_options"])
            else:
                raise storage.StoreCorruptedError(
                    f"{index_path}: the vector index of this collection is missing")
            if self._index.dim != self._meta["dim"] or self._index.metric != self._meta["metric"]:
                raise storage.StoreCorruptedError(
                    f"{index_path}: index has dim={self._index.dim}, metric={self._index.metric!r}"
                    f" but {path / DB_FILE} says dim={self._meta['dim']}, "
                    f"metric={self._meta['metric']!r}")
            self._read_only = read_only
            if not read_only:
                self._reconcile()
            live = self._index.ids
            self._next_rowid = max(self._store.max_rowid(),
                                   int(live.max()) if len(live) else -1) + 1
        except BaseException:
            if hasattr(self, "_store"):
                self._store.close()
            if hasattr(self, "_index"):
                self._index.close()
            self._release_lock()
            raise

    def _checked_meta(self, given: dict[str, Any]) -> dict[str, Any]:
        db = self._path / DB_FILE
        try:
            meta = self._store.meta() if self._store.has_schema() else {}
        except Exception as exc:  # sqlite3.DatabaseError: not a database, corrupted
            raise storage.StoreCorruptedError(f"{db}: not a readable SQLite database ({exc})") from None
        if not meta:
            raise storage.StoreCorruptedError(
                f"{db}: holds no collection (its creation was interrupted?); delete "
                f"{str(self._path)!r} and create the collection again")
        if meta.get("format") != FORMAT_NAME:
            raise storage.StoreCorruptedError(f"{db}: not a vecpress collection database")
        version = meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise storage.StoreCorruptedError(
                f"{db}: collection format version {version!r} is newer than this vecpress "
                f"supports ({FORMAT_VERSION}); upgrade vecpress to open it")
        stored = {"dim": meta["dim"], "bits": meta["bits"], "metric": meta["metric"],
                  **meta.get("index_options", {})}
        for name, value in given.items():
            if value is None:
                continue
            if name == "metric" and isinstance(value, str):
                value = METRIC_ALIASES.get(value.lower(), value)
            if name not in stored:
                raise ValueError(
                    f"{name}={value!r}: the collection at {str(self._path)!r} was created "
                    f"without {name} (the Index default applies); leave it out to open it")
            if stored[name] != value:
                raise ValueError(
                    f"{name}={value!r} does not match the collection at {str(self._path)!r}, "
                    f"created with {name}={stored.get(name)!r}; leave {name} out to open it "
                    f"as it is, or use a new path")
        return meta

    def _stored_relevance(self, meta: dict[str, Any]) -> RelevanceParams:
        if RELEVANCE_META_KEY not in meta:
            return DEFAULT_PARAMS
        return RelevanceParams.from_json(meta[RELEVANCE_META_KEY], self._path / DB_FILE)

    def _reconcile(self) -> None:
        """Make the Index hold exactly the vectors SQLite refers to (after a crash)."""
        in_index = self._index.ids
        in_sql = self._store.rowids()
        orphans = np.setdiff1d(in_index, in_sql)
        if len(orphans):
            self._index.remove(orphans)
        missing = np.setdiff1d(in_sql, in_index)
        if len(missing):  # cannot follow from a crash (vectors are written first)
            warnings.warn(f"{len(missing)} documents of {self._path} had no vector in the index "
                          f"(was the index directory replaced?); they were removed",
                          RuntimeWarning, stacklevel=3)
            with self._store.transaction() as conn:
                self._store.delete_rowids(conn, missing.tolist())
