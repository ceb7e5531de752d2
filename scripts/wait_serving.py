"""`python scripts/wait_serving.py TARGET… [--timeout S]`: waits until every gRPC server at
TARGET (host:port) answers the standard health check with SERVING; exits 0 then, or 1 with one
line on stderr once `--timeout` passes.

`make run`'s supervisor runs it as a child, so that the supervisor itself, which then only
waits for Ctrl-C, never loads gRPC (30 MiB it would keep for the whole run).
"""

from __future__ import annotations

import argparse
import asyncio
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


async def serving(target: str) -> bool:
    async with grpc.aio.insecure_channel(target) as channel:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
        except grpc.aio.AioRpcError:
            return False
    return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)


async def wait(targets: list[str], timeout: float) -> str:
    """ "" once every target is SERVING, else the first that is not."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    for target in targets:
        while not await serving(target):
            if loop.time() > deadline:
                return f"{target} not SERVING after {timeout:.0f}s"
            await asyncio.sleep(0.1)
    return ""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)
    failure = asyncio.run(wait(args.targets, args.timeout))
    if failure:
        print(failure, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
