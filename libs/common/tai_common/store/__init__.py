"""The DocumentStore port and its adapters."""
