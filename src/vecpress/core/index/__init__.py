"""``Index``: int64 ids over compact codes in RAM, kept originals for an exact rerank, durable files.

The package, one module per thing the index owns:

- :mod:`.index`: the :class:`Index` class, its public API (add, remove, search, get, stats,
  save, compact, close) and the two-stage search over a snapshot;
- :mod:`.config`: the constructor's arguments checked into the manifest's config, and the
  array helpers shared by the others (normalisation, padded results, RAM per vector);
- :mod:`.loading`: opening a store, replaying its row log, a reader's ``refresh``;
- :mod:`.writes`: segments, tombstones, the row log and manifest commits;
- :mod:`.upkeep`: merges, compaction and codec refits, streamed in bounded chunks;
- :mod:`.lists`: training the inverted lists, their layout in RAM, the partitioned scan.

``Index`` inherits its internals from one mixin per module (``_Loading``, ``_Writes``,
``_Upkeep``, ``_Lists``); they share its attributes and are not used on their own. A module
constant is read where it is defined: patch it there (``vecpress.core.index.writes.RETAIN_SECONDS``),
not on this package, which only re-exports it.
"""

from .config import (DEFAULT_OVERSAMPLE, FLOAT16_MAX, METRIC_ALIASES, RERANK_DTYPES,
                     _MAX_SQUARED_NORM, _check_partitions, _empty_result,
                     _make_config, _normalized, _pad, _spread, ram_bytes_per_vector)
from .index import MAX_PADDED_K, Index
from .lists import _ListPlan, _scan_lists
from .loading import (LOAD_ATTEMPTS, _config_from_manifest, _map_originals, _read_centroids,
                      _read_consistently, _read_labels, _read_tombstones)
from .upkeep import REENCODE_ROWS, _code_store, _Rebuilt
from .writes import MAX_TOMBSTONE_FILES, READER_BYTES_PER_SECOND, RETAIN_SECONDS

