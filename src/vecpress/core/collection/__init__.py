"""``Collection``: documents (string id, text, metadata, vector) over one ``Index`` + SQLite.

The package, one module per thing the collection owns:

- :mod:`.collection`: the :class:`Collection` class and its public API (upsert, delete, get,
  search, MMR, relevance, stats, save, refresh);
- :mod:`.opening`: creating and opening its directory, stored settings, crash reconciliation;
- :mod:`.search`: dense, text and hybrid search, fusion, MMR, cached filter masks;
- :mod:`.results`: :class:`Hit`, :class:`SearchResults`, :func:`relevance_score`;
- :mod:`.validation`: argument checks shared with the sharded and multi-vector stores;
- :mod:`.rwlock`: the readers-writer lock that holds searches off around a commit.

``Collection`` inherits its internals from ``_Opening`` and ``_Search``. A module constant is
read where it is defined: patch it there, not on this package, which only re-exports it.
"""

from ..index import METRIC_ALIASES, Index
from .collection import INDEX_OPTIONS, Collection
from .opening import FORMAT_NAME, FORMAT_VERSION, INDEX_DIR, RELEVANCE_META_KEY
from .results import Hit, SearchResults, relevance_score
from .rwlock import _ReadWriteLock
from .search import (FUSIONS, RRF_K, SEARCH_MODES, checked_search_options, fuse_rankings,
                     maximal_marginal_relevance)
from .validation import (_checked_id_list, _checked_ids, _checked_list, _checked_relevance,
                         _checked_relevant_ids, _checked_texts, _json_value, _metadata_json,
                         _storable_text)
