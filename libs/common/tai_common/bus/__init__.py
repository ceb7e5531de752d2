"""The EventBus port, its adapters, events, the outbox and in-process fan-out."""
