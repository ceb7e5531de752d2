"""The task domain: states, retry and backoff, cron schedules, overlap decisions, validation,
and every state change as a pure function from one `Task` to the next.

Plain Python, no gRPC and no store: the servicer translates protobuf to these types, the
repository persists them, and the service decides when each change happens.

Lifecycle::

    pending ──claim──▶ running ──▶ completed | failed
       ▲                  │  └──▶ pending (retrying, after a backoff)
       └── released ──────┘      (lease lapsed: claimed again by another replica)
    pending | running ──cancel──▶ cancelled

A replica may claim a task shortly before it falls due (claim ahead): the task is `running`
from its claim, its attempt planned to start at `next_run_ns`, when the replica starts it.

A recurring task (`cron_schedule` set) never runs itself: it stays `pending` with `next_run_ns`
at its next fire time, and each fire creates a child task (one run) whose `parent_task_id`
names it. Its schedule is read in its time zone (`CronSchedule`); an operator may pause and
resume it, trigger a run now, or backfill a window of its occurrences.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import zoneinfo
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter
from tai_common.core import FailedPrecondition, InvalidArgument
from tai_common.core.units import NS_PER_MS, NS_PER_SECOND
from tai_common.core.validation import MAX_ID_LENGTH, check_id, check_map, check_range, require_id

DEFAULT_PRIORITY = 5
MIN_PRIORITY, MAX_PRIORITY = 1, 10
DEFAULT_TIMEOUT_SECONDS = 60
MAX_TIMEOUT_SECONDS = 24 * 3600

# Ids a caller chooses follow the Governor's rules (`check_policy_id`). Ids the Scheduler
# derives from them (`<recurring id>-<fire time>`, `enforce-<policy id>-v<version>`,
# `action-<action id>`) may be longer, so lookups accept up to MAX_TASK_ID_LENGTH.
MAX_SUBMITTED_ID_LENGTH = MAX_ID_LENGTH
MAX_TASK_ID_LENGTH = 200
MAX_TASK_TYPE_LENGTH = 128
MAX_REASON_LENGTH = 1000
MAX_ERROR_LENGTH = 4096
# The most recent attempts kept on a task (older ones are dropped, so documents stay bounded
# even for a task released again and again by replicas shutting down).
MAX_ATTEMPT_RECORDS = 200

# A BUFFER_ONE child waiting for the running one: not due until released.
HELD_NS = 2**62

IDEMPOTENCY_KEY_PREFIX = "tai-task:"
# Downstream request ids are at most 128 characters (tai_common.messaging.idempotency).
MAX_IDEMPOTENCY_KEY_LENGTH = 128


class TaskState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"


FINAL_STATES = frozenset({TaskState.COMPLETED, TaskState.FAILED, TaskState.CANCELLED})
OPEN_STATES = tuple(s for s in TaskState if s not in FINAL_STATES)


class OverlapPolicy(StrEnum):
    """What a recurring task does when a run is due while the previous one is unfinished."""

    # Drop the run that would overlap.
    SKIP = "skip"
    # Keep at most one run waiting; it starts when the unfinished one ends.
    BUFFER_ONE = "buffer_one"
    # Every occurrence runs, one after another: for backfills only (a schedule's own runs
    # could pile up without bound).
    BUFFER_ALL = "buffer_all"


class SkipReason(StrEnum):
    """Why an occurrence of a schedule made no run."""

    # Missed during an outage, older than the schedule's catch-up window.
    CATCHUP = "catchup"
    # The overlap policy dropped it (a run was unfinished).
    OVERLAP = "overlap"
    # The schedule was paused (or a run waiting to start was cancelled by a pause).
    PAUSED = "paused"


class RunOrigin(StrEnum):
    """What made a run of a recurring task."""

    SCHEDULE = "schedule"
    TRIGGER = "trigger"
    BACKFILL = "backfill"


class AttemptOutcome(StrEnum):
    COMPLETED = "completed"
    FAILED = "failed"
    # The replica running it stopped renewing its lease (crashed, or released it on shutdown).
    LEASE_LOST = "lease_lost"
    # The task was cancelled while this attempt ran.
    CANCELLED = "cancelled"


# --- limits -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ParameterLimits:
    """Bounds on a task's parameters."""

    max_entries: int = 100
    max_key_length: int = 128
    max_value_length: int = 4096


# What SubmitTask accepts.
API_LIMITS = ParameterLimits()
# Tasks the Scheduler derives from events carry the event's content (an action's parameters
# plus its fields, its payload in base64), which the API's limits would refuse.
INTERNAL_LIMITS = ParameterLimits(max_entries=200, max_value_length=1024 * 1024)


# --- retry --------------------------------------------------------------------------------

MAX_ATTEMPTS_LIMIT = 100
MAX_BACKOFF_LIMIT_MS = 24 * 3600 * 1000
MAX_DOUBLINGS_LIMIT = 30


@dataclass(frozen=True)
class RetryConfig:
    """How a failed attempt is retried, with Cloud Tasks' semantics: the wait before retry n
    is `min_backoff_ms * 2**(n-1)` for the first `max_doublings` doublings, then grows
    linearly by `min_backoff_ms * 2**max_doublings` per retry, always capped at
    `max_backoff_ms`; at most `max_attempts` attempts in all."""

    max_attempts: int = 3
    min_backoff_ms: int = 1000
    max_backoff_ms: int = 60_000
    max_doublings: int = 16

    def __post_init__(self) -> None:
        check_range("retry.max_attempts", self.max_attempts, 1, MAX_ATTEMPTS_LIMIT)
        check_range("retry.min_backoff_ms", self.min_backoff_ms, 0, MAX_BACKOFF_LIMIT_MS)
        check_range("retry.max_backoff_ms", self.max_backoff_ms, 0, MAX_BACKOFF_LIMIT_MS)
        check_range("retry.max_doublings", self.max_doublings, 0, MAX_DOUBLINGS_LIMIT)
        if self.max_backoff_ms < self.min_backoff_ms:
            raise InvalidArgument(
                "retry.max_backoff_ms",
                f"must be at least retry.min_backoff_ms ({self.min_backoff_ms})",
            )

    @classmethod
    def from_request(
        cls,
        *,
        max_attempts: int = 0,
        min_backoff_ms: int = 0,
        max_backoff_ms: int = 0,
        max_doublings: int = 0,
    ) -> RetryConfig:
        """The config a request asks for, where 0 means the default (as in the proto)."""
        for name, value in (
            ("retry.max_attempts", max_attempts),
            ("retry.min_backoff_ms", min_backoff_ms),
            ("retry.max_backoff_ms", max_backoff_ms),
            ("retry.max_doublings", max_doublings),
        ):
            if value < 0:
                raise InvalidArgument(name, f"must not be negative (got {value})")
        default = cls()
        min_backoff = min_backoff_ms or default.min_backoff_ms
        return cls(
            max_attempts=max_attempts or default.max_attempts,
            min_backoff_ms=min_backoff,
            # A larger minimum than the default maximum raises the maximum with it.
            max_backoff_ms=max_backoff_ms or max(default.max_backoff_ms, min_backoff),
            max_doublings=max_doublings or default.max_doublings,
        )

    def backoff_ms(self, retry_number: int) -> int:
        """The wait before retry `retry_number` (1 = before the second attempt)."""
        if retry_number < 1:
            raise ValueError("retry_number starts at 1")
        doublings = retry_number - 1
        if doublings <= self.max_doublings:
            delay = self.min_backoff_ms * 2**doublings
        else:
            step = self.min_backoff_ms * 2**self.max_doublings
            delay = step + (doublings - self.max_doublings) * step
        return int(min(delay, self.max_backoff_ms))

    def to_doc(self) -> dict[str, int]:
        return {
            "max_attempts": self.max_attempts,
            "min_backoff_ms": self.min_backoff_ms,
            "max_backoff_ms": self.max_backoff_ms,
            "max_doublings": self.max_doublings,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> RetryConfig:
        return cls(
            max_attempts=int(data["max_attempts"]),
            min_backoff_ms=int(data["min_backoff_ms"]),
            max_backoff_ms=int(data["max_backoff_ms"]),
            max_doublings=int(data["max_doublings"]),
        )


# --- cron ---------------------------------------------------------------------------------

DEFAULT_TIME_ZONE = "UTC"
# A catch-up window shorter than this would skip a run whose fire merely came late (a busy
# replica, a restart): Temporal's schedules have the same floor.
MIN_CATCHUP_WINDOW_SECONDS = 10
MAX_CATCHUP_WINDOW_SECONDS = 366 * 24 * 3600
# Occurrences one backfill covers at most.
MAX_BACKFILL_OCCURRENCES = 1000
# Occurrences one pass over a schedule's missed ones handles at most (each costs croniter
# 20-60 µs, inside a claim transaction); a longer outage is worked through in several passes.
CATCHUP_SCAN_LIMIT = 500
DEFAULT_UPCOMING_RUNS = 10
MAX_UPCOMING_RUNS = 100


@functools.cache
def _known_time_zones() -> frozenset[str]:
    # Read once: the system's zone files, or the `tzdata` package where there are none.
    return frozenset(zoneinfo.available_timezones())


def check_time_zone(name: str, field_name: str = "time_zone") -> str:
    """The IANA time zone `name` ("" = UTC), or `InvalidArgument` naming `field_name`."""
    if not name:
        return DEFAULT_TIME_ZONE
    known = _known_time_zones()
    if name in known or name == DEFAULT_TIME_ZONE:
        return name
    hint = next((z for z in sorted(known) if z.lower() == name.lower()), "")
    raise InvalidArgument(
        field_name,
        f"{name[:64]!r} is not an IANA time zone name (e.g. 'Europe/Paris', 'UTC')"
        + (f"; did you mean {hint!r}?" if hint else ""),
    )


@functools.cache
def _zone(name: str) -> zoneinfo.ZoneInfo:
    return zoneinfo.ZoneInfo(name)


@dataclass(frozen=True)
class CronSchedule:
    """A cron expression read in a time zone (UTC by default): the standard five fields
    (minute hour day month weekday), an @-macro (`@hourly`, …), or six fields with seconds
    first (`*/5 * * * * *`, as Quartz and Spring write them) for schedules finer than a minute.

    Across a daylight-saving change the schedule follows ISC cron's rule, which tells a
    schedule at a fixed time of day (neither its minute nor its hour field starts with `*`:
    `30 2 * * *`) from one that repeats through the day (`0 * * * *`, `*/15 * * * *`):

    - clocks go forward (02:00 → 03:00 in Paris): a fixed time in the skipped hour fires once,
      at the end of the gap (03:00 local); a repeating schedule has no fire in the skipped hour,
      so its fires stay one real hour apart (croniter's own behaviour with a zone);
    - clocks go back (03:00 → 02:00): a fixed time in the repeated hour fires once, at its
      first pass (croniter would fire it twice: the second pass is dropped here); a repeating
      schedule fires in both passes, so an hourly one still fires every real hour.
    """

    expression: str
    time_zone: str = DEFAULT_TIME_ZONE

    @property
    def has_seconds(self) -> bool:
        return len(self.expression.split()) == 6

    @functools.cached_property
    def fixed_time(self) -> bool:
        """Fires at fixed times of day (neither the minute nor the hour field is `*…`)."""
        # croniter expands macros and puts the seconds field last: [minute, hour, …].
        fields = croniter(self.expression, second_at_beginning=self.has_seconds).expressions
        return not (str(fields[0]).startswith("*") or str(fields[1]).startswith("*"))

    @classmethod
    def parse(
        cls,
        expression: str,
        field_name: str = "cron_schedule",
        time_zone: str = DEFAULT_TIME_ZONE,
    ) -> CronSchedule:
        """Raises `InvalidArgument` naming `field_name` for anything croniter cannot iterate
        (the time zone is checked by `check_time_zone`)."""
        normalized = " ".join(expression.split())
        fields = normalized.split(" ")
        macro = len(fields) == 1 and normalized.startswith("@")
        if not macro and len(fields) not in (5, 6):
            raise InvalidArgument(
                field_name,
                "must have five fields (minute hour day-of-month month day-of-week), or six "
                f"with seconds first (got {len(fields)})",
            )
        schedule = cls(normalized, time_zone)
        if not croniter.is_valid(normalized, second_at_beginning=schedule.has_seconds):
            raise InvalidArgument(
                field_name, f"{expression[:100]!r} is not a valid cron expression"
            )
        try:
            # Expressions that are valid but never fire (e.g. 30 February) fail here.
            schedule.next_fire_ns(0)
        except (CroniterError, ValueError) as error:
            raise InvalidArgument(
                field_name, f"{expression[:100]!r} never fires: {error}"
            ) from None
        return schedule

    def fires_after(self, after_ns: int) -> Iterator[int]:
        """The fire times strictly after `after_ns`, in order (whole seconds, as ns)."""
        zone = _zone(self.time_zone)
        start = dt.datetime.fromtimestamp(after_ns // NS_PER_SECOND, tz=zone)
        try:
            fires = croniter(self.expression, start, second_at_beginning=self.has_seconds)
        except (CroniterBadCronError, CroniterBadDateError) as error:
            raise ValueError(str(error)) from error
        last = after_ns // NS_PER_SECOND
        while True:
            try:
                seconds = int(fires.get_next(float))
            except (CroniterBadCronError, CroniterBadDateError) as error:
                raise ValueError(str(error)) from error
            # Several nonexistent times of a spring-forward gap map to its end: once.
            if seconds <= last:
                continue
            if self.fixed_time and _second_pass(seconds, zone):
                continue
            last = seconds
            yield seconds * NS_PER_SECOND

    def next_fire_ns(self, after_ns: int) -> int:
        """The first fire time strictly after `after_ns` (whole seconds, as ns)."""
        return next(self.fires_after(after_ns))

    def fires_between(self, start_ns: int, end_ns: int, limit: int) -> list[int]:
        """The fire times in [start_ns, end_ns), at most `limit` + 1 of them (so a caller can
        tell that there are more than `limit`)."""
        found: list[int] = []
        for fire in self.fires_after(start_ns - 1):
            if fire >= end_ns or len(found) > limit:
                break
            found.append(fire)
        return found

    def local_time(self, fire_ns: int) -> str:
        """`fire_ns` in the schedule's time zone, ISO 8601 with its UTC offset."""
        moment = dt.datetime.fromtimestamp(fire_ns // NS_PER_SECOND, tz=_zone(self.time_zone))
        return moment.isoformat()


def _second_pass(seconds: int, zone: zoneinfo.ZoneInfo) -> bool:
    """`seconds` is the second pass of a wall-clock time that a fall-back repeats."""
    local = dt.datetime.fromtimestamp(seconds, tz=zone)
    return local.fold == 1 and local.replace(fold=0).utcoffset() != local.utcoffset()


@dataclass(frozen=True)
class CatchUp:
    """What a schedule does with its occurrences due by now (`plan_catch_up`)."""

    # The occurrences to offer under the overlap policy, oldest first.
    offered: tuple[int, ...]
    skipped: Mapping[SkipReason, int]
    # The first occurrence not handled: after now, or (more were due than one pass handles)
    # one still due.
    next_fire_ns: int


def plan_catch_up(
    schedule: CronSchedule,
    first_ns: int,
    now_ns: int,
    *,
    window_seconds: int,
    skip_before_ns: int = 0,
    limit: int = CATCHUP_SCAN_LIMIT,
) -> CatchUp:
    """The occurrences from `first_ns` (the schedule's next fire) through `now_ns`: those before
    `skip_before_ns` (a resume) are skipped as paused; the rest run if within the catch-up
    window, else are skipped as missed. The window (`window_seconds`, 0 = the default) reaches
    back `window_seconds` from now, or by default holds the latest occurrence only (the one
    whose successor is not due yet: a fire that merely came late always runs). At most `limit`
    occurrences are looked at; `next_fire_ns` then points at the next one, still due."""
    due: list[int] = []
    next_fire = first_ns
    fires = schedule.fires_after(first_ns)
    while next_fire <= now_ns and len(due) < limit:
        due.append(next_fire)
        next_fire = next(fires)
    reached_now = next_fire > now_ns
    offered: list[int] = []
    skipped = dict.fromkeys(SkipReason, 0)
    window_start = now_ns - window_seconds * NS_PER_SECOND
    for index, fire in enumerate(due):
        if fire < skip_before_ns:
            skipped[SkipReason.PAUSED] += 1
        elif (fire >= window_start) if window_seconds else (reached_now and index == len(due) - 1):
            offered.append(fire)
        else:
            skipped[SkipReason.CATCHUP] += 1
    return CatchUp(tuple(offered), {r: n for r, n in skipped.items() if n}, next_fire)


# --- overlap ------------------------------------------------------------------------------


class FireDecision(StrEnum):
    # Create a child due now.
    RUN = "run"
    # Create a child held until the unfinished one ends (BUFFER_ONE).
    BUFFER = "buffer"
    # Release the child already waiting, and create none.
    RELEASE_BUFFERED = "release_buffered"
    # Create nothing for this fire.
    SKIP = "skip"


def decide_fire(
    policy: OverlapPolicy, active: TaskState | None, buffered: TaskState | None
) -> FireDecision:
    """What a recurring task does at a fire, given the states of its last started child
    (`active`) and of its waiting child (`buffered`), None when there is none."""
    active_unfinished = active is not None and active not in FINAL_STATES
    buffered_waiting = buffered is TaskState.PENDING
    if not active_unfinished:
        # The waiting child should have been released when the active one ended; if it was
        # not, it is this fire's run.
        return FireDecision.RELEASE_BUFFERED if buffered_waiting else FireDecision.RUN
    if policy is OverlapPolicy.SKIP or buffered_waiting:
        return FireDecision.SKIP
    return FireDecision.BUFFER


# --- ids ----------------------------------------------------------------------------------


def check_task_id(task_id: str, field_name: str = "task_id", *, submitted: bool = False) -> None:
    """Raises `InvalidArgument` unless `task_id` is a well-formed id (the Governor's rules)."""
    check_id(task_id, field_name, MAX_SUBMITTED_ID_LENGTH if submitted else MAX_TASK_ID_LENGTH)


def require_task_id(task_id: str, field_name: str = "task_id") -> None:
    require_id(task_id, field_name, MAX_TASK_ID_LENGTH)


def child_task_id(parent_id: str, fire_ns: int) -> str:
    """The id of a recurring task's run for the occurrence at `fire_ns` (in UTC, so the two
    passes of an hour a fall-back repeats have distinct runs)."""
    fire = dt.datetime.fromtimestamp(fire_ns // NS_PER_SECOND, tz=dt.UTC)
    return f"{parent_id}-{fire:%Y%m%dT%H%M%SZ}"


def trigger_task_id(parent_id: str, now_ns: int) -> str:
    """The id of a run triggered by hand at `now_ns`: to the millisecond, and never one of
    the cadence's (which are whole seconds, without the fraction)."""
    moment = dt.datetime.fromtimestamp(now_ns // NS_PER_SECOND, tz=dt.UTC)
    millis = now_ns // 1_000_000 % 1000
    return f"{parent_id}-{moment:%Y%m%dT%H%M%S}.{millis:03d}Z"


def idempotency_key(task_id: str) -> str:
    """The key every attempt of one task's run hands to its executor (and executors pass on
    as request ids), bounded to what downstream services accept."""
    key = IDEMPOTENCY_KEY_PREFIX + task_id
    if len(key) <= MAX_IDEMPOTENCY_KEY_LENGTH:
        return key
    return f"{IDEMPOTENCY_KEY_PREFIX}sha256:{hashlib.sha256(task_id.encode()).hexdigest()}"


# --- submissions --------------------------------------------------------------------------


@dataclass(frozen=True)
class Submission:
    """What a caller asks for when submitting a task (zeros mean defaults, as in the proto)."""

    task_type: str
    parameters: Mapping[str, str] = field(default_factory=dict)
    task_id: str = ""
    scheduled_time_ns: int = 0
    priority: int = 0
    retry: RetryConfig = field(default_factory=RetryConfig)
    cron_schedule: str = ""
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    timeout_seconds: int = 0
    time_zone: str = ""
    catchup_window_seconds: int = 0


def validate_submission(
    submission: Submission,
    known_types: Collection[str],
    limits: ParameterLimits = API_LIMITS,
    *,
    submitted_id: bool = True,
) -> CronSchedule | None:
    """Raises `InvalidArgument`, naming the field, for anything a task may not hold; returns
    the parsed cron schedule of a recurring task."""
    if not submission.task_type:
        raise InvalidArgument("task_type", f"is required: one of {_known(known_types)}")
    if submission.task_type not in known_types:
        raise InvalidArgument(
            "task_type",
            f"unknown task type {submission.task_type[:MAX_TASK_TYPE_LENGTH]!r}: "
            f"known types are {_known(known_types)}",
        )
    if submission.task_id:
        check_task_id(submission.task_id, submitted=submitted_id)
    if submission.scheduled_time_ns < 0:
        raise InvalidArgument("scheduled_time_ns", "must not be negative (0 = now)")
    if submission.priority != 0:
        check_range("priority", submission.priority, MIN_PRIORITY, MAX_PRIORITY)
    if submission.timeout_seconds != 0:
        check_range("timeout_seconds", submission.timeout_seconds, 1, MAX_TIMEOUT_SECONDS)
    check_parameters(submission.parameters, limits)
    if not submission.cron_schedule:
        # A schedule's settings on a one-off task are a mistake, not something to ignore.
        for name, value in (
            ("time_zone", submission.time_zone),
            ("catchup_window_seconds", submission.catchup_window_seconds),
        ):
            if value:
                raise InvalidArgument(name, "applies to a recurring task only (cron_schedule)")
        return None
    if not submission.cron_schedule.strip():
        raise InvalidArgument("cron_schedule", "must not be blank")
    if submission.overlap_policy is OverlapPolicy.BUFFER_ALL:
        raise InvalidArgument(
            "overlap_policy",
            "BUFFER_ALL is for backfills only: a schedule's own runs could pile up without "
            "bound; use SKIP or BUFFER_ONE",
        )
    time_zone = check_time_zone(submission.time_zone)
    check_catchup_window(submission.catchup_window_seconds)
    schedule = CronSchedule.parse(submission.cron_schedule, time_zone=time_zone)
    if submission.task_id and len(trigger_task_id(submission.task_id, 0)) > MAX_TASK_ID_LENGTH:
        raise InvalidArgument("task_id", "is too long for a recurring task's run ids")
    return schedule


def check_catchup_window(seconds: int, field_name: str = "catchup_window_seconds") -> None:
    """0 (the default: the latest missed occurrence only) or within the bounds."""
    if seconds != 0:
        check_range(field_name, seconds, MIN_CATCHUP_WINDOW_SECONDS, MAX_CATCHUP_WINDOW_SECONDS)


def check_parameters(
    parameters: Mapping[str, str], limits: ParameterLimits = API_LIMITS, field_name: str = ""
) -> None:
    check_map(
        field_name or "parameters",
        parameters,
        max_entries=limits.max_entries,
        max_value_length=limits.max_value_length,
        max_key_length=limits.max_key_length,
    )


def _known(known_types: Collection[str]) -> str:
    return ", ".join(sorted(known_types)) or "(none registered)"


# --- the task -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One try at running a task."""

    attempt: int
    # When it started: planned by the claim (the task's due time, or the claim's time when it
    # was already due), then set to when its replica started it once the attempt ends.
    started_at_ns: int
    worker: str
    idempotency_key: str
    ended_at_ns: int = 0
    # An AttemptOutcome value once the attempt ended; "" while it runs.
    outcome: str = ""
    error_message: str = ""
    # False for an attempt released on shutdown: it does not use up one of max_attempts.
    counts: bool = True
    # When its replica claimed it: before started_at_ns when claimed ahead of its due time.
    claimed_at_ns: int = 0

    def ended(self, now_ns: int, outcome: AttemptOutcome, error: str = "") -> Attempt:
        return replace(
            self, ended_at_ns=now_ns, outcome=outcome.value, error_message=_truncate(error)
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "attempt": self.attempt,
            "started_at_ns": self.started_at_ns,
            "ended_at_ns": self.ended_at_ns,
            "outcome": self.outcome,
            "error_message": self.error_message,
            "worker": self.worker,
            "idempotency_key": self.idempotency_key,
            "counts": self.counts,
            "claimed_at_ns": self.claimed_at_ns,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> Attempt:
        return cls(
            attempt=int(data["attempt"]),
            started_at_ns=int(data["started_at_ns"]),
            ended_at_ns=int(data.get("ended_at_ns", 0)),
            outcome=str(data.get("outcome", "")),
            error_message=str(data.get("error_message", "")),
            worker=str(data.get("worker", "")),
            idempotency_key=str(data.get("idempotency_key", "")),
            counts=bool(data.get("counts", True)),
            claimed_at_ns=int(data.get("claimed_at_ns", 0)),
        )


@dataclass(frozen=True)
class Backfill:
    """A backfill of a recurring task whose occurrences run one after another (BUFFER_ALL):
    where it stands. Its runs are made one at a time, each when the schedule's previous run
    ended, so that no transaction writes more than a few."""

    # The next occurrence to run, and the end of the window (exclusive).
    next_ns: int
    end_ns: int
    # Occurrences left in the window from next_ns on.
    remaining: int
    requested_by: str = ""
    requested_at_ns: int = 0

    def to_doc(self) -> dict[str, Any]:
        return {
            "next_ns": self.next_ns,
            "end_ns": self.end_ns,
            "remaining": self.remaining,
            "requested_by": self.requested_by,
            "requested_at_ns": self.requested_at_ns,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> Backfill:
        return cls(
            next_ns=int(data["next_ns"]),
            end_ns=int(data["end_ns"]),
            remaining=int(data["remaining"]),
            requested_by=str(data.get("requested_by", "")),
            requested_at_ns=int(data.get("requested_at_ns", 0)),
        )


@dataclass(frozen=True)
class Task:
    """A task as stored: what was asked, where it stands, and every attempt so far."""

    id: str
    task_type: str
    parameters: Mapping[str, str]
    priority: int
    scheduled_time_ns: int
    created_at_ns: int
    retry: RetryConfig
    timeout_seconds: int
    created_by: str = ""
    cron_schedule: str = ""
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    parent_task_id: str = ""
    # W3C trace context of the call that submitted it: its runs continue that trace.
    trace_context: Mapping[str, str] = field(default_factory=dict)

    status: TaskState = TaskState.PENDING
    # When it is due: the first or next attempt, or a recurring task's next fire.
    next_run_ns: int = 0
    # Bumped by every change; the version of the task's events.
    version: int = 1
    updated_at_ns: int = 0
    attempts: tuple[Attempt, ...] = ()
    started_at_ns: int = 0
    completed_at_ns: int = 0
    error_message: str = ""
    result: Mapping[str, str] = field(default_factory=dict)

    # The running attempt's lease. `fencing_token` goes up at every claim (and at a cancel),
    # and a replica's writes about an attempt only apply while the token is still the one
    # its claim set: a replica whose lease lapsed cannot overwrite the new owner's result.
    lease_owner: str = ""
    lease_until_ns: int = 0
    fencing_token: int = 0

    # A recurring task: its last started run, its run waiting under BUFFER_ONE, and counts.
    active_child_id: str = ""
    buffered_child_id: str = ""
    fire_count: int = 0
    # Occurrences that made no run, by SkipReason value.
    skipped_runs: Mapping[str, int] = field(default_factory=dict)
    # A BUFFER_ONE run waiting for its predecessor (next_run_ns is HELD_NS meanwhile).
    held: bool = False

    # A recurring task: the zone its cron fields are read in, and how far back the occurrences
    # missed in an outage still run (0: the latest missed one only).
    time_zone: str = DEFAULT_TIME_ZONE
    catchup_window_seconds: int = 0
    # Paused by an operator: it fires nothing, and next_run_ns is HELD_NS (paused_next_ns
    # keeps where the cadence stood).
    paused: bool = False
    paused_by: str = ""
    paused_at_ns: int = 0
    pause_note: str = ""
    paused_next_ns: int = 0
    # The last resume: the occurrences before resumed_at_ns are skipped as paused.
    resumed_by: str = ""
    resumed_at_ns: int = 0
    resume_note: str = ""
    # A backfill in progress (BUFFER_ALL), if any.
    backfill: Backfill | None = None
    # A run of a recurring task: a RunOrigin value.
    run_origin: str = ""

    @property
    def is_recurring(self) -> bool:
        return bool(self.cron_schedule) and not self.parent_task_id

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATES

    @property
    def attempts_used(self) -> int:
        return sum(1 for a in self.attempts if a.counts)

    @property
    def current_attempt(self) -> Attempt | None:
        """The attempt in progress (the last one, while it has no outcome)."""
        if self.attempts and not self.attempts[-1].outcome:
            return self.attempts[-1]
        return None

    @property
    def idempotency_key(self) -> str:
        return idempotency_key(self.id)

    @property
    def schedule(self) -> CronSchedule:
        """A recurring task's schedule, in its time zone."""
        return CronSchedule(self.cron_schedule, self.time_zone or DEFAULT_TIME_ZONE)

    def has_started(self, now_ns: int) -> bool:
        """A run has started: an attempt of it counted, or its attempt is running and due.
        (Not started: created and waiting, released before it began, or claimed ahead of a due
        time still to come.)"""
        if any(a.counts and a.outcome for a in self.attempts):
            return True
        current = self.current_attempt
        return current is not None and current.started_at_ns <= now_ns

    def check_schedule_control(self, action: str) -> None:
        """Raises `FailedPrecondition` unless this is a live recurring task, which `action`
        ("pause", "trigger", …) applies to."""
        if self.parent_task_id:
            raise FailedPrecondition(
                f"task {self.id!r} is a run of recurring task {self.parent_task_id!r}; "
                f"{action} applies to the recurring task: name {self.parent_task_id!r}"
            )
        if not self.is_recurring:
            raise FailedPrecondition(
                f"task {self.id!r} is a one-off task; {action} applies to recurring tasks "
                "only (cron_schedule)"
            )
        if self.is_final:
            raise FailedPrecondition(
                f"recurring task {self.id!r} is {self.status.value}; {action} applies to a "
                "live schedule only"
            )

    def upcoming(self, now_ns: int, count: int) -> list[int]:
        """The next `count` fire times: from the next fire, or, paused, from now (where it
        would fire once resumed). None for a finished task."""
        if self.is_final or count <= 0:
            return []
        # Past occurrences a resume still has to skip are not upcoming.
        after = now_ns - 1 if self.paused else max(self.next_run_ns, self.resumed_at_ns) - 1
        fires = self.schedule.fires_after(after)
        return [next(fires) for _ in range(count)]

    # --- changes: each returns the next version of the task ---

    def _next(self, now_ns: int, **changes: Any) -> Task:
        return replace(self, version=self.version + 1, updated_at_ns=now_ns, **changes)

    def claimed(self, now_ns: int, worker: str, lease_ns: int) -> Task:
        """pending → running on `worker`, with a new attempt and a new fencing token. A task
        claimed ahead of its due time (`next_run_ns` after `now_ns`) keeps it: its attempt is
        planned to start then, and the replica holds it until then."""
        if self.status is not TaskState.PENDING or self.is_recurring:
            raise FailedPrecondition(f"task {self.id!r} is {self.status.value}, not claimable")
        number = (self.attempts[-1].attempt if self.attempts else 0) + 1
        start_ns = max(now_ns, self.next_run_ns)
        attempt = Attempt(
            attempt=number,
            started_at_ns=start_ns,
            worker=worker,
            idempotency_key=self.idempotency_key,
            claimed_at_ns=now_ns,
        )
        return self._next(
            now_ns,
            status=TaskState.RUNNING,
            attempts=_bounded((*self.attempts, attempt)),
            started_at_ns=self.started_at_ns or start_ns,
            lease_owner=worker,
            lease_until_ns=now_ns + lease_ns,
            fencing_token=self.fencing_token + 1,
        )

    def lease_lapsed(self, now_ns: int) -> Task:
        """running whose lease lapsed → pending, due now (its attempt recorded as lease_lost),
        or → failed when that was its last attempt."""
        if self.status is not TaskState.RUNNING:
            raise FailedPrecondition(f"task {self.id!r} is {self.status.value}, not running")
        error = f"lease of replica {self.lease_owner!r} lapsed"
        attempts = self._end_current(now_ns, AttemptOutcome.LEASE_LOST, error)
        lapsed = replace(self, attempts=attempts)
        if lapsed.attempts_used >= self.retry.max_attempts:
            return lapsed._final(
                now_ns,
                TaskState.FAILED,
                error=f"{error} on attempt {lapsed.attempts_used} of {self.retry.max_attempts}",
            )
        return lapsed._next(
            now_ns,
            status=TaskState.PENDING,
            next_run_ns=now_ns,
            error_message=error,
            lease_owner="",
            lease_until_ns=0,
        )

    def started(self, started_at_ns: int) -> Task:
        """The running attempt as its replica started it, at `started_at_ns` (the claim planned
        its start; a replica with no free slot at the due time starts it later). Not a change
        anyone watches: no new version."""
        current = self.current_attempt
        if current is None or current.started_at_ns == started_at_ns:
            return self
        first = self.started_at_ns == current.started_at_ns
        return replace(
            self,
            attempts=(*self.attempts[:-1], replace(current, started_at_ns=started_at_ns)),
            started_at_ns=started_at_ns if first else self.started_at_ns,
        )

    def renewed(self, now_ns: int, lease_ns: int) -> Task:
        # Renewals are not changes anyone watches: no new version.
        return replace(self, lease_until_ns=now_ns + lease_ns, updated_at_ns=now_ns)

    def succeeded(self, now_ns: int, result: Mapping[str, str]) -> Task:
        attempts = self._end_current(now_ns, AttemptOutcome.COMPLETED)
        return replace(self, attempts=attempts, result=dict(result))._final(
            now_ns, TaskState.COMPLETED, error=""
        )

    def attempt_failed(self, now_ns: int, error: str, *, permanent: bool) -> Task:
        """The running attempt failed: → pending after the backoff, or → failed when the error
        is permanent or that was the last attempt."""
        attempts = self._end_current(now_ns, AttemptOutcome.FAILED, error)
        failed = replace(self, attempts=attempts)
        used = failed.attempts_used
        if permanent or used >= self.retry.max_attempts:
            why = "permanent error" if permanent else f"attempt {used} of {self.retry.max_attempts}"
            return failed._final(now_ns, TaskState.FAILED, error=f"{_truncate(error)} ({why})")
        delay_ns = self.retry.backoff_ms(used) * NS_PER_MS
        return failed._next(
            now_ns,
            status=TaskState.PENDING,
            next_run_ns=now_ns + delay_ns,
            error_message=_truncate(error),
            lease_owner="",
            lease_until_ns=0,
        )

    def released(self, now_ns: int, reason: str, *, started: bool = True) -> Task:
        """running → pending without using up an attempt (a graceful shutdown): due now, or,
        for an attempt claimed ahead that had not `started`, due when it was."""
        attempts = self._end_current(now_ns, AttemptOutcome.LEASE_LOST, reason)
        if attempts:
            attempts = (*attempts[:-1], replace(attempts[-1], counts=False))
        return self._next(
            now_ns,
            status=TaskState.PENDING,
            next_run_ns=now_ns if started else self.next_run_ns,
            attempts=attempts,
            lease_owner="",
            lease_until_ns=0,
        )

    def cancelled(self, now_ns: int, reason: str) -> Task:
        if self.is_final:
            raise FailedPrecondition(
                f"task {self.id!r} is already {self.status.value} and cannot be cancelled"
            )
        message = f"cancelled: {reason}" if reason else "cancelled"
        attempts = self._end_current(now_ns, AttemptOutcome.CANCELLED, message)
        # The new token fences off the replica still running the attempt, if any.
        return replace(self, attempts=attempts, fencing_token=self.fencing_token + 1)._final(
            now_ns, TaskState.CANCELLED, error=message
        )

    def fired(self, now_ns: int, *, active_child_id: str, buffered_child_id: str) -> Task:
        """A recurring task after one of its occurrences made a run (started or waiting)."""
        return self._next(
            now_ns,
            active_child_id=active_child_id,
            buffered_child_id=buffered_child_id,
            fire_count=self.fire_count + 1,
        )

    def advanced(
        self, now_ns: int, next_fire_ns: int, skipped: Mapping[SkipReason, int] | None = None
    ) -> Task:
        """A recurring task moved on to its next fire, with the occurrences it skipped."""
        return self._next(
            now_ns, next_run_ns=next_fire_ns, skipped_runs=self._add_skips(skipped or {})
        )

    def with_skips(self, now_ns: int, skipped: Mapping[SkipReason, int]) -> Task:
        return self._next(now_ns, skipped_runs=self._add_skips(skipped))

    def _add_skips(self, skipped: Mapping[SkipReason, int]) -> dict[str, int]:
        counts = dict(self.skipped_runs)
        for reason, count in skipped.items():
            if count:
                counts[reason.value] = counts.get(reason.value, 0) + count
        return counts

    def with_children(self, now_ns: int, *, active_child_id: str, buffered_child_id: str) -> Task:
        return self._next(
            now_ns, active_child_id=active_child_id, buffered_child_id=buffered_child_id
        )

    def with_backfill(self, now_ns: int, backfill: Backfill | None) -> Task:
        return self._next(now_ns, backfill=backfill)

    def paused_now(
        self, now_ns: int, by: str, note: str, skipped: Mapping[SkipReason, int]
    ) -> Task:
        """Paused by `by`: fires nothing, waits for nothing (its waiting run and a backfill in
        progress are dropped: the caller cancels the runs), until resumed."""
        self.check_schedule_control("pause")
        if self.paused:
            since = dt.datetime.fromtimestamp(self.paused_at_ns / NS_PER_SECOND, tz=dt.UTC)
            raise FailedPrecondition(
                f"recurring task {self.id!r} is already paused (by {self.paused_by or '-'} at "
                f"{since:%Y-%m-%dT%H:%M:%SZ}"
                + (f": {self.pause_note})" if self.pause_note else ")")
            )
        return self._next(
            now_ns,
            paused=True,
            paused_by=by,
            paused_at_ns=now_ns,
            pause_note=note,
            paused_next_ns=self.next_run_ns,
            next_run_ns=HELD_NS,
            buffered_child_id="",
            backfill=None,
            skipped_runs=self._add_skips(skipped),
        )

    def resumed_now(self, now_ns: int, by: str, note: str) -> Task:
        """Resumed by `by`: due at the first occurrence it did not handle before the pause,
        with the occurrences before `now_ns` to be skipped as paused (`plan_catch_up`)."""
        self.check_schedule_control("resume")
        if not self.paused:
            raise FailedPrecondition(f"recurring task {self.id!r} is not paused")
        return self._next(
            now_ns,
            paused=False,
            next_run_ns=self.paused_next_ns or self.schedule.next_fire_ns(now_ns - 1),
            paused_next_ns=0,
            resumed_by=by,
            resumed_at_ns=now_ns,
            resume_note=note,
        )

    def released_from_hold(self, now_ns: int) -> Task:
        """A BUFFER_ONE run whose predecessor ended: due now."""
        return self._next(now_ns, held=False, next_run_ns=now_ns)

    def child(
        self,
        now_ns: int,
        fire_ns: int,
        *,
        held: bool,
        origin: RunOrigin = RunOrigin.SCHEDULE,
        run_id: str = "",
    ) -> Task:
        """The run of this recurring task for the occurrence at `fire_ns` (its id derived from
        that time unless `run_id` names it)."""
        return Task(
            id=run_id or child_task_id(self.id, fire_ns),
            task_type=self.task_type,
            parameters=dict(self.parameters),
            priority=self.priority,
            scheduled_time_ns=fire_ns,
            created_at_ns=now_ns,
            updated_at_ns=now_ns,
            retry=self.retry,
            timeout_seconds=self.timeout_seconds,
            created_by=self.created_by,
            parent_task_id=self.id,
            next_run_ns=HELD_NS if held else now_ns,
            held=held,
            run_origin=origin.value,
        )

    def _final(self, now_ns: int, status: TaskState, *, error: str) -> Task:
        return self._next(
            now_ns,
            status=status,
            completed_at_ns=now_ns,
            error_message=error,
            next_run_ns=0,
            lease_owner="",
            lease_until_ns=0,
            held=False,
        )

    def _end_current(
        self, now_ns: int, outcome: AttemptOutcome, error: str = ""
    ) -> tuple[Attempt, ...]:
        current = self.current_attempt
        if current is None:
            return self.attempts
        return (*self.attempts[:-1], current.ended(now_ns, outcome, error))

    # --- persistence ---

    def to_doc(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "task_type": self.task_type,
            "parameters": dict(self.parameters),
            "priority": self.priority,
            "scheduled_time_ns": self.scheduled_time_ns,
            "created_at_ns": self.created_at_ns,
            "created_by": self.created_by,
            "retry": self.retry.to_doc(),
            "timeout_seconds": self.timeout_seconds,
            "cron_schedule": self.cron_schedule,
            "overlap_policy": self.overlap_policy.value,
            "parent_task_id": self.parent_task_id,
            "status": self.status.value,
            "next_run_ns": self.next_run_ns,
            "version": self.version,
            "updated_at_ns": self.updated_at_ns,
            "attempts": [a.to_doc() for a in self.attempts],
            "started_at_ns": self.started_at_ns,
            "completed_at_ns": self.completed_at_ns,
            "error_message": self.error_message,
            "result": dict(self.result),
            "lease_owner": self.lease_owner,
            "lease_until_ns": self.lease_until_ns,
            "fencing_token": self.fencing_token,
            "active_child_id": self.active_child_id,
            "buffered_child_id": self.buffered_child_id,
            "fire_count": self.fire_count,
            "skipped_runs": dict(self.skipped_runs),
            "held": self.held,
            "trace_context": dict(self.trace_context),
            "time_zone": self.time_zone,
            "catchup_window_seconds": self.catchup_window_seconds,
            "paused": self.paused,
            "paused_by": self.paused_by,
            "paused_at_ns": self.paused_at_ns,
            "pause_note": self.pause_note,
            "paused_next_ns": self.paused_next_ns,
            "resumed_by": self.resumed_by,
            "resumed_at_ns": self.resumed_at_ns,
            "resume_note": self.resume_note,
            "backfill": self.backfill.to_doc() if self.backfill else None,
            "run_origin": self.run_origin,
        }

    @classmethod
    def from_doc(cls, data: Mapping[str, Any]) -> Task:
        return cls(
            id=data["id"],
            task_type=data["task_type"],
            parameters=dict(data.get("parameters") or {}),
            priority=int(data["priority"]),
            scheduled_time_ns=int(data["scheduled_time_ns"]),
            created_at_ns=int(data["created_at_ns"]),
            created_by=str(data.get("created_by", "")),
            retry=RetryConfig.from_doc(data["retry"]),
            timeout_seconds=int(data["timeout_seconds"]),
            cron_schedule=str(data.get("cron_schedule", "")),
            overlap_policy=OverlapPolicy(data.get("overlap_policy") or OverlapPolicy.SKIP),
            parent_task_id=str(data.get("parent_task_id", "")),
            status=TaskState(data["status"]),
            next_run_ns=int(data["next_run_ns"]),
            version=int(data["version"]),
            updated_at_ns=int(data.get("updated_at_ns", 0)),
            attempts=tuple(Attempt.from_doc(a) for a in data.get("attempts") or ()),
            started_at_ns=int(data.get("started_at_ns", 0)),
            completed_at_ns=int(data.get("completed_at_ns", 0)),
            error_message=str(data.get("error_message", "")),
            result=dict(data.get("result") or {}),
            lease_owner=str(data.get("lease_owner", "")),
            lease_until_ns=int(data.get("lease_until_ns", 0)),
            fencing_token=int(data.get("fencing_token", 0)),
            active_child_id=str(data.get("active_child_id", "")),
            buffered_child_id=str(data.get("buffered_child_id", "")),
            fire_count=int(data.get("fire_count", 0)),
            skipped_runs=_skipped_runs(data),
            held=bool(data.get("held", False)),
            trace_context=dict(data.get("trace_context") or {}),
            time_zone=str(data.get("time_zone") or DEFAULT_TIME_ZONE),
            catchup_window_seconds=int(data.get("catchup_window_seconds", 0)),
            paused=bool(data.get("paused", False)),
            paused_by=str(data.get("paused_by", "")),
            paused_at_ns=int(data.get("paused_at_ns", 0)),
            pause_note=str(data.get("pause_note", "")),
            paused_next_ns=int(data.get("paused_next_ns", 0)),
            resumed_by=str(data.get("resumed_by", "")),
            resumed_at_ns=int(data.get("resumed_at_ns", 0)),
            resume_note=str(data.get("resume_note", "")),
            backfill=Backfill.from_doc(data["backfill"]) if data.get("backfill") else None,
            run_origin=str(data.get("run_origin", "")),
        )


def _skipped_runs(data: Mapping[str, Any]) -> dict[str, int]:
    counts = {str(k): int(v) for k, v in (data.get("skipped_runs") or {}).items()}
    # Documents written before the reasons were counted apart: their skips were all overlaps.
    if not counts and int(data.get("skipped_fires", 0)):
        counts[SkipReason.OVERLAP.value] = int(data["skipped_fires"])
    return counts


def new_task(
    submission: Submission,
    *,
    task_id: str,
    now_ns: int,
    principal: str,
    schedule: CronSchedule | None,
    trace_context: Mapping[str, str] | None = None,
) -> Task:
    """The task a validated submission creates."""
    scheduled = submission.scheduled_time_ns or now_ns
    if schedule is not None:
        # The first fire at or after the scheduled time (never in the past).
        next_run = schedule.next_fire_ns(max(scheduled, now_ns) - 1)
    else:
        next_run = scheduled
    return Task(
        id=task_id,
        task_type=submission.task_type,
        parameters=dict(submission.parameters),
        priority=submission.priority or DEFAULT_PRIORITY,
        scheduled_time_ns=scheduled,
        created_at_ns=now_ns,
        updated_at_ns=now_ns,
        created_by=principal,
        retry=submission.retry,
        timeout_seconds=submission.timeout_seconds or DEFAULT_TIMEOUT_SECONDS,
        cron_schedule=schedule.expression if schedule else "",
        overlap_policy=submission.overlap_policy,
        next_run_ns=next_run,
        trace_context=dict(trace_context or {}),
        time_zone=schedule.time_zone if schedule else DEFAULT_TIME_ZONE,
        catchup_window_seconds=submission.catchup_window_seconds if schedule else 0,
    )


def _bounded(attempts: tuple[Attempt, ...]) -> tuple[Attempt, ...]:
    return attempts[-MAX_ATTEMPT_RECORDS:]


def _truncate(text: str) -> str:
    return text if len(text) <= MAX_ERROR_LENGTH else text[: MAX_ERROR_LENGTH - 1] + "…"
