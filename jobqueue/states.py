"""The job state machine: statuses, the legal transitions and the event each one publishes.

::

    submit --> queued --------- start ---------> running --- succeed ---> succeeded
                | | ^                            | | | |
                | | +---- retry / give back -----+ | | +--- fail ------> failed
                | |                                | +----- cancel ----> canceled
                | |                                +--- reclaim -------> running
                | +--- cancel (while queued) ----------------------------> canceled
                +----- dead-letter (never started) ----------------------> failed

``queued → failed`` is only dead-lettering: a job delivered too often without a worker that
started it (its last attempt was given back, or its worker died before starting it). Everything
else that fails a job (its own error, a timeout, inputs that expired) happens after ``start``, so
from ``running``. Terminal statuses have no way out.

Both sides enforce this one table: Python with ``check``, and the Lua scripts of ``jobs`` through
``lua_tables``, which embeds it in them. Torch-free and Redis-free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

JobKind = Literal["invert", "edit", "reconstruct"]
JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
EventName = Literal["queued", "started", "progress", "cache_hit", "succeeded", "failed", "canceled"]

STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "canceled"})


@dataclass(frozen=True)
class Transition:
    """One legal status change and the event that announces it."""

    source: JobStatus
    target: JobStatus
    event: EventName
    when: str


TRANSITIONS: tuple[Transition, ...] = (
    Transition("queued", "running", "started", "a worker starts the job"),
    Transition("running", "running", "started", "another worker reclaims it after the lease expired"),
    Transition("running", "queued", "queued", "an attempt failed or its worker stopped: deliver it again"),
    Transition("running", "succeeded", "succeeded", "the worker stored its output"),
    Transition("running", "failed", "failed", "its own error, a timeout, expired inputs, or dead-lettered"),
    Transition("running", "canceled", "canceled", "the worker stopped it after a cancel request"),
    Transition("queued", "canceled", "canceled", "canceled while queued"),
    Transition("queued", "failed", "failed", "dead-lettered before any worker started it"),
)

_EVENTS: dict[tuple[str, str], EventName] = {(t.source, t.target): t.event for t in TRANSITIONS}


class IllegalTransition(ValueError):
    """A status change the table does not allow."""

    def __init__(self, source: str, target: str) -> None:
        super().__init__(f"a job cannot go from {source!r} to {target!r}")
        self.source = source
        self.target = target


def check(source: str, target: str) -> EventName:
    """The event that ``source → target`` publishes; raises ``IllegalTransition`` if it is not legal."""
    try:
        return _EVENTS[source, target]
    except KeyError:
        raise IllegalTransition(source, target) from None


def sources(target: str) -> tuple[JobStatus, ...]:
    """The statuses a job may move to ``target`` from."""
    return tuple(t.source for t in TRANSITIONS if t.target == target)


def lua_tables() -> str:
    """Lua source defining ``TRANSITIONS`` (``{source = {target = event, …}, …}``) and ``TERMINAL``
    (``{status = true, …}``): the table, for the scripts of ``jobs`` to embed."""
    rows = []
    for source in STATUSES:
        moves = ", ".join(f"{t.target} = '{t.event}'" for t in TRANSITIONS if t.source == source)
        rows.append(f"{source} = {{{moves}}}")
    terminal = ", ".join(f"{status} = true" for status in STATUSES if status in TERMINAL)
    return f"local TRANSITIONS = {{{', '.join(rows)}}}\nlocal TERMINAL = {{{terminal}}}\n"
