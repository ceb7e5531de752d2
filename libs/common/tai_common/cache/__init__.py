"""The Cache port (version-stamped entries with TTL), its adapters and the read-through helper."""
