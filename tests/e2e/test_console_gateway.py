"""The operator console through the gateway, as a browser meets it with authentication on:
the page at `/` with its Content-Security-Policy and no token asked, while the API's JSON
routes still refuse callers without one."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from support.gateway import Gateway, GatewayConfig
from support.processes import free_port
from support.tokens import AUDIENCE, ISSUER, TokenIssuer
from tai_console.server import STATIC_DIR

pytestmark = pytest.mark.slow


def http_get(url: str, token: str = "") -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url)
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=10) as reply:
            return reply.status, {k.lower(): v for k, v in reply.getheaders()}, reply.read()
    except urllib.error.HTTPError as error:
        return error.code, {k.lower(): v for k, v in error.headers.items()}, error.read()


@pytest.fixture(scope="module")
def console_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A console process (TAI_AUTH=jwt) behind a gateway checking tokens."""
    directory = tmp_path_factory.mktemp("console-e2e")
    jwks_file = TokenIssuer().write_jwks(directory / "jwks.json")
    port = free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TAI_")},
        "TAI_CONSOLE_PORT": str(port),
        "TAI_AUTH": "jwt",
    }
    log_path = directory / "console.log"
    with log_path.open("wb") as log:
        console = subprocess.Popen(
            [sys.executable, "-m", "tai_console"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    # The services' upstreams are left at their defaults: these calls never reach them.
    gateway = Gateway(
        GatewayConfig(
            jwks_file=str(jwks_file),
            issuer=ISSUER,
            audience=AUDIENCE,
            console=f"127.0.0.1:{port}",
        ),
        directory,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                if http_get(f"http://127.0.0.1:{port}/healthz")[0] == 200:
                    break
            assert console.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        yield gateway.start()
    finally:
        gateway.stop()
        console.terminate()
        console.wait(10)


def test_the_gateway_serves_the_console_page_with_its_csp_without_a_token(
    console_gateway: Gateway,
) -> None:
    status, headers, body = http_get(f"{console_gateway.url}/")

    assert status == 200, body
    assert body == (STATIC_DIR / "index.html").read_bytes()
    assert headers["content-type"].startswith("text/html")
    csp = headers["content-security-policy"]
    assert "default-src 'self'" in csp
    assert "script-src 'self'" in csp
    assert "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"


def test_the_page_learns_through_the_gateway_that_it_must_ask_for_a_token(
    console_gateway: Gateway,
) -> None:
    status, _, body = http_get(f"{console_gateway.url}/config.json")

    assert (status, json.loads(body)) == (
        200,
        {"auth": "jwt", "namespaces_claim": "tai_namespaces"},
    )


def test_the_api_behind_the_same_origin_still_refuses_callers_without_a_token(
    console_gateway: Gateway,
) -> None:
    status, _, body = http_get(f"{console_gateway.url}/v1/policies")
    assert status == 401, body

    status, _, body = http_get(f"{console_gateway.url}/v1/policies", token="not-a-jwt")
    assert status == 401, body
