"""The console's file server as a browser and a kubelet meet it: the page and its modules with
the right types and a strict Content-Security-Policy, /healthz, /config.json saying whether
to ask for a token, nothing outside static/, and a clean stop on SIGTERM."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from support.processes import free_port
from tai_console.server import STATIC_DIR, make_server

CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    """GET `path` sent as written (http.client does not normalise `..`)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", path)
        reply = connection.getresponse()
        return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    finally:
        connection.close()


@pytest.fixture
def site(tmp_path: Path) -> Path:
    """A console folder with a page, a module, a style sheet, a sub-folder without an index,
    and a symbolic link leading out of it; a secret beside it."""
    root = tmp_path / "static"
    (root / "views").mkdir(parents=True)
    (root / "index.html").write_text("<!doctype html><title>TAI</title>")
    (root / "app.js").write_text("export const answer = 42;\n")
    (root / "console.css").write_text("body { margin: 0 }\n")
    (root / "views" / "policies.js").write_text("export {};\n")
    (tmp_path / "secret.txt").write_text("not for browsers")
    (root / "leak.txt").symlink_to(tmp_path / "secret.txt")
    return root


@pytest.fixture
def serve(site: Path) -> Iterator[Callable[[str], int]]:
    """Starts a console server on `site` with the given TAI_AUTH; returns its port."""
    servers = []

    def start(auth: str) -> int:
        server = make_server("127.0.0.1", 0, auth=auth, directory=site)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return int(server.server_address[1])

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def test_the_root_is_the_page_with_the_security_headers(serve: Callable[[str], int]) -> None:
    status, headers, body = get(serve("off"), "/")

    assert status == 200
    assert body == b"<!doctype html><title>TAI</title>"
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["content-security-policy"] == CSP
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["referrer-policy"] == "no-referrer"
    assert headers["cache-control"] == "no-cache"


def test_modules_and_style_sheets_have_the_types_browsers_require(
    serve: Callable[[str], int],
) -> None:
    port = serve("off")

    status, headers, body = get(port, "/views/policies.js")
    assert (status, body) == (200, b"export {};\n")
    assert headers["content-type"].split(";")[0] == "text/javascript"
    assert headers["content-security-policy"] == CSP

    status, headers, _ = get(port, "/console.css")
    assert status == 200
    assert headers["content-type"].split(";")[0] == "text/css"


@pytest.mark.parametrize(("auth", "expected"), [("off", "off"), ("jwt", "jwt")])
def test_config_tells_the_page_whether_to_ask_for_a_token(
    serve: Callable[[str], int], auth: str, expected: str
) -> None:
    status, headers, body = get(serve(auth), "/config.json")

    assert status == 200
    assert headers["content-type"] == "application/json"
    assert json.loads(body) == {"auth": expected, "namespaces_claim": "tai_namespaces"}


def test_healthz_answers_ok_for_probes(serve: Callable[[str], int]) -> None:
    status, headers, body = get(serve("off"), "/healthz")

    assert (status, body) == (200, b"ok")
    assert headers["content-security-policy"] == CSP


@pytest.mark.parametrize(
    "path",
    [
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/views/../../secret.txt",
        "/leak.txt",  # a symbolic link leading out of the folder
        "/missing.js",
        "/views/",  # a folder without index.html: no listing
    ],
)
def test_nothing_outside_the_files_is_served(serve: Callable[[str], int], path: str) -> None:
    status, headers, body = get(serve("off"), path)

    assert status == 404
    assert b"not for browsers" not in body
    assert b"policies.js" not in body
    assert headers["content-security-policy"] == CSP


def test_a_bad_auth_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="TAI_AUTH"):
        make_server("127.0.0.1", 0, auth="maybe")


def test_the_console_process_serves_its_page_and_stops_on_sigterm(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TAI_")},
        "TAI_CONSOLE_PORT": str(port),
        "TAI_AUTH": "jwt",
        "TAI_JWT_NAMESPACES_CLAIM": "teams",
        "TAI_LOG_LEVEL": "DEBUG",
    }
    log_path = tmp_path / "console.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "tai_console"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                status, _, body = get(port, "/healthz")
                break
            except OSError:
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, log_path.read_text()
                time.sleep(0.05)
        assert (status, body) == (200, b"ok")
        status, headers, body = get(port, "/")
        assert status == 200
        assert body == (STATIC_DIR / "index.html").read_bytes()
        assert headers["content-security-policy"] == CSP
        assert json.loads(get(port, "/config.json")[2]) == {
            "auth": "jwt",
            "namespaces_claim": "teams",
        }

        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    # One JSON access line a request at DEBUG.
    access = [
        json.loads(line.split(": ", 1)[1])
        for line in log_path.read_text().splitlines()
        if "tai_console: {" in line
    ]
    assert {"method": "GET", "path": "/", "status": 200} in [
        {k: entry[k] for k in ("method", "path", "status")} for entry in access
    ]
