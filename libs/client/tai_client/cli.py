"""`taictl`: the TAI command line.

taictl [--target HOST:PORT] [--token JWT] [--ca FILE [--cert FILE --key FILE]]
       [--namespace NAME] [--json]
    policy | signal | action | silence | status | task | audit | namespace …
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click
import grpc
from tai_rpc.channel import ChannelOptions, TlsFiles, open_channel
from tai_rpc.namespaces import namespace_name_problem

from tai_client.errors import TaiError, from_rpc_error
from tai_client.output import print_error

T = TypeVar("T")

DEFAULT_TARGETS = {
    "governor": "127.0.0.1:50051",
    "coordinator": "127.0.0.1:50052",
    "scheduler": "127.0.0.1:50053",
}


@dataclass
class CliContext:
    target: str | None
    json_output: bool
    timeout: float
    token: str = ""
    tls: TlsFiles | None = None
    # Sent as `x-tai-namespace` on every call; empty: none, the server's "default".
    namespace: str = ""

    def target_for(self, service: str) -> str:
        return self.target or DEFAULT_TARGETS[service]

    def run(
        self, service: str, call: Callable[[grpc.aio.Channel, ChannelOptions], Awaitable[T]]
    ) -> T:
        """Runs `call` with a channel to `service`; a failed call prints its error (code,
        message, field violations, how long to wait) and exits with status 1."""
        options = ChannelOptions(
            default_timeout_seconds=self.timeout,
            bearer_token=self.token,
            tls=self.tls,
            namespace=self.namespace,
        )

        async def main() -> T:
            async with open_channel(self.target_for(service), options) as channel:
                return await call(channel, options)

        try:
            return asyncio.run(main())
        except TaiError as error:
            print_error(error, json_output=self.json_output)
            sys.exit(1)
        except grpc.aio.AioRpcError as error:  # a call made without the SDK's clients
            print_error(from_rpc_error(error), json_output=self.json_output)
            sys.exit(1)
        except KeyboardInterrupt:
            sys.exit(130)


pass_context = click.make_pass_decorator(CliContext)


def check_namespace_name(name: str, param_hint: str) -> str:
    """`name` when it is a namespace name, else a usage error saying why (exit status 2)."""
    problem = namespace_name_problem(name)
    if problem is not None:
        raise click.BadParameter(problem, param_hint=param_hint)
    return name


def _namespace_option(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    # Checked before any call: a name the server cannot hold is the caller's typo.
    if not value:
        return ""
    return check_namespace_name(value, "'--namespace' / '-n' / TAI_NAMESPACE")


@click.group()
@click.option(
    "--target",
    envvar="TAICTL_TARGET",
    help="host:port of the service (default: the service's port on 127.0.0.1, or the "
    "gateway when you point it there).",
)
@click.option("--json", "json_output", is_flag=True, help="Print JSON (one object a line).")
@click.option("--timeout", default=10.0, show_default=True, help="Deadline per call, seconds.")
@click.option("--token", envvar="TAICTL_TOKEN", default="", help="Bearer token (a JWT).")
@click.option("--ca", "ca_file", envvar="TAICTL_CA", default="", help="CA file: use TLS.")
@click.option("--cert", "cert_file", envvar="TAICTL_CERT", default="", help="Client cert (mTLS).")
@click.option("--key", "key_file", envvar="TAICTL_KEY", default="", help="Client key (mTLS).")
@click.option(
    "--namespace",
    "-n",
    envvar="TAI_NAMESPACE",
    default="",
    callback=_namespace_option,
    help="The namespace every call works in (also TAI_NAMESPACE; default: none, which the "
    'server reads as "default").',
)
@click.pass_context
def cli(
    ctx: click.Context,
    target: str | None,
    json_output: bool,
    timeout: float,
    token: str,
    ca_file: str,
    cert_file: str,
    key_file: str,
    namespace: str,
) -> None:
    """Operate a TAI control plane."""
    ctx.obj = CliContext(
        target=target,
        json_output=json_output,
        timeout=timeout,
        token=token,
        tls=TlsFiles(ca_file, cert_file, key_file) if ca_file else None,
        namespace=namespace,
    )


def parse_pairs(values: tuple[str, ...], option: str) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for value in values:
        key, sep, item = value.partition("=")
        if not sep or not key:
            raise click.BadParameter(f"expected KEY=VALUE, got {value!r}", param_hint=option)
        pairs[key] = item
    return pairs


def main() -> Any:
    # Importing the command modules registers their groups on `cli`.
    from tai_client import (  # noqa: F401
        audit_commands,
        coordinator_commands,
        namespace_commands,
        policy_commands,
        silence_commands,
        task_commands,
    )

    return cli()
