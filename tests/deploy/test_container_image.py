"""The container recipe (`Dockerfile`) builds the three images, and each image runs its service.

No Docker engine runs here, so `support.image_recipe` carries out the Dockerfile's steps in a
scratch folder: the build stage generates the protobuf code and builds wheels from the files the
recipe COPYs (as `.dockerignore` filters them), and each image's stage installs its service from
those wheels alone (`pip install --no-index`) into a fresh Python. The three entry points then
run together, each from its own image, and must report SERVING and answer a call. A package the
recipe leaves out of the build context (as `libs/client` once was) fails the install step.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from support.image_recipe import (
    RecipeError,
    RecipeRunner,
    Stage,
    describe,
    entrypoint_command,
    ignored,
)
from support.image_recipe import dockerignore_patterns as read_dockerignore
from support.processes import free_port, wait_serving
from tai.v1 import governor_pb2, governor_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("governor", "coordinator", "scheduler")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def build_stage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stage]:
    """The recipe's build stage, built once and reused for every image, as Docker's cache
    would (it reads no build argument)."""
    scratch = tmp_path_factory.mktemp("images")
    runner = RecipeRunner(ROOT / "Dockerfile", ROOT, scratch / "first", {"SERVICE": SERVICES[0]})
    runner.run()
    return {"build": runner.stages["build"]}


@pytest.fixture(scope="module")
def images(
    build_stage: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Stage]:
    """The three images, built from the one recipe."""
    scratch = tmp_path_factory.mktemp("images")
    return {
        service: RecipeRunner(
            ROOT / "Dockerfile", ROOT, scratch / service, {"SERVICE": service}
        ).run(build_stage)
        for service in SERVICES
    }


@dataclass
class ImageProcess:
    service: str
    process: subprocess.Popen[bytes]
    target: str
    log: Path


@pytest.fixture(scope="module")
def running(
    images: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, ImageProcess]]:
    """Each image's entry point, started as a container would start it (its ENV, then the
    settings a deployment gives), the three sharing one SQLite file."""
    state = tmp_path_factory.mktemp("image-state")
    ports = {service: free_port() for service in SERVICES}
    targets = {service: f"127.0.0.1:{port}" for service, port in ports.items()}
    db = f"sqlite:///{state / 'tai.db'}"
    started: dict[str, ImageProcess] = {}
    try:
        for service in SERVICES:
            image = images[service]
            log = state / f"{service}.log"
            env = {
                "PATH": os.environ["PATH"],
                **image.env,
                "HOME": str(state),
                "TAI_HOST": "127.0.0.1",  # the image binds 0.0.0.0; loopback is enough here
                "TAI_GRPC_PORT": str(ports[service]),
                "TAI_METRICS_PORT": str(free_port()),
                "TAI_STORE": db,
                "TAI_BUS": db,
                "TAI_AUTH": "off",
                "TAI_GOVERNOR_TARGET": targets["governor"],
                "TAI_COORDINATOR_TARGET": targets["coordinator"],
                "TAI_SCHEDULER_TARGET": targets["scheduler"],
            }
            with log.open("wb") as out:
                process = subprocess.Popen(
                    entrypoint_command(image),
                    env=env,
                    cwd=state,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            started[service] = ImageProcess(service, process, targets[service], log)
        for item in started.values():
            try:
                asyncio.run(wait_serving(item.target, timeout=60))
            except TimeoutError:
                pytest.fail(f"tai-{item.service}'s image did not start:\n{item.log.read_text()}")
        yield started
    finally:
        for item in started.values():
            if item.process.poll() is None:
                os.killpg(item.process.pid, signal.SIGTERM)
        for item in started.values():
            try:
                item.process.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(item.process.pid, signal.SIGKILL)
                item.process.wait(5)


def test_dockerignore_rules_are_dockers() -> None:
    """The context filter the recipe test relies on: a bare name is matched at the root only,
    `**/` at any depth, a folder's contents with it."""
    patterns = read_dockerignore(ROOT)
    assert ignored("build", patterns)
    assert ignored("build/tools/helm", patterns)
    assert not ignored("libs/common/build", patterns)
    assert ignored("libs/common/tai_common/__pycache__/x.pyc", patterns)
    assert ignored("libs/proto/tai/v1/governor_pb2.py", patterns)
    assert not ignored("libs/proto/pyproject.toml", patterns)


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_holds_its_service_from_the_wheels_alone(
    images: dict[str, Stage], service: str
) -> None:
    image = images[service]
    site = next((image.python_prefix / "lib").glob("python3*/site-packages"))
    installed = {p.name.split("-")[0] for p in site.glob("tai_*.dist-info")}
    wanted = {"tai_proto", "tai_rpc", "tai_common", f"tai_{service}"}
    assert wanted <= installed, describe(image)
    # The SDK is in an image only when its service calls other services through it.
    assert ("tai_client" in installed) == (service != "governor")
    # Installed as wheels, not linked to this checkout.
    assert not list(site.glob("__editable__*")), describe(image)
    # Runs as the user the chart expects (runAsUser 10001), created by the recipe.
    assert image.user == "10001:10001"
    assert any("--uid 10001" in step for step in image.skipped), describe(image)
    assert image.env["TAI_HOST"] == "0.0.0.0"


def test_an_image_without_a_service_is_refused(
    build_stage: dict[str, Stage], tmp_path: Path
) -> None:
    """The one recipe needs SERVICE; without it the build stops with the reason, before
    installing anything."""
    runner = RecipeRunner(ROOT / "Dockerfile", ROOT, tmp_path, {"SERVICE": ""})
    with pytest.raises(RecipeError, match="--build-arg SERVICE=governor"):
        runner.run(build_stage)


def test_the_three_images_serve_and_answer(running: dict[str, ImageProcess]) -> None:
    for item in running.values():
        assert item.process.poll() is None, item.log.read_text()
    with grpc.insecure_channel(running["governor"].target) as channel:
        governor = governor_pb2_grpc.GovernorStub(channel)
        receipt = governor.ProposePolicy(
            governor_pb2.ProposePolicyRequest(
                policy_type="security", policy_name="from-the-image", rules={"tls": "1.3"}
            ),
            timeout=10,
        )
        assert receipt.id
        listed = governor.GetPolicies(
            governor_pb2.GetPoliciesRequest(policy_type="security"), timeout=10
        )
        assert [p.policy_name for p in listed.policies] == ["from-the-image"]


def test_images_stop_cleanly_on_sigterm(running: dict[str, ImageProcess]) -> None:
    """What Kubernetes does to a pod: SIGTERM, then the service drains and exits 0."""
    item = running["scheduler"]
    os.killpg(item.process.pid, signal.SIGTERM)
    assert item.process.wait(30) == 0, item.log.read_text()
