"""Mutual TLS between services, with a throwaway CA made by the test: a client with a
certificate from the CA gets in; without a certificate, or with one from another CA, it does
not; a service's certificate alone allows exactly the internal calls that service makes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support import inprocess
from support.certs import CertFiles, CertificateAuthority, spiffe
from support.running import RunningGovernor
from support.secured import auth_settings
from support.tokens import TokenIssuer
from tai.v1 import governor_pb2
from tai_client import (
    ChannelOptions,
    GovernorClient,
    NotFound,
    PermissionDenied,
    SchedulerClient,
    Unavailable,
    open_channel,
)
from tai_rpc.channel import TlsFiles


@dataclass
class TlsSuite:
    ca: CertificateAuthority
    governor: RunningGovernor
    governor_cert: CertFiles
    issuer: TokenIssuer

    def channel(
        self, cert: CertFiles | None, token: str = "", ca_file: Path | None = None
    ) -> grpc.aio.Channel:
        tls = TlsFiles(
            str(ca_file or self.ca.ca_file),
            str(cert.cert) if cert else "",
            str(cert.key) if cert else "",
        )
        return open_channel(
            self.governor.target, ChannelOptions(tls=tls, bearer_token=token, max_attempts=1)
        )


def tls_settings(cert: CertFiles) -> dict[str, str]:
    return {"tls_cert": str(cert.cert), "tls_key": str(cert.key), "tls_ca": str(cert.ca)}


@pytest.fixture
async def tls_suite(sqlite_url: str, tmp_path: Path) -> AsyncIterator[TlsSuite]:
    ca = CertificateAuthority(tmp_path)
    issuer = TokenIssuer()
    cert = ca.issue("governor", spiffe_id=spiffe("governor"), server=True)
    settings = {**auth_settings(issuer.write_jwks(tmp_path / "jwks.json")), **tls_settings(cert)}
    async with inprocess.governor(sqlite_url, **settings) as governor:
        yield TlsSuite(ca, governor, cert, issuer)


async def test_a_client_with_a_certificate_from_the_ca_gets_in(tls_suite: TlsSuite) -> None:
    client_cert = tls_suite.ca.issue("taictl")
    token = tls_suite.issuer.token("alice", ["viewer"])
    async with tls_suite.channel(client_cert, token) as channel:
        await GovernorClient(channel).list_page()


async def test_a_client_without_a_certificate_is_refused(tls_suite: TlsSuite) -> None:
    token = tls_suite.issuer.token("alice", ["viewer"])
    async with tls_suite.channel(None, token) as channel:
        with pytest.raises(Unavailable):
            await GovernorClient(channel).list_page(timeout=5)


async def test_a_certificate_from_another_ca_is_refused(
    tls_suite: TlsSuite, tmp_path: Path
) -> None:
    foreign = CertificateAuthority(tmp_path, name="foreign-ca")
    impostor = foreign.issue("scheduler", spiffe_id=spiffe("scheduler"))
    # It trusts our server (our CA) but presents a certificate our server does not trust.
    async with tls_suite.channel(impostor, ca_file=tls_suite.ca.ca_file) as channel:
        with pytest.raises(Unavailable):
            await GovernorClient(channel).enforce("pol-x", timeout=5)


async def test_a_service_certificate_allows_only_that_services_calls(
    tls_suite: TlsSuite,
) -> None:
    scheduler_cert = tls_suite.ca.issue("scheduler", spiffe_id=spiffe("scheduler"))
    async with tls_suite.channel(scheduler_cert) as channel:
        client = GovernorClient(channel)
        # An executor's call: let in (and then the policy is simply unknown).
        with pytest.raises(NotFound):
            await client.enforce("pol-unknown")
        # Not a call the Scheduler makes.
        with pytest.raises(PermissionDenied) as caught:
            await client.propose(policy_type="finance", name="x")
        assert "service 'scheduler' may not call" in caught.value.message


async def test_the_schedulers_executor_calls_the_governor_over_mutual_tls(
    tls_suite: TlsSuite, sqlite_url: str, tmp_path: Path
) -> None:
    admin = tls_suite.issuer.token("carol", ["admin"])
    taictl_cert = tls_suite.ca.issue("taictl")
    async with tls_suite.channel(taictl_cert, admin) as channel:
        policy_id = (
            await GovernorClient(channel).propose(policy_type="security", name="tls")
        ).resource_id

    scheduler_cert = tls_suite.ca.issue("scheduler", spiffe_id=spiffe("scheduler"), server=True)
    settings = {
        **auth_settings(tmp_path / "jwks.json"),
        **tls_settings(scheduler_cert),
    }
    async with inprocess.scheduler(
        sqlite_url, tls_suite.governor.target, "127.0.0.1:1", **settings
    ) as scheduler:
        tls = TlsFiles(str(tls_suite.ca.ca_file), str(taictl_cert.cert), str(taictl_cert.key))
        async with open_channel(
            scheduler.target, ChannelOptions(tls=tls, bearer_token=admin, max_attempts=1)
        ) as channel:
            await SchedulerClient(channel).submit(
                task_type="enforce_policy", parameters={"policy_id": policy_id}
            )
        deadline = time.monotonic() + 20
        async with tls_suite.channel(taictl_cert, admin) as channel:
            while True:
                policy = await GovernorClient(channel).get(policy_id)
                if policy.state == governor_pb2.POLICY_STATE_ENFORCED:
                    break
                assert time.monotonic() < deadline, "the task never enforced the policy"
                await asyncio.sleep(0.1)
    assert policy.last_modified_by == "service:scheduler"


async def test_a_service_certificate_makes_its_calls_in_every_namespace_and_no_others(
    tls_suite: TlsSuite,
) -> None:
    platform = tls_suite.issuer.token("pat", [], extra={"tai_namespaces": {"*": "admin"}})
    person_cert = tls_suite.ca.issue("pat")
    async with tls_suite.channel(person_cert, platform) as channel:
        await GovernorClient(channel).create_namespace("team-a")
    coordinator_cert = tls_suite.ca.issue("coordinator", spiffe_id=spiffe("coordinator"))
    tls = TlsFiles(str(tls_suite.ca.ca_file), str(coordinator_cert.cert), str(coordinator_cert.key))
    options = ChannelOptions(tls=tls, max_attempts=1, namespace="team-a")
    async with open_channel(tls_suite.governor.target, options) as channel:
        client = GovernorClient(channel)
        # The Coordinator's own call, in team-a.
        assert list((await client.list_page()).policies) == []
        with pytest.raises(PermissionDenied):
            await client.propose(policy_type="finance", name="x")
