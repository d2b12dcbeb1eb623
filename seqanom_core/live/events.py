"""Events as live scoring receives them: JSON objects in the canonical schema, checked one by one.

An event is ``{"user_id", "item_id", "category_id", "behavior", "timestamp"}``: ids as strings or
integers, the behaviour as one of ``BEHAVIORS`` (view, cart, fav, buy), the time in Unix seconds
within ``TIMESTAMP_WINDOW``. Anything else is an ``EventError`` naming the event's index and the
field, so a service can answer 422 and a stream can report the line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from seqanom_core.errors import SeqanomError
from seqanom_core.schema import (
    BEHAVIOR_CODE,
    BEHAVIORS,
    EVENT_COLUMNS,
    TIMESTAMP_MAX,
    TIMESTAMP_MIN,
    TIMESTAMP_WINDOW,
)

MAX_ID_CHARS = 256  # longest id accepted (a longer one is a malformed event, not a shopper)


class EventError(SeqanomError, ValueError):
    """An event that cannot be scored: ``index`` in its batch, the ``field`` at fault (None: the
    event as a whole), and why."""

    def __init__(self, index: int, field: str | None, message: str) -> None:
        self.index, self.field, self.message = index, field, message
        where = f"event {index}" + (f", field '{field}'" if field else "")
        super().__init__(f"{where}: {message}")


class OutOfOrderError(EventError):
    """An event older than the shopper's last one (the service answers 409)."""


@dataclass(frozen=True, slots=True)
class LiveEvent:
    """One checked event in the canonical schema (``behavior`` as its code)."""

    user_id: str
    item_id: str
    category_id: str
    behavior: int
    timestamp: float


def _id(value: Any, index: int, field: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EventError(index, field, f"must be a string or an integer, not {type(value).__name__}")
    text = str(value)
    if not text or len(text) > MAX_ID_CHARS:
        raise EventError(index, field, f"must have 1 to {MAX_ID_CHARS} characters")
    return text


def parse_event(obj: Any, index: int) -> LiveEvent:
    """A checked ``LiveEvent`` from one JSON value, or ``EventError``."""
    if not isinstance(obj, dict):
        raise EventError(index, None, f"must be a JSON object, not {type(obj).__name__}")
    missing = [k for k in EVENT_COLUMNS if k not in obj]
    if missing:
        raise EventError(index, missing[0], "is missing")
    behavior = obj["behavior"]
    if not isinstance(behavior, str) or behavior not in BEHAVIOR_CODE:
        raise EventError(index, "behavior", f"unknown behaviour {behavior!r}; expected one of "
                                            f"{', '.join(BEHAVIORS)}")
    ts = obj["timestamp"]
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise EventError(index, "timestamp", f"must be a number of Unix seconds, not {ts!r}")
    if not TIMESTAMP_MIN <= ts <= TIMESTAMP_MAX:
        raise EventError(index, "timestamp", f"{ts} is outside {TIMESTAMP_WINDOW} "
                                             "(milliseconds given as seconds?)")
    return LiveEvent(_id(obj["user_id"], index, "user_id"), _id(obj["item_id"], index, "item_id"),
                     _id(obj["category_id"], index, "category_id"), BEHAVIOR_CODE[behavior],
                     float(ts))


def parse_events(objs: Any) -> list[LiveEvent]:
    """Checked events from a JSON array (``EventError`` at the first bad one)."""
    if not isinstance(objs, list):
        raise EventError(0, None, f"the body must be a JSON array of events, not "
                                  f"{type(objs).__name__}")
    return [parse_event(obj, i) for i, obj in enumerate(objs)]
