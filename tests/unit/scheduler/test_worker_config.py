"""The claim-ahead settings: a horizon of at most half the lease, a limit that is not negative,
refused with a message naming the setting (in the service's settings and in WorkerConfig)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from tai_scheduler.app import SchedulerSettings
from tai_scheduler.worker import WorkerConfig


def test_defaults_claim_a_tenth_of_the_lease_ahead() -> None:
    settings = SchedulerSettings()
    assert (settings.claim_ahead_seconds, settings.claim_ahead_limit) == (None, 1024)
    assert WorkerConfig(replica_id="r").horizon_ns == 1_000_000_000  # the 10 s lease's tenth
    assert WorkerConfig(replica_id="r", lease_seconds=1.5).horizon_ns == 150_000_000
    assert WorkerConfig(replica_id="r", claim_ahead_seconds=2).horizon_ns == 2_000_000_000


def test_a_horizon_past_half_the_lease_is_refused() -> None:
    with pytest.raises(ValidationError, match="claim_ahead_seconds"):
        SchedulerSettings(lease_seconds=4.0, claim_ahead_seconds=2.5)
    with pytest.raises(ValidationError, match="claim_ahead_limit"):
        SchedulerSettings(claim_ahead_limit=-1)
    assert SchedulerSettings(lease_seconds=4.0, claim_ahead_seconds=2.0).claim_ahead_seconds == 2
    with pytest.raises(ValueError, match="claim_ahead_seconds"):
        WorkerConfig(replica_id="r", lease_seconds=0.5, claim_ahead_seconds=0.3)
    with pytest.raises(ValueError, match="claim_ahead_limit"):
        WorkerConfig(replica_id="r", claim_ahead_limit=-1)


def test_no_horizon_or_no_limit_turns_claiming_ahead_off() -> None:
    assert WorkerConfig(replica_id="r", claim_ahead_seconds=0).horizon_ns == 0
    assert WorkerConfig(replica_id="r", claim_ahead_limit=0).horizon_ns == 0
