"""Consumer: queued Brevo orders → `POST /orders/status/batch` (up to 1,000 a request), or `POST /orders/status`
one by one when few.

The shared machinery (batches, splitting, budgets, settling, stop) is `BrevoSink`; this module says what is
particular to orders:

* **historical.** A backfill sends `historical: true` (Brevo then triggers no automation workflows), `run` sends
  `false`. The single endpoint cannot carry `historical`, so a backfill never uses it: a lone order goes as a
  batch of one. In `run`, fewer than `singles_below` (20) orders go one by one through `/orders/status` (5 a
  second), since the batch endpoint's budget is hourly (100 requests an hour on the General plan).
* **Idempotent.** An order's `id` is its dedupe key: an order sent again (after a kill -9, or by the count check
  below) updates the order Brevo has, never adds a second one.
* **How the daemon knows a batch landed.** `/orders/status/batch` answers only `202 {batchId, count}` and
  reports the outcome per order later, to a `notifyUrl` that a daemon behind a firewall cannot receive. The
  daemon therefore takes `count` as Brevo's receipt: `count` equal to the orders sent → delivered. A smaller
  `count`, or none, logs `brevo.orders.count_mismatch` (batchId, sent, count) and sends that request's orders
  once more as a new batch (harmless: ids make it an update); if that answer is short too, they are counted
  delivered with the warning `brevo.orders.unconfirmed` (nothing more can be learnt without a notifyUrl). Orders
  Brevo refuses at once (400 naming `orders[3]`) are dead-lettered with its message and the rest sent again.
  (`GET /orders` is not used for confirmation: the batch is processed asynchronously, so an order missing from
  it a moment after the 202 proves nothing, and reading 1,000 orders back would cost more requests than the
  hourly batch budget allows.)
* **eCommerce not activated.** Brevo refuses orders with `403 permission_denied` naming eCommerce. The sink
  then calls `POST /ecommerce/activate` once (`brevo.ecommerce.activated`) and sends again. If activation fails,
  or orders are still refused after it, `brevo.orders.ecommerce_inactive` is logged once with what to do, and
  that request's orders and every later one are dead-lettered ("eCommerce is not activated in Brevo") without
  being sent: nothing is lost (`dlq replay`), the daemon keeps running, and a reload tries again. A 403
  `permission_denied` that is not about eCommerce is a key problem and is retried like any 401/403.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from typing import Any

from ..logs import get_logger
from ..pipeline.items import Item
from .brevo_client import BrevoResponse, BudgetPaused, Outcome, validate_response
from .brevo_sink import MAX_PAUSE, BrevoSink, _Batch

__all__ = ["ECOMMERCE_HINT", "ECOMMERCE_INACTIVE", "BrevoOrdersSink"]

log = get_logger("brevo_orders")

SINK = "brevo_orders"
ECOMMERCE_INACTIVE = "eCommerce is not activated in Brevo"
ECOMMERCE_HINT = (
    "activate eCommerce in Brevo (Settings > eCommerce) or POST /v3/ecommerce/activate, reload the daemon "
    "(systemctl reload amplitude-brevo), then `amplitude-brevo dlq replay --sink brevo_orders`; "
    "or set revenue.orders: false"
)
# 403 permission_denied comes back to the sink (the client would retry it as a key problem) so that the sink
# can tell an inactive eCommerce app from a key without the permission.
_VERDICTS: Mapping[int, frozenset[str]] = {403: frozenset({"permission_denied"})}
# What `POST /ecommerce/activate` may answer when it will not activate (reference §5: 401 and 404).
_ACTIVATE_VERDICTS = {
    401: frozenset({"unauthorized"}),
    403: frozenset({"permission_denied", "unauthorized"}),
    404: frozenset({"document_not_found", "not_found"}),
}
_ORDER_INDEX = re.compile(r"orders\[(\d+)\]")
_ORDER_PREFIX = re.compile(r"^orders\[\d+\]:\s*")
_NOT_SENT = BrevoResponse(0, {}, None)  # _post_batch's answer once eCommerce is known to be inactive


def _about_ecommerce(response: BrevoResponse) -> bool:
    return "ecommerce" in response.message.lower()


class BrevoOrdersSink(BrevoSink):
    name = SINK
    noun = "order"
    batch_path = "/orders/status/batch"
    batch_budget = "brevo_orders_batch"
    max_batch_size = 1000  # reference §5
    item_verdicts = _VERDICTS

    def __init__(self, *, historical: bool, batch_size: int = 1000, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.historical = historical
        if historical:
            self.single_budget = None  # `/orders/status` cannot say historical: it would trigger automations
        else:
            self.single_budget = "brevo_orders"
            self.singles_below = 20
        self._historical_json = b"true" if historical else b"false"
        self._activation = asyncio.Lock()
        self._activation_tried = False
        self._generation = 0  # successful activations: a 403 to a request sent before one is sent again
        self.inactive: str | None = None  # why eCommerce is considered inactive; orders are then dead-lettered

    def reload(self, cfg: Any) -> None:
        brevo = cfg.connectors.brevo
        self.client.reconfigure(base_url=brevo.api_url, api_key=brevo.api_key)
        if self.inactive is not None:
            log.info("brevo.orders.ecommerce_retry", sink=self.name, reason="reloaded: sending orders again")
        self.inactive = None  # the operator may have activated eCommerce: try again (and activate once more)
        self._activation_tried = False

    # -- endpoints --
    def batch_body(self, bodies: list[bytes]) -> bytes:
        # The orders' bodies are JSON already: join them, no decoding or re-encoding; in one join (each `+`
        # would copy the whole body again, ~0.5 MiB for 1,000 orders).
        return b"".join((b'{"orders":[', b",".join(bodies), b'],"historical":', self._historical_json, b"}"))

    def single_request(self, item: Item) -> tuple[str, str, bytes]:
        return "POST", "/orders/status", item.body

    def refused_items(self, response: BrevoResponse, size: int) -> dict[int, str]:
        """A 400 whose message names `orders[3]` → {3: message} (the `orders[3]: ` prefix dropped)."""
        if response.status != 400 or not isinstance(response.body, dict):
            return {}
        message = str(response.body.get("message") or "")
        text = _ORDER_PREFIX.sub("", message) or message
        return {i: text for m in _ORDER_INDEX.finditer(message) if 0 <= (i := int(m.group(1))) < size}

    # -- the count check and eCommerce, around the shared machinery --
    async def _call(self, method: str, path: str, payload: bytes | None, *, budget: str,
                    verdicts: Mapping[int, frozenset[str]], max_pause: float | None = None) -> BrevoResponse:
        """`client.call`, with the answers named in `verdicts` (403 `permission_denied`) returned, not retried."""
        return await self.client.call(method, path, payload, budget=budget, item_verdicts=verdicts,
                                      context={"sink": self.name}, max_pause=max_pause)

    async def _post_batch(self, batch: _Batch, chunk: list[int]) -> BrevoResponse | None:
        """BrevoSink._post_batch, with eCommerce's 403 answered (activate, or dead-letter) before the answer
        is taken as a verdict; `_NOT_SENT` once eCommerce is known to be inactive."""
        body = self.batch_body([batch.items[i].body for i in chunk])
        max_pause = MAX_PAUSE if self.single_budget is not None else None
        try:
            while True:
                if self.inactive is not None:
                    return _NOT_SENT
                generation = self._generation
                self.stats.batch_requests += 1
                batch.requests += 1
                response = await self._call("POST", self.batch_path, body, budget=self.batch_budget,
                                            verdicts=self.item_verdicts, max_pause=max_pause)
                if response.status != 403:
                    return response
                if not _about_ecommerce(response):
                    # A key without the permission: retried like any 401/403 until the key works.
                    return await self.client.call("POST", self.batch_path, body, budget=self.batch_budget,
                                                  context={"sink": self.name, "count": len(chunk)},
                                                  max_pause=max_pause)
                await self._ecommerce_refused(generation, response)  # activated (send again) or inactive
        except BudgetPaused as exc:
            # The batch bucket is spent for a long while (100 requests an hour): single requests meanwhile.
            log.info("brevo.batch.paused", sink=self.name, path=self.batch_path, seconds=round(exc.seconds))
            return None

    async def _answered(self, batch: _Batch, chunk: list[int], response: BrevoResponse | None) -> list[int]:
        if response is not None and response.status == 202:
            short = self._short(response, len(chunk))
            if short is not None:
                log.warning("brevo.orders.count_mismatch", sink=self.name, sent=len(chunk), **short,
                            action="sending these orders again once (ids make it an update)")
                response = await self._post_batch(batch, chunk)
                if response is not None and response.status == 202:
                    short = self._short(response, len(chunk))
                    if short is not None:
                        log.warning("brevo.orders.unconfirmed", sink=self.name, sent=len(chunk), **short,
                                    reason="Brevo reports what it did with them only to a notifyUrl; counted "
                                           "delivered")
        if response is _NOT_SENT:
            self._settle(batch, chunk, dict.fromkeys(chunk, ECOMMERCE_INACTIVE))
            return []
        return await super()._answered(batch, chunk, response)

    @staticmethod
    def _short(response: BrevoResponse, sent: int) -> dict[str, Any] | None:
        """{batchId, count} when a 202 counts fewer orders than were sent (or none), else None."""
        body = response.body if isinstance(response.body, dict) else {}
        count = body.get("count")
        if type(count) is int and count >= sent:
            return None
        return {"batchId": body.get("batchId", body.get("batch_id")), "count": count}

    async def _send_single(self, batch: _Batch, index: int) -> None:
        # BrevoSink._send_single, with the eCommerce 403 handled before the answer is taken as a verdict.
        method, path, body = self.single_request(batch.items[index])
        while True:
            if self.inactive is not None:
                self._settle(batch, [index], {index: ECOMMERCE_INACTIVE})
                return
            generation = self._generation
            async with self._single_slots:
                response = await self._call(method, path, body, budget=self.single_budget,  # type: ignore[arg-type]
                                            verdicts=self.item_verdicts)
                self.stats.single_requests += 1
                batch.requests += 1
                if response.status == 403 and not _about_ecommerce(response):
                    # A key problem: retried like any 401/403 (the call returns once the key works).
                    response = await self.client.call(method, path, body, budget=self.single_budget,
                                                      context={"sink": self.name})
            if response.status == 403:
                await self._ecommerce_refused(generation, response)
                continue
            refused = {}
            if validate_response(response.status) is not Outcome.OK:
                refused[index] = self._reason(f"HTTP {response.status} {response.message}")
            self._settle(batch, [index], refused)
            return

    async def _ecommerce_refused(self, generation: int, response: BrevoResponse) -> None:
        """Brevo refused a request sent at activation `generation` because eCommerce is not active: activate
        it (once), or mark the sink inactive. Either way the caller looks at `inactive` and sends again."""
        async with self._activation:
            if self.inactive is not None or self._generation > generation:
                return  # decided while this request was on its way
            if not self._activation_tried:
                failure = await self._activate()
                self._activation_tried = True
                if failure is None:
                    self._generation += 1
                    return
            else:
                failure = f"orders still refused after activating eCommerce: {response.message}"
            self.inactive = failure
            log.error("brevo.orders.ecommerce_inactive", sink=self.name, reason=failure,
                      brevo=response.message[:300], hint=ECOMMERCE_HINT,
                      effect="orders are dead-lettered without being sent until a reload")

    async def _activate(self) -> str | None:
        """`POST /ecommerce/activate`; None when it worked, else why not."""
        try:
            response = await self._call("POST", "/ecommerce/activate", None, budget="brevo_other",
                                        verdicts=_ACTIVATE_VERDICTS)
        except RuntimeError as exc:  # a Backoff with a limit gave up
            return f"POST /ecommerce/activate failed: {exc}"
        if validate_response(response.status) is Outcome.OK:
            log.info("brevo.ecommerce.activated", sink=self.name, status=response.status)
            return None
        return f"POST /ecommerce/activate answered HTTP {response.status} {response.message}"
