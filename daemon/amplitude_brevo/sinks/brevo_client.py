"""Brevo API client: api-key auth, one rate budget per bucket, and `validate_response()` (retry vs fatal)."""

from __future__ import annotations

import asyncio
import enum
import re
import time
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from ..health import Health
from ..logs import get_logger
from ..metrics import Metrics
from ..retry import Backoff
from ..secrets import Secret
from .budgets import BudgetPaused, Budgets, Stopping, bucket_for

__all__ = ["BrevoClient", "BrevoResponse", "BudgetPaused", "Outcome", "Stopping", "validate_response"]

log = get_logger("brevo_client")


class Outcome(enum.Enum):
    OK = "ok"
    RETRY = "retry"  # 429, 425, 408, 5xx, connection errors, timeouts; 401/403 too (a key fix is a reload away)
    UNAVAILABLE = "unavailable"  # 404/405/501: no such endpoint here (wrong host or path, a proxy): an outage
    FATAL = "fatal"  # other 4xx: the request itself is wrong; its items go to the dead-letter queue


# Statuses that say "this endpoint is not here" rather than "this item is wrong" — unless a caller says
# its endpoint answers 404 for an item (e.g. a contact that does not exist).
UNAVAILABLE_STATUSES = frozenset({404, 405, 501})
URL_HINT = "check connectors.brevo.api_url (https://api.brevo.com/v3) and any proxy in between"


@dataclass
class BrevoResponse:
    status: int
    headers: dict[str, str]
    body: Any  # parsed JSON, raw text, or None

    @property
    def code(self) -> str | None:
        """Brevo's error `code` (reference §0.1), when the body is Brevo's JSON error."""
        code = self.body.get("code") if isinstance(self.body, dict) else None
        return code if isinstance(code, str) else None

    @property
    def message(self) -> str:
        if isinstance(self.body, dict):
            code, message = self.body.get("code"), self.body.get("message")
            return f"{code}: {message}" if code else str(message or self.body)
        return str(self.body or f"HTTP {self.status}")


_IDENTIFIER_SEGMENT = re.compile(r"^/(contacts|processes|contacts/lists)/(?!(?:batch|import|attributes|lists|folders)(?:/|$))[^/]+")


def path_template(path: str) -> str:
    """`path` without its query and the identifier in it (`/contacts/{identifier}`): what names a readiness
    check, so that one check stands for an endpoint whatever contact or process it was asked about."""
    path = path.split("?", 1)[0]
    return _IDENTIFIER_SEGMENT.sub(lambda m: f"/{m.group(1)}/{{id}}", path)


def validate_response(status: int, item_statuses: Collection[int] = ()) -> Outcome:
    """The one place that decides what an HTTP status means for delivery.

    `item_statuses` are statuses the endpoint uses as a verdict on an item (contacts: 404 "No contact
    found"), which are then FATAL rather than UNAVAILABLE.
    """
    if 200 <= status < 300:
        return Outcome.OK
    if status in item_statuses:
        return Outcome.FATAL  # the caller's endpoint says so about an item (a 404 contact, a 403 eCommerce off)
    if status in UNAVAILABLE_STATUSES:
        return Outcome.UNAVAILABLE
    if status in (401, 403, 408, 425, 429) or status >= 500:
        return Outcome.RETRY
    return Outcome.FATAL


class BrevoClient:
    """Sends requests under the budget of their bucket and retries what is retriable, for ever by default.

    The API key is read from the live config on each request, so a SIGHUP key rotation applies at once.
    `stop` (the daemon's stopping event) makes requests that wait — for a budget token, a spent rate
    window or a retry — give up with `Stopping`; a request already sent is never abandoned. With `health`,
    a path answering as if it did not exist (404/405/501) fails the readiness check `brevo <path>` until
    it answers again: that is an outage (a wrong `api_url`, a proxy), retried like one, and no verdict on
    the items, which nothing dead-letters.

    Brevo answering any request ends the backoff of every request waiting to retry an error or a dropped
    connection: after an outage they go again within `backoff.base` seconds, not up to `backoff.cap` seconds
    later, and start their backoff over. A 429's reset still holds: the budget of its bucket waits it out.
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: Secret,
        budgets: Budgets,
        metrics: Metrics | None = None,
        backoff: Backoff | None = None,
        stop: asyncio.Event | None = None,
        health: Health | None = None,
    ) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key
        self.budgets = budgets
        self.metrics = metrics
        self.backoff = backoff or Backoff()
        self.stop = stop
        self.health = health
        self.rate_limited_total = 0
        self._answered = asyncio.Event()  # set (and replaced) each time Brevo answers a request

    def reconfigure(self, *, base_url: str, api_key: Secret) -> None:
        self.base_url = base_url.rstrip("/")
        self._api_key = api_key

    def __repr__(self) -> str:
        return f"BrevoClient(base_url={self.base_url!r}, api_key='***')"

    async def send_once(
        self, method: str, path: str, payload: Any = None, *, budget: str | None = None,
        max_pause: float | None = None,
    ) -> BrevoResponse:
        """One attempt: wait for the budget, send, read the rate-limit headers. Transport errors raise.

        `payload` is encoded as JSON, unless it is `bytes`: a JSON body encoded by the caller, sent as is.
        Raises `Stopping` if the daemon stops before the budget lets the request go, `BudgetPaused` if that
        would take longer than `max_pause`.
        """
        bucket = self.budgets[budget] if budget else self.budgets.for_request(method, path)
        await bucket.acquire(self.stop, max_pause)
        headers = {"api-key": self._api_key.reveal(), "accept": "application/json"}
        data = None
        if payload is not None:
            headers["content-type"] = "application/json"
            data = payload if isinstance(payload, bytes | bytearray) else orjson.dumps(payload)
        try:
            async with self.session.request(method, self.base_url + path, data=data, headers=headers) as resp:
                raw = await resp.read()
                response_headers = {k.lower(): v for k, v in resp.headers.items()}
                status = resp.status
        except BaseException:
            bucket.release()  # no answer: this request no longer counts as in flight
            raise
        key = headers["api-key"].encode()
        if key and key in raw:
            # A proxy or error page echoing our request headers: the body goes to logs and dead letters.
            raw = raw.replace(key, b"***")
        if self.metrics:
            self.metrics.http_responses.labels(api="brevo", status=str(status)).inc()
        delay = bucket.observe(status, response_headers)
        if status == 429:
            self.rate_limited_total += 1
            log.warning("brevo.rate_limited", budget=bucket.name, path=path, reset_seconds=delay)
        body: Any = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                body = raw.decode("utf-8", "replace")[:500]
        return BrevoResponse(status, response_headers, body)

    async def call(
        self, method: str, path: str, payload: Any = None, *, budget: str | None = None,
        context: dict[str, Any] | None = None, max_pause: float | None = None,
        item_verdicts: Mapping[int, Collection[str]] | None = None,
    ) -> BrevoResponse:
        """Send until the answer is OK or FATAL; retriable failures back off with full jitter.

        `item_verdicts` names statuses that, with one of the given Brevo error codes in the body, are a
        verdict on items rather than an outage — contacts: `{404: {"document_not_found"}}` ("No contact
        found for indexes 3,4"), while a proxy's 404 page stays an outage. With `max_pause`, a budget that would make the request wait
        longer than that (a spent hourly window, a 429 with a long reset) raises `BudgetPaused` instead of
        waiting (the events sink then uses `/events`); a shorter wait is waited out and the same request sent
        again. Raises `Stopping` if the daemon stops while waiting to
        send or to retry, so the caller leaves its items unacknowledged (they are read again after restart,
        and the dedupe record filters what did arrive).
        """
        attempt = 0  # counts every try, for `backoff.exhausted` and the log
        level = 0  # how far the backoff has grown: back to the start when Brevo answers again
        bucket_name = budget or bucket_for(method, path)
        check = f"brevo {path_template(path)}"
        while True:
            attempt += 1
            level += 1
            started = time.monotonic()
            floor = 0.0
            try:
                response = await self.send_once(method, path, payload, budget=budget, max_pause=max_pause)
            except (aiohttp.ClientError, TimeoutError, ConnectionError) as exc:
                outcome, reason = Outcome.RETRY, f"{type(exc).__name__}: {exc}"
                if self.metrics:
                    self.metrics.http_responses.labels(api="brevo", status="error").inc()
            else:
                verdict = item_verdicts is not None and response.code in item_verdicts.get(response.status, ())
                outcome = validate_response(response.status, (response.status,) if verdict else ())
                reason = f"HTTP {response.status} {response.message}"
                if outcome in (Outcome.OK, Outcome.FATAL):
                    if self.health is not None:
                        self.health.ok(check)  # the endpoint answered as one
                    self._answered.set()  # wakes the requests backing off (`_pause`)
                    self._answered = asyncio.Event()
                    return response
                if outcome is Outcome.UNAVAILABLE and self.health is not None:
                    self.health.fail(check, reason[:300], hint=URL_HINT)
                if response.status == 429:
                    floor = self.budgets[bucket_name].seconds_until_resume()
                    if max_pause is not None and floor > max_pause:
                        raise BudgetPaused(bucket_name, floor)
                if response.status in (401, 403):
                    log.error("brevo.auth_failed", status=response.status, path=path,
                              hint="check connectors.brevo.api_key; a new key applies on `systemctl reload` when the "
                                   "service reads the key file itself, on `systemctl restart` with LoadCredential=")
            if self.backoff.exhausted(attempt):
                raise RuntimeError(f"giving up on {method} {path} after {attempt} attempts: {reason}")
            log.info("brevo.retry", path=path, attempt=attempt, reason=reason,
                     elapsed=round(time.monotonic() - started, 3), **(context or {}))
            if self.stop is not None and self.stop.is_set():
                raise Stopping(reason)
            if await self._pause(level, floor, reason):
                level = 0

    async def _pause(self, level: int, floor: float, reason: str) -> bool:
        """The backoff after `level` failed tries in a row, cut short when Brevo answers another request meanwhile;
        then a first-retry wait, so that the woken requests do not all go at once. True if cut short. (A 429's
        reset holds all the same: the budget lets nothing of its bucket go before it.)"""
        answered, waits = self._answered, [asyncio.ensure_future(self._answered.wait())]
        if self.stop is not None:
            waits.append(asyncio.ensure_future(self.stop.wait()))
        try:
            await asyncio.wait(waits, timeout=self.backoff.delay(level, floor), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
        if self.stop is not None and self.stop.is_set():
            raise Stopping(reason)
        if not answered.is_set():
            return False
        if not await self.backoff.sleep(1, stop=self.stop):
            raise Stopping(reason)
        return True
