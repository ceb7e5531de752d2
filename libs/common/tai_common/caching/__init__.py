"""Values kept in memory in front of a port, whatever its adapter: a read-through cache over the
Cache port, and a secret kept current over the SecretSource port."""

from tai_common.caching.read_through import Loader, ReadThrough
from tai_common.caching.watched_secret import ChangeCallback, WatchedSecret

__all__ = ["ChangeCallback", "Loader", "ReadThrough", "WatchedSecret"]
