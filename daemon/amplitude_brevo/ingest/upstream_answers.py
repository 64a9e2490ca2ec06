"""What an Amplitude ingest answer means for the events of the request that got it (reference §2, §3), pure.

Forwarding (`ingest/forwarder.py`) sends spooled events to Amplitude's `/batch` and obeys the answer:

* 200: every event delivered.
* 400 naming events (`events_with_missing_fields`, `events_with_invalid_fields`,
  `events_with_invalid_id_lengths`, `silenced_events`): those are dead-lettered with the reason, the rest
  resent (Amplitude ingests nothing of a request it refuses). A 400 naming none, or a `missing_field`, is
  about the request itself: every event is dead-lettered with it. `Invalid API key`: nothing is dropped,
  forwarding pauses (`connectors.amplitude.api_key` is wrong; the operator must fix it).
* 413: the request is split in two; one event alone too large is dead-lettered.
* 429: the events of `throttled_events` whose user or device is over its daily quota are dead-lettered; the
  other throttled ones wait, with every later event of the same user or device (`throttled_users`,
  `throttled_devices`); the rest is resent at once. A 429 naming nobody is a project-wide throttle: back off.
* 5xx, 408, timeouts, and anything unknown: back off and send the same events again (they carry their
  `insert_id`, so Amplitude keeps one of each).
* 403 (Amplitude's firewall): dead-lettered with the reason, as the SDKs drop them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")

INDEX_FIELDS = ("events_with_missing_fields", "events_with_invalid_fields", "events_with_invalid_id_lengths")


@dataclass(slots=True)
class Verdict(Generic[T]):
    delivered: list[T] = field(default_factory=list)
    dead: list[tuple[T, str]] = field(default_factory=list)  # (event, reason)
    resend: list[T] = field(default_factory=list)  # at once
    throttled: list[T] = field(default_factory=list)  # after the throttle pause
    paused_users: list[str] = field(default_factory=list)
    paused_devices: list[str] = field(default_factory=list)
    split: list[list[T]] = field(default_factory=list)  # 413: sent again in these parts
    backoff: bool = False  # send them all again after a backoff
    fatal: str | None = None  # forwarding cannot go on until the config changes (kept, not dropped)


def judge(batch: Sequence[T], ids: Sequence[tuple[Any, Any]], status: int, body: Any) -> Verdict[T]:
    """The verdict on `batch` (the events as sent, in order; `ids[i]` is event i's `(user_id, device_id)`) from
    Amplitude's answer: the HTTP status and the decoded JSON body (None when it is not JSON). Amplitude's SDKs
    go by the body's `code`, falling back to the status."""
    verdict: Verdict[T] = Verdict()
    answer = body if isinstance(body, dict) else {}
    code = answer.get("code", status)
    if not isinstance(code, int):
        code = status
    if code == 200:
        verdict.delivered = list(batch)
    elif code == 400:
        _refused(batch, answer, verdict)
    elif code == 413:
        if len(batch) == 1:
            verdict.dead.append((batch[0], "Amplitude answered 413 (payload too large) to this event alone"))
        else:
            half = len(batch) // 2
            verdict.split = [list(batch[:half]), list(batch[half:])]
    elif code == 429:
        _throttled(batch, ids, answer, verdict)
    elif code == 403:
        reason = f"Amplitude refused the request: 403 {_error(answer)}"
        verdict.dead = [(event, reason) for event in batch]
    else:
        verdict.backoff = True
    return verdict


def _error(answer: dict[str, Any]) -> str:
    return str(answer.get("error") or "")[:300]


def _refused(batch: Sequence[T], answer: dict[str, Any], verdict: Verdict[T]) -> None:
    error = _error(answer)
    if error.startswith("Invalid API key"):
        verdict.fatal = ("Amplitude refuses connectors.amplitude.api_key (Invalid API key): set the project's "
                         "API key and reload; spooled events are kept")
        return
    reasons: dict[int, list[str]] = {}
    for name in INDEX_FIELDS:
        by_field = answer.get(name)
        if isinstance(by_field, dict):
            for field_name, indexes in by_field.items():
                for index in _indexes(indexes, len(batch)):
                    reasons.setdefault(index, []).append(f"{name.removeprefix('events_with_')}: {field_name}")
    for index in _indexes(answer.get("silenced_events"), len(batch)):
        reasons.setdefault(index, []).append("silenced device")
    if "missing_field" in answer or not reasons:
        reason = f"Amplitude refused the request (400 {error}" + (
            f", missing_field {answer['missing_field']}" if "missing_field" in answer else "") + ")"
        verdict.dead = [(event, reason) for event in batch]
        return
    for index, event in enumerate(batch):
        if index in reasons:
            verdict.dead.append((event, f"Amplitude refused the event (400 {error}; {'; '.join(reasons[index])})"))
        else:
            verdict.resend.append(event)


def _throttled(batch: Sequence[T], ids: Sequence[tuple[Any, Any]], answer: dict[str, Any],
               verdict: Verdict[T]) -> None:
    users = answer.get("throttled_users") if isinstance(answer.get("throttled_users"), dict) else {}
    devices = answer.get("throttled_devices") if isinstance(answer.get("throttled_devices"), dict) else {}
    quota_users = answer.get("exceeded_daily_quota_users")
    quota_devices = answer.get("exceeded_daily_quota_devices")
    quota_users = set(quota_users) if isinstance(quota_users, dict) else set()
    quota_devices = set(quota_devices) if isinstance(quota_devices, dict) else set()
    throttled = set(_indexes(answer.get("throttled_events"), len(batch)))
    if not throttled and not users and not devices:
        verdict.backoff = True  # a project-wide throttle
        return
    verdict.paused_users = [str(u) for u in users]
    verdict.paused_devices = [str(d) for d in devices]
    for index, event in enumerate(batch):
        user, device = ids[index]
        if index in throttled:
            if user in quota_users or device in quota_devices:
                who = f"user {user}" if user in quota_users else f"device {device}"
                verdict.dead.append((event, f"Amplitude: {who} exceeded its daily quota (429)"))
            else:
                verdict.throttled.append(event)
        elif user in users or device in devices:
            verdict.throttled.append(event)  # named as throttled though its index was not listed
        else:
            verdict.resend.append(event)


def _indexes(value: Any, size: int) -> list[int]:
    if not isinstance(value, list):
        return []
    return [i for i in value if isinstance(i, int) and not isinstance(i, bool) and 0 <= i < size]
