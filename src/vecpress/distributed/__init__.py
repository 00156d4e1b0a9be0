"""Scale out on Ray: :class:`ShardedCollection` spreads a collection over Ray actors, one per
shard or several per actor, each shard a :class:`~vecpress.Collection` directory; the driver routes writes by a
stable hash of the id and merges searches on exact scores. Needs the ``ray`` extra
(``pip install 'vecpress[ray]'``); importing this package does not import Ray.
"""

from .layout import MAX_SHARDS, shard_of
from .results import SearchResult
from .fanout import ShardUnavailableError
from .sharded import ShardedCollection

__all__ = ["MAX_SHARDS", "SearchResult", "ShardedCollection", "ShardUnavailableError", "shard_of"]
