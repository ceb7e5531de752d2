"""Typed Python client for the TAI services (`GovernorClient`, …) and the `taictl` CLI."""

from tai_client.channel import ChannelOptions, open_channel
from tai_client.coordinator import CoordinatorClient
from tai_client.governor import GovernorClient
from tai_client.scheduler import SchedulerClient

__all__ = [
    "ChannelOptions",
    "CoordinatorClient",
    "GovernorClient",
    "SchedulerClient",
    "open_channel",
]
