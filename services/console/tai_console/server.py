"""The console's file server: the files under static/, /healthz for probes, and /config.json
telling the page whether the API wants a bearer token.

The console is static files only (no templates, no sessions, no API of its own: the browser
calls the API's JSON routes through the gateway), so the standard library's http.server serves
it; a web framework would add dependencies and nothing it needs.

Settings (environment): TAI_HOST (default 127.0.0.1), TAI_CONSOLE_PORT (default 8088),
TAI_AUTH ("off" or "jwt", default "off"), TAI_LOG_LEVEL (DEBUG logs one JSON line a request).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from functools import partial
from http import HTTPStatus
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any
from urllib.parse import urlsplit

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_PORT = 8088

# Everything from this origin only: no inline script or style, no framing, no <base>.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidated on every load, so a new release's modules are never mixed with old ones.
    "Cache-Control": "no-cache",
}
# Set here rather than taken from the mimetypes module, which reads the machine's
# /etc/mime.types (where .js may be application/x-javascript).
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
    ".txt": "text/plain; charset=utf-8",
}

log = logging.getLogger("tai_console")


class ConsoleHandler(SimpleHTTPRequestHandler):
    """GET and HEAD of the console's files, with the security headers on every response."""

    extensions_map = CONTENT_TYPES
    server_version = "tai-console"
    sys_version = ""

    def __init__(
        self, *args: Any, auth: str, namespaces_claim: str, directory: str, **kwargs: Any
    ) -> None:
        self.auth = auth
        self.namespaces_claim = namespaces_claim
        # Set before the base's __init__, which handles the request.
        self.root = Path(directory).resolve()
        super().__init__(*args, directory=directory, **kwargs)

    def do_GET(self) -> None:
        """Serves /healthz and /config.json, else a file under static/."""
        if self._answered_by_route():
            return
        super().do_GET()

    def do_HEAD(self) -> None:
        """As GET, without the body."""
        if self._answered_by_route(head=True):
            return
        super().do_HEAD()

    def _answered_by_route(self, head: bool = False) -> bool:
        path = urlsplit(self.path).path
        if path == "/healthz":
            self._send_bytes(b"ok", "text/plain; charset=utf-8", head)
            return True
        if path == "/config.json":
            # The claim the page reads a token's namespaces and roles from, as the services do.
            config = {"auth": self.auth, "namespaces_claim": self.namespaces_claim}
            body = json.dumps(config).encode()
            self._send_bytes(body, "application/json", head)
            return True
        return False

    def _send_bytes(self, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def send_head(self) -> Any:
        """The file's headers, or 404 when the URL leads outside static/ (through a symbolic
        link: the base class already drops `..` from URLs)."""
        if not Path(self.translate_path(self.path)).resolve().is_relative_to(self.root):
            self.send_error(HTTPStatus.NOT_FOUND, "File not found")
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> None:
        """No listings: a folder without index.html is not found."""
        self.send_error(HTTPStatus.NOT_FOUND, "File not found")

    def end_headers(self) -> None:
        for name, value in SECURITY_HEADERS.items():
            self.send_header(name, value)
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """One JSON line a request, at DEBUG (probes and page loads are not worth more)."""
        if log.isEnabledFor(logging.DEBUG):
            status = code.value if isinstance(code, HTTPStatus) else code
            log.debug(
                json.dumps(
                    {
                        "client": self.client_address[0],
                        "method": self.command,
                        "path": urlsplit(self.path).path,
                        "status": status,
                        "bytes": size,
                    }
                )
            )

    def log_message(self, format: str, *args: Any) -> None:
        """The base class's other messages (errors already answered), at DEBUG too."""
        log.debug(format, *args)


def make_server(
    host: str,
    port: int,
    auth: str = "off",
    directory: Path = STATIC_DIR,
    namespaces_claim: str = "tai_namespaces",
) -> ThreadingHTTPServer:
    """A server for `directory` bound to host:port (port 0: any free one), not yet serving."""
    if auth not in ("off", "jwt"):
        raise ValueError(f"TAI_AUTH: {auth!r} is neither 'off' nor 'jwt'")
    handler = partial(
        ConsoleHandler, auth=auth, namespaces_claim=namespaces_claim, directory=str(directory)
    )
    server = ThreadingHTTPServer((host, port), handler)
    server.daemon_threads = True
    return server


def _port_from_env() -> int:
    value = os.environ.get("TAI_CONSOLE_PORT", "").strip() or str(DEFAULT_PORT)
    if not value.isdigit() or not 0 <= int(value) < 65536:
        raise ValueError(f"TAI_CONSOLE_PORT: {value!r} is not a port number")
    return int(value)


def main() -> None:
    """Serves the console on TAI_HOST:TAI_CONSOLE_PORT until SIGTERM or SIGINT."""
    # Plain logging: tai_common's JSON setup would bring the services' dependencies into a
    # process that serves files; the access lines are JSON themselves.
    logging.basicConfig(
        level=os.environ.get("TAI_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        server = make_server(
            os.environ.get("TAI_HOST", "127.0.0.1"),
            _port_from_env(),
            os.environ.get("TAI_AUTH", "off"),
            namespaces_claim=os.environ.get("TAI_JWT_NAMESPACES_CLAIM", "").strip()
            or "tai_namespaces",
        )
    except (ValueError, OSError) as error:
        print(f"tai-console: {error}", file=sys.stderr)
        sys.exit(2)

    def stop(signum: int, frame: FrameType | None) -> None:
        # shutdown() waits for serve_forever() to return, so it runs on another thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    host, port = server.server_address[:2]
    log.info("console serving %s on http://%s:%s/", STATIC_DIR, host, port)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    log.info("console stopped")
