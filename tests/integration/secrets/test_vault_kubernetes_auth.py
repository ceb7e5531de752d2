"""Kubernetes auth, end to end through a real OpenBao server.

There is no Kubernetes here; what Vault needs from it is one call: the TokenReview API, which
says whether a service-account JWT is valid and whose it is. A small HTTP server plays that
API, so OpenBao's real kubernetes auth plugin runs its real code path (parse the JWT, ask the
TokenReview endpoint, match the role's bound service account and namespace, issue a token) on
the JWT our adapter read from the projected-token file.

What this does not prove: a real API server's TokenReview (audiences, expiry of projected
tokens, RBAC for the reviewer), nor the chart's configuration of the auth method.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from support.vault_server import VaultServer
from tai_common.core import FailedPrecondition, PermissionDenied
from tai_common.vault import KubernetesAuth, VaultConfig, VaultCredentials, VaultSecrets
from vault_kit import Kit, assert_no_leak, count_logins

pytestmark = pytest.mark.slow

NAMESPACE = "tai"
SERVICE_ACCOUNT = "tai-governor"


@dataclass
class FakeTokenReview:
    """`POST /apis/authentication.k8s.io/v1/tokenreviews`: authenticates the JWTs in `valid`
    as `system:serviceaccount:tai:tai-governor`; records what it was asked."""

    valid: set[str] = field(default_factory=set, repr=False)
    reviewed: list[str] = field(default_factory=list, repr=False)
    reviewer_headers: list[str] = field(default_factory=list)
    audiences: list[list[str] | None] = field(default_factory=list)
    url: str = ""


def _serve(fake: FakeTokenReview) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            review = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            token = review["spec"]["token"]
            fake.reviewed.append(token)
            fake.reviewer_headers.append(self.headers.get("Authorization", ""))
            # As the API server does: a token is valid for the requested audiences it carries,
            # and the answer lists them (the plugin checks that list).
            requested = review["spec"].get("audiences")
            fake.audiences.append(requested)
            carried = jwt.decode(token, options={"verify_signature": False}).get("aud", [])
            audiences = [a for a in requested if a in carried] if requested else None
            authenticated = token in fake.valid and (not requested or bool(audiences))
            status: dict[str, Any] = {"authenticated": authenticated}
            if audiences is not None:
                status["audiences"] = audiences
            if authenticated:
                status["user"] = {
                    "username": f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}",
                    "uid": "0d6f2f4e-uid",
                    "groups": ["system:serviceaccounts"],
                }
            body = json.dumps(
                {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "status": status}
            ).encode()
            self.send_response(201)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the test reads `fake.reviewed`; stderr noise helps nobody

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def _ca_certificate() -> str:
    """Any CA certificate: the plugin insists on one, the plain-http fake never uses it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kubernetes")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def service_account_jwt(audience: str | None = None) -> str:
    """A JWT shaped like a service-account token (its signature is TokenReview's business, which
    is the fake's; the plugin only parses it)."""
    now = int(time.time())
    audiences = {} if audience is None else {"aud": [audience]}
    return jwt.encode(
        {
            **audiences,
            "iss": "https://kubernetes.default.svc.cluster.local",
            "sub": f"system:serviceaccount:{NAMESPACE}:{SERVICE_ACCOUNT}",
            "iat": now,
            "exp": now + 3600,
            "kubernetes.io": {
                "namespace": NAMESPACE,
                "serviceaccount": {"name": SERVICE_ACCOUNT, "uid": "0d6f2f4e-uid"},
            },
            "jti": secrets.token_hex(8),
        },
        ec.generate_private_key(ec.SECP256R1()),
        algorithm="ES256",
    )


@pytest.fixture(scope="module")
def token_review() -> Iterator[FakeTokenReview]:
    fake = FakeTokenReview()
    server = _serve(fake)
    yield fake
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def kubernetes_mount(vault: VaultServer, token_review: FakeTokenReview) -> str:
    mount = f"kubernetes-{secrets.token_hex(3)}"
    admin = vault.admin()
    admin.sys.enable_auth_method("kubernetes", path=mount)
    admin.auth.kubernetes.configure(
        kubernetes_host=token_review.url,
        kubernetes_ca_cert=_ca_certificate(),
        token_reviewer_jwt="reviewer-jwt-for-the-fake",
        disable_local_ca_jwt=True,
        mount_point=mount,
    )
    return mount


def _role(kit: Kit, mount: str, **options: Any) -> str:
    role = f"tai-{secrets.token_hex(3)}"
    kit.admin.auth.kubernetes.create_role(
        role,
        bound_service_account_names=[SERVICE_ACCOUNT],
        bound_service_account_namespaces=[NAMESPACE],
        policies=[kit.policy],
        mount_point=mount,
        **options,
    )
    return role


def _token_file(
    tmp_path: Path, kit: Kit, review: FakeTokenReview, audience: str | None = None
) -> Path:
    token = service_account_jwt(audience)
    kit.sensitive.add(token)
    review.valid.add(token)
    path = tmp_path / "serviceaccount-token"
    path.write_text(token)
    return path


async def test_kubernetes_login_end_to_end_from_a_url(
    kit: Kit, kubernetes_mount: str, token_review: FakeTokenReview, tmp_path: Path
) -> None:
    kit.put("db", {"password": "k8s-pw-1d1d"})
    role = _role(kit, kubernetes_mount, ttl="1m")
    token_file = _token_file(tmp_path, kit, token_review)
    url = (
        f"vault://127.0.0.1:{kit.vault.port}?tls=0&auth=kubernetes&role={role}"
        f"&auth_mount={kubernetes_mount}&prefix={kit.prefix}"
    )

    source = await VaultSecrets.open(
        VaultConfig.from_url(url, VaultCredentials(kubernetes_token_file=token_file))
    )
    kit.opened.append(source)

    assert (await source.get("db")).reveal("password") == "k8s-pw-1d1d"
    # OpenBao reviewed exactly the JWT in the file, as the configured reviewer.
    assert token_review.reviewed[-1] == token_file.read_text()
    assert token_review.reviewer_headers[-1] == "Bearer reviewer-jwt-for-the-fake"
    assert source.lease is not None
    assert source.lease.ttl_seconds == 60


async def test_a_projected_token_for_the_vault_audience(
    kit: Kit, kubernetes_mount: str, token_review: FakeTokenReview, tmp_path: Path
) -> None:
    """The chart's projected token (`serviceAccountToken: {audience: vault}`) and a role bound
    to that audience: OpenBao asks TokenReview for exactly that audience."""
    kit.put("db", {"password": "k8s-pw-3f3f"})
    token_file = _token_file(tmp_path, kit, token_review, audience="vault")
    role = _role(kit, kubernetes_mount, audience="vault")

    source = await kit.open(KubernetesAuth(role, token_file, mount=kubernetes_mount))

    assert (await source.get("db")).reveal("password") == "k8s-pw-3f3f"
    assert token_review.audiences[-1] == ["vault"]


async def test_a_rotated_service_account_token_is_used_at_the_next_login(
    kit: Kit,
    kubernetes_mount: str,
    token_review: FakeTokenReview,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    kit.put("db", {"password": "k8s-pw-2e2e"})
    # Max TTL = TTL: the first renewal is capped, so the adapter logs in again soon.
    role = _role(kit, kubernetes_mount, ttl="2s", max_ttl="2s")
    token_file = _token_file(tmp_path, kit, token_review)
    logins = count_logins(caplog)
    source = await kit.open(KubernetesAuth(role, token_file, mount=kubernetes_mount))

    # The kubelet refreshes the projected token; the next login must present the new one.
    rotated = service_account_jwt()
    kit.sensitive.add(rotated)
    token_review.valid.add(rotated)
    token_file.write_text(rotated)

    deadline = time.monotonic() + 5
    while rotated not in token_review.reviewed and time.monotonic() < deadline:
        assert (await source.get("db")).reveal("password") == "k8s-pw-2e2e"
        await asyncio.sleep(0.2)
    assert rotated in token_review.reviewed
    assert logins() >= 2
    assert (await source.get("db")).reveal("password") == "k8s-pw-2e2e"


async def test_an_unknown_role_is_refused_without_quoting_the_jwt(
    kit: Kit, kubernetes_mount: str, token_review: FakeTokenReview, tmp_path: Path
) -> None:
    token_file = _token_file(tmp_path, kit, token_review)
    with pytest.raises(PermissionDenied, match="login refused") as refused:
        await kit.open(KubernetesAuth("no-such-role", token_file, mount=kubernetes_mount))
    assert_no_leak(refused.value, kit.sensitive)


async def test_a_jwt_the_cluster_rejects_is_permission_denied(
    kit: Kit, kubernetes_mount: str, tmp_path: Path
) -> None:
    role = _role(kit, kubernetes_mount)
    token = service_account_jwt()  # never added to the fake's valid tokens
    kit.sensitive.add(token)
    token_file = tmp_path / "token"
    token_file.write_text(token)
    with pytest.raises(PermissionDenied) as refused:
        await kit.open(KubernetesAuth(role, token_file, mount=kubernetes_mount))
    assert_no_leak(refused.value, kit.sensitive)


async def test_a_missing_service_account_token_names_the_file(
    kit: Kit, kubernetes_mount: str, tmp_path: Path
) -> None:
    role = _role(kit, kubernetes_mount)
    with pytest.raises(FailedPrecondition, match="service-account token file"):
        await kit.open(KubernetesAuth(role, tmp_path / "absent", mount=kubernetes_mount))
