"""Token buckets per caller and method: the port and its adapters (in process, Redis)."""
