"""Typed Python client for the TAI services (`GovernorClient`, …) and the `taictl` CLI.

`open_channel`, `ChannelOptions` and `TlsFiles` come from `tai_rpc`, the transport both the
SDK and the services use; they are re-exported here so an SDK user needs one import.
"""

from tai_rpc import ChannelOptions, TlsFiles, open_channel

from tai_client.coordinator import CoordinatorClient
from tai_client.governor import GovernorClient
from tai_client.scheduler import SchedulerClient

__all__ = [
    "ChannelOptions",
    "CoordinatorClient",
    "GovernorClient",
    "SchedulerClient",
    "TlsFiles",
    "open_channel",
]
