"""Logging for every service: one JSON object a line (python-json-logger), or plain text for
people at a terminal."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.json import JsonFormatter

from tai_common.auth import current_principal
from tai_common.core import current_ids


class _ContextFilter(logging.Filter):
    """Stamps each record with the service, the current trace and span ids, and the caller of
    the request being handled (never secrets or payloads: those are not in the context)."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def filter(self, record: logging.LogRecord) -> bool:
        record.service = self._service
        record.trace_id, record.span_id = current_ids()
        record.principal = current_principal().name
        return True


def configure_logging(service: str, level: str = "INFO", fmt: str = "json") -> None:
    """Routes the root logger to stderr in `fmt` ("json" or "text"), stamped with `service`."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_ContextFilter(service))
    if fmt == "json":
        handler.setFormatter(
            JsonFormatter(
                "{asctime}{levelname}{service}{name}{message}{trace_id}{span_id}{principal}",
                style="{",
                rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
                timestamp=False,
            )
        )
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)-7s %(service)s %(name)s: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # google.api_core stops its records from reaching the root logger unless the "google" logger
    # is configured before the first client is made; configure it here so they reach ours.
    logging.getLogger("google").setLevel(logging.WARNING)
    # Libraries whose DEBUG output carries request data (SQL parameters, HTTP bodies): they
    # stay at WARNING even when TAI's own logs are at DEBUG — no payloads in the logs.
    for noisy in ("aiosqlite", "urllib3", "hvac", "aiokafka", "redis", "asyncio", "opentelemetry"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
