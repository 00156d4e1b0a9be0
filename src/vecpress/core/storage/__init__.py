"""Durable files for an index directory: ``.npy`` arrays with CRC32 checksums and a JSON manifest.

The manifest is the single commit point. Array files are written (and fsynced) under names no
manifest refers to yet; then the new manifest is written to a temporary file, fsynced and
atomically renamed over the old one, and the directory is fsynced. A crash at any moment leaves
either the old manifest or the new one, each naming complete files. Files that no manifest names
are leftovers of an interrupted write and are removed when the store is next opened for writing;
the files a commit replaced are removed by a later commit (``Index`` keeps them a little longer
for readers that have just read the replaced manifest). With ``sync=False`` (an index's
``durability="process"``) nothing is fsynced: the rename still makes a commit atomic for other
processes and for ``kill -9``, and after a power loss the checksums refuse a manifest whose
files did not reach the disk. Large files are written in chunks by
:class:`ArrayWriter` and read back in chunks by :class:`RowReader`, so that copying a file never
holds it whole in memory.

A store directory is untrusted input (people download and share them). Every file in it is
opened without following a symbolic link and without blocking, and must be a regular file;
``.npy`` headers are parsed here and checked against the manifest and the file's size before
anything is allocated or mapped; the manifest is size-capped before it is parsed. Nothing here
uses pickle or ``np.load``. What the manifest may say is checked by
:mod:`vecpress.core.store_format`.

One module per part, every name re-exported here (callers write ``storage.<name>``):
``files`` (opening and creating files safely, fsyncs, :class:`StoreCorruptedError`),
``arrays`` (``.npy`` headers, checksums, whole and chunked reads and writes, lazily checked
originals), ``manifest`` (the commit point and the files it names) and ``locks`` (the
directory lock).
"""

from __future__ import annotations

from .files import (  # noqa: F401  (re-exported: callers use storage.<name>)
    _READ_FLAGS, _LOCK_FLAGS, _CREATE_FLAGS, StoreCorruptedError, fsync_dir, sync_files,
    open_regular_file, _file_kind, require_plain, create_new_file, _one_line)
from .arrays import (  # noqa: F401  (re-exported: callers use storage.<name>)
    ORIGINALS_BLOCK_ROWS, ARRAY_DTYPES, checksum, block_checksums, write_array, read_array,
    _read_npy_header, _checked_header, _read_data, _FEW_ROWS, CheckedRows, _npy_header,
    ArrayWriter, RowReader)
from .manifest import (  # noqa: F401  (re-exported: callers use storage.<name>)
    MANIFEST, FORMAT_NAME, FORMAT_VERSION, EXTENDED_FORMAT_VERSION, MAX_MANIFEST_BYTES,
    MAX_MANIFEST_CONTAINERS, write_manifest, read_manifest, _parse_json, _refuse_constant,
    tombstone_entries, manifest_files, remove_unreferenced, remove_files, remove_files_except,
    disk_bytes)
from .locks import (  # noqa: F401  (re-exported: callers use storage.<name>)
    LOCK_FILE, StoreLockedError, DirectoryLock, lock_new_directory)
