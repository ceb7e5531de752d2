"""A real Prometheus server (Debian's `prometheus` package) on a free loopback port, in its own
process group, with a generated configuration; waited on until `/-/ready`, and always killed.
Also `promtool`, from the same package."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from support.processes import free_port

INSTALL_HINT = "`apt-get install -y prometheus` (Debian's package; .ci/run installs it)"


def binary(name: str) -> str:
    """The path of `prometheus` or `promtool`; fails (never skips) when it is not installed."""
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is not installed: {INSTALL_HINT}")
    return path


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Runs `promtool ARGS…` and returns its result (exit code, stdout, stderr)."""
    return subprocess.run(
        [binary("promtool"), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class PrometheusError(RuntimeError):
    pass


class PrometheusServer:
    """`prometheus` scraping `jobs` (job name → list of host:port) every `scrape_interval`,
    evaluating `rule_files` every `evaluation_interval`, storing under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        jobs: Mapping[str, Sequence[str]] | None = None,
        *,
        rule_files: Sequence[Path] = (),
        scrape_interval: str = "1s",
        evaluation_interval: str = "1s",
    ) -> None:
        self.workdir = workdir
        self.jobs = dict(jobs or {})
        self.rule_files = [Path(f).resolve() for f in rule_files]
        self.scrape_interval = scrape_interval
        self.evaluation_interval = evaluation_interval
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / "prometheus.yaml"
        self.log_path = workdir / "prometheus.log"
        self.process: subprocess.Popen[bytes] | None = None

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(f) for f in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(targets)}]}
                for job, targets in self.jobs.items()
            ],
        }

    def start(self, timeout: float = 30.0) -> PrometheusServer:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # JSON is YAML: no YAML library needed to write the configuration.
        self.config_path.write_text(json.dumps(self.config(), indent=2))
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    binary("prometheus"),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise PrometheusError(
                    f"prometheus exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            with (
                contextlib.suppress(OSError),
                urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as reply,
            ):
                if reply.status == 200:
                    return self
            time.sleep(0.05)
        self.stop()
        raise PrometheusError(f"prometheus was not ready within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        """Kills the whole process group (nothing to keep: the data is a test's)."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def log_tail(self, lines: int = 30) -> str:
        with contextlib.suppress(FileNotFoundError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    # --- the HTTP API -------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        """GET /api/v1/<path>; the `data` of a successful answer, else PrometheusError."""
        url = f"{self.url}/api/v1/{path}"
        if params:
            url += "?" + urllib.parse.urlencode(params)
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                body = json.loads(reply.read())
        except urllib.error.HTTPError as error:
            body = json.loads(error.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: {body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The instant vector `expr` evaluates to now: [{"metric": {…}, "value": [t, "v"]}, …]."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r} is a {data['resultType']}, not a vector")
        return list(data["result"])

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets")["activeTargets"])

    def rules(self) -> list[dict[str, Any]]:
        """Every loaded rule (recording and alerting), as /api/v1/rules describes it."""
        return [rule for group in self.api("rules")["groups"] for rule in group["rules"]]

    def wait_until_scraped(self, timeout: float = 60.0) -> None:
        """Waits until every configured target has been scraped successfully (health "up").
        The first scrape comes a few seconds after start: Prometheus batches target updates."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = self.targets()
            expected = sum(len(t) for t in self.jobs.values())
            # A target's health can read "up" a moment before its scrape's samples are
            # queryable; its `up` series is committed with them.
            if (
                len(targets) == expected
                and all(t["health"] == "up" for t in targets)
                and len(self.query("up == 1")) == expected
            ):
                return
            time.sleep(0.2)
        summary = [(t["labels"].get("job"), t["health"], t.get("lastError")) for t in targets]
        raise PrometheusError(f"targets not all up within {timeout}s: {summary}")

    def wait_for(self, expr: str, timeout: float = 30.0) -> list[dict[str, Any]]:
        """Polls `expr` until it returns a non-empty vector; returns it."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.query(expr)
            if result:
                return result
            if time.monotonic() > deadline:
                raise PrometheusError(f"{expr!r} stayed empty for {timeout}s")
            time.sleep(0.2)


@contextlib.contextmanager
def running_prometheus(
    workdir: Path,
    jobs: Mapping[str, Sequence[str]] | None = None,
    *,
    rule_files: Sequence[Path] = (),
    scrape_interval: str = "1s",
    evaluation_interval: str = "1s",
) -> Iterator[PrometheusServer]:
    server = PrometheusServer(
        workdir,
        jobs,
        rule_files=rule_files,
        scrape_interval=scrape_interval,
        evaluation_interval=evaluation_interval,
    )
    try:
        yield server.start()
    finally:
        server.stop()
