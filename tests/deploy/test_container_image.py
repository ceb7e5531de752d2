"""The container recipe (`Dockerfile`) builds the three service images and the single-process
one (`SERVICE=server`), and each image runs what it holds.

No Docker engine runs here, so `support.image_recipe` carries out the Dockerfile's steps in a
scratch folder: the build stage generates the protobuf code and builds wheels from the files the
recipe COPYs (as `.dockerignore` filters them), and each image's stage installs its package from
those wheels alone (`pip install --no-index`) into a fresh Python. The three service entry points
then run together, each from its own image, and the server image's runs alone; each must report
SERVING on its ports, answer calls, and exit 0 on SIGTERM. A package the recipe leaves out of
the build context (as `libs/client` once was) fails the install step.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import urllib.request
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
from tai.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    governor_pb2,
    governor_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from tai_server.app import ServerSettings

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("governor", "coordinator", "scheduler")
# Every image the recipe builds: the services', and the three in one process.
IMAGES = (*SERVICES, "server")
NS = 1_000_000_000

# The build stage makes wheels of every dependency; each image installs them into a fresh Python.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def build_stage(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Stage]:
    """The recipe's build stage, built once and reused for every image, as Docker's cache
    would (it reads no build argument)."""
    scratch = tmp_path_factory.mktemp("images")
    runner = RecipeRunner(ROOT / "Dockerfile", ROOT, scratch / "first", {"SERVICE": SERVICES[0]})
    runner.run()
    return {"build": runner.stages["build"]}


class Images:
    """The images of the one recipe, each built the first time a test asks for it."""

    def __init__(self, build_stage: dict[str, Stage], scratch: Path) -> None:
        self._build_stage = build_stage
        self._scratch = scratch
        self._built: dict[str, Stage] = {}

    def __getitem__(self, image: str) -> Stage:
        if image not in self._built:
            runner = RecipeRunner(
                ROOT / "Dockerfile", ROOT, self._scratch / image, {"SERVICE": image}
            )
            self._built[image] = runner.run(self._build_stage)
        return self._built[image]


@pytest.fixture(scope="module")
def images(build_stage: dict[str, Stage], tmp_path_factory: pytest.TempPathFactory) -> Images:
    return Images(build_stage, tmp_path_factory.mktemp("images"))


@dataclass
class ImageProcess:
    service: str
    process: subprocess.Popen[bytes]
    target: str
    log: Path


@pytest.fixture(scope="module")
def running(
    images: Images, tmp_path_factory: pytest.TempPathFactory
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
            process = start_image(image, env, state, log)
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
            stop(item.process)


def start_image(
    image: Stage, env: dict[str, str], state: Path, log: Path
) -> subprocess.Popen[bytes]:
    """The image's entry point as its container would run it, its output in `log`."""
    with log.open("wb") as out:
        return subprocess.Popen(
            entrypoint_command(image),
            env=env,
            cwd=state,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group, SIGKILL if it has not exited 20 s later."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(5)


@dataclass
class ServerProcess:
    process: subprocess.Popen[bytes]
    targets: dict[str, str]
    metrics_url: str
    log: Path


@pytest.fixture(scope="module")
def server(images: Images, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The server image's entry point, started as the chart's `mode: single` starts it: its
    ENV, then each service's gRPC port and the one metrics port, on a SQLite file of its own
    (the server owns its file alone)."""
    image = images["server"]
    state = tmp_path_factory.mktemp("server-state")
    ports = {service: free_port() for service in SERVICES}
    metrics_port = free_port()
    db = f"sqlite:///{state / 'tai.db'}"
    log = state / "server.log"
    env = {
        "PATH": os.environ["PATH"],
        **image.env,
        "HOME": str(state),
        "TAI_HOST": "127.0.0.1",
        **{f"TAI_{service.upper()}_GRPC_PORT": str(port) for service, port in ports.items()},
        "TAI_METRICS_PORT": str(metrics_port),
        "TAI_STORE": db,
        "TAI_BUS": db,
        "TAI_AUTH": "off",
    }
    process = start_image(image, env, state, log)
    targets = {service: f"127.0.0.1:{port}" for service, port in ports.items()}
    try:
        for target in targets.values():
            try:
                asyncio.run(wait_serving(target, timeout=60))
            except TimeoutError:
                pytest.fail(f"tai-server's image did not serve {target}:\n{log.read_text()}")
        yield ServerProcess(process, targets, f"http://127.0.0.1:{metrics_port}/metrics", log)
    finally:
        stop(process)


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
    assert not ignored("services/server/tai_server/app.py", patterns)
    assert ignored("services/server/tai_server.egg-info/PKG-INFO", patterns)


def test_every_package_of_the_repository_becomes_a_wheel() -> None:
    """Each library and service (the server included) is in the build stage's `pip wheel`,
    so an image whose package depends on it can install it."""
    recipe = (ROOT / "Dockerfile").read_text()
    wheel_command = recipe[recipe.index("pip wheel") :].split("\n\n", 1)[0]
    built = set(re.findall(r"\./((?:libs|services)/[\w-]+)", wheel_command))
    packages = {
        str(path.parent.relative_to(ROOT))
        for folder in ("libs", "services")
        for path in (ROOT / folder).glob("*/pyproject.toml")
    }
    assert "services/server" in packages
    assert built == packages


def installed_packages(image: Stage) -> set[str]:
    """The TAI distributions installed in an image, checked to be wheels (not links to this
    checkout)."""
    site = next((image.python_prefix / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("__editable__*")), describe(image)
    return {p.name.split("-")[0] for p in site.glob("tai_*.dist-info")}


@pytest.mark.parametrize("name", IMAGES)
def test_each_image_runs_as_the_user_the_chart_expects(images: Images, name: str) -> None:
    image = images[name]
    # runAsUser 10001 in the chart, created by the recipe.
    assert image.user == "10001:10001"
    assert any("--uid 10001" in step for step in image.skipped), describe(image)
    assert image.env["TAI_HOST"] == "0.0.0.0"
    assert image.entrypoint == ["tai-service"]
    assert Path(entrypoint_command(image)[0]).resolve().name == f"tai-{name}", describe(image)


@pytest.mark.parametrize("service", SERVICES)
def test_each_image_holds_its_service_from_the_wheels_alone(images: Images, service: str) -> None:
    image = images[service]
    installed = installed_packages(image)
    wanted = {"tai_proto", "tai_rpc", "tai_common", f"tai_{service}"}
    assert wanted <= installed, describe(image)
    assert "tai_server" not in installed
    # The SDK is in an image only when its service calls other services through it.
    assert ("tai_client" in installed) == (service != "governor")
    # Its ports are settings the chart declares: the image exposes none.
    assert image.exposed == [], describe(image)


def test_the_server_image_holds_the_three_services(images: Images) -> None:
    image = images["server"]
    installed = installed_packages(image)
    assert {f"tai_{service}" for service in SERVICES} | {"tai_server", "tai_client"} <= installed
    # The ports the server listens on when nothing else is set.
    defaults = ServerSettings.model_fields
    expected = [
        *(str(defaults[f"{service}_grpc_port"].default) for service in SERVICES),
        str(defaults["metrics_port"].default),
    ]
    assert image.exposed == expected == ["50051", "50052", "50053", "9100"], describe(image)


def test_an_image_without_a_service_is_refused(
    build_stage: dict[str, Stage], tmp_path: Path
) -> None:
    """The one recipe needs SERVICE; without it the build stops with the reason, before
    installing anything."""
    runner = RecipeRunner(ROOT / "Dockerfile", ROOT, tmp_path, {"SERVICE": ""})
    with pytest.raises(RecipeError, match=r"--build-arg SERVICE=governor\|.*\|server is required"):
        runner.run(build_stage)


def test_an_unknown_service_names_a_base_that_does_not_exist(tmp_path: Path) -> None:
    """A misspelt SERVICE selects no stage: the last FROM names an image, which Docker fails
    to pull (and the runner refuses) before building anything."""
    runner = RecipeRunner(ROOT / "Dockerfile", ROOT, tmp_path, {"SERVICE": "schedular"})
    with pytest.raises(RecipeError, match="FROM tai-schedular: not a stage"):
        runner.run()
    assert runner.stages == {}


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


def test_the_server_image_serves_the_three_services_together(server: ServerProcess) -> None:
    """One process answers on the three ports, and its services reach each other (over
    loopback): a policy effective in a second is enforced by the Scheduler's task calling the
    Governor, and the Coordinator, told by the Governor's event, acts on a matching signal."""
    assert server.process.poll() is None, server.log.read_text()
    with (
        grpc.insecure_channel(server.targets["governor"]) as governor_channel,
        grpc.insecure_channel(server.targets["coordinator"]) as coordinator_channel,
        grpc.insecure_channel(server.targets["scheduler"]) as scheduler_channel,
    ):
        governor = governor_pb2_grpc.GovernorStub(governor_channel)
        coordinator = coordinator_pb2_grpc.CoordinatorStub(coordinator_channel)
        scheduler = scheduler_pb2_grpc.SchedulerStub(scheduler_channel)
        receipt = governor.ProposePolicy(
            governor_pb2.ProposePolicyRequest(
                policy_type="operational",
                policy_name="from-the-server-image",
                condition='signal.type == "alert"',
                action=governor_pb2.ActionTemplate(action_type="page", target_service="oncall"),
                effective_time_ns=time.time_ns() + NS,
            ),
            timeout=10,
        )
        policy_id = receipt.resource_id
        task_id = f"enforce-{policy_id}-v1"
        deadline = time.monotonic() + 30
        while True:
            policy = governor.GetPolicy(governor_pb2.GetPolicyRequest(id=policy_id), timeout=10)
            if policy.state == governor_pb2.POLICY_STATE_ENFORCED or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert policy.state == governor_pb2.POLICY_STATE_ENFORCED, server.log.read_text()
        task = scheduler.GetTaskStatus(scheduler_pb2.GetTaskStatusRequest(task_id=task_id))
        assert (task.task_type, task.status) == ("enforce_policy", "completed")
        while True:
            signal_receipt = coordinator.SubmitSignal(
                coordinator_pb2.SubmitSignalRequest(signal_type="alert", priority=5), timeout=10
            )
            if signal_receipt.action_ids or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert list(signal_receipt.matched_policy_ids) == [policy_id], server.log.read_text()
        assert len(signal_receipt.action_ids) == 1


def test_the_server_image_has_one_metrics_endpoint(server: ServerProcess) -> None:
    """The three services' calls are counted on the one /metrics the chart scrapes."""
    with grpc.insecure_channel(server.targets["scheduler"]) as channel:
        scheduler_pb2_grpc.SchedulerStub(channel).ListTasks(
            scheduler_pb2.ListTasksRequest(), timeout=10
        )
    with urllib.request.urlopen(server.metrics_url, timeout=10) as reply:
        text = reply.read().decode()
    served = set(re.findall(r'grpc_server_handled_total\{[^}]*grpc_service="(tai\.v1\.\w+)"', text))
    assert {"tai.v1.Scheduler"} <= served, text[:2000]


def test_the_server_image_stops_cleanly_on_sigterm(server: ServerProcess) -> None:
    """What Kubernetes does to the pod: SIGTERM, the three services drain, exit 0."""
    os.killpg(server.process.pid, signal.SIGTERM)
    assert server.process.wait(30) == 0, server.log.read_text()
