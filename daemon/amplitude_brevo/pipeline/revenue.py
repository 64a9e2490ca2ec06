"""Revenue events → Brevo orders (SPEC §5 "Revenue"); pure functions, no I/O.

An event is revenue when it carries an amount in one of the three spellings in use:

* export rows: `$revenue`, `$price`, `$quantity`, `$productId`, `$revenueType` in `event_properties`;
* HTTP V2 events: top-level `revenue`, `price`, `quantity`, `productId`, `revenueType`;
* hand-made events (the seed's example): `revenue`, `price`, `quantity`, `product_id`/`productId` in
  `event_properties`.

Amount = revenue when given, else price × quantity (quantity defaults to 1); a negative amount is a refund.
A value that is present but not a number (nor a numeric string) makes the event no revenue at all: an order
with a guessed amount would be worse than none.

`remap_order` is the fan-out consumer of the `brevo_orders` sink (`Consumer` in remap.py). It runs for every
exported row, so it first looks at the raw `event_properties` bytes: a row in which neither `revenue` nor
`price` occurs is not revenue and is passed over without being decoded.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import msgspec
import orjson

from ..jsonbytes import exact
from .remap import (
    ORDERS_NAMESPACE,
    ORDERS_SINK,
    Rejected,
    Skipped,
    email_id,
    row_subject,
    row_summary,
)
from .rows import ExportRow

__all__ = [
    "ORDERS_NAMESPACE", "ORDERS_SINK", "Order", "Revenue", "order_body", "remap_order", "revenue_of",
    "revenue_of_event",
]

_decode_dict = msgspec.json.Decoder(dict[str, Any]).decode

# event_properties keys of each field, in the order they are looked for.
_REVENUE = ("$revenue", "revenue")
_PRICE = ("$price", "price")
_QUANTITY = ("$quantity", "quantity")
_PRODUCT = ("$productId", "productId", "product_id")
_TYPE = ("$revenueType", "revenueType", "revenue_type")
# The HTTP V2 API's top-level fields.
_TOP_LEVEL = ("revenue", "price", "quantity", "productId", "revenueType")

_DIGITS = 6  # computed amounts and unit prices are rounded to this many decimals (no 0.30000000000000004)
_NOT_A_NUMBER = object()


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.8 µs more to build, per revenue row
class Revenue:
    """What a revenue event says: its `amount` (negative: a refund), unit `price` when given, `quantity`
    (1 unless given; may be fractional), and the product and revenue type when given."""

    amount: float
    price: float | None = None
    quantity: float = 1
    product_id: str | None = None
    revenue_type: str | None = None

    @property
    def refund(self) -> bool:
        return self.amount < 0

    @property
    def unit_price(self) -> float:
        """The price of one unit: as given, else amount ÷ quantity (the amount when the quantity is 0)."""
        if self.price is not None:
            return self.price
        if not self.quantity:
            return self.amount
        return round(self.amount / self.quantity, _DIGITS)


def _number(value: Any) -> Any:
    """A finite float from a JSON number or a numeric string; None when absent; _NOT_A_NUMBER otherwise."""
    if value is None:
        return None
    kind = type(value)
    if kind is float or kind is int:
        number = float(value)
    elif kind is str:
        text = value.strip()
        if not text:
            return None
        try:
            number = float(text)
        except ValueError:
            return _NOT_A_NUMBER
    else:  # bool, list, object
        return _NOT_A_NUMBER
    return number if math.isfinite(number) else _NOT_A_NUMBER


def _text(value: Any) -> str | None:
    if type(value) is str:
        return value or None
    if type(value) is int or type(value) is float:  # a numeric product id
        return str(int(value)) if type(value) is float and value.is_integer() else str(value)
    return None


def _first(props: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = props.get(key)
        if value is not None:
            return value
    return None


def _revenue(revenue: Any, price: Any, quantity: Any, product: Any, revenue_type: Any) -> Revenue | None:
    if revenue is not None:
        revenue = _number(revenue)
        if revenue is _NOT_A_NUMBER:
            return None
    if price is not None:
        price = _number(price)
        if price is _NOT_A_NUMBER:
            return None
    if revenue is None and price is None:
        return None
    if quantity is None:
        quantity = 1
    elif type(quantity) is not int:
        quantity = _number(quantity)
        if quantity is _NOT_A_NUMBER:
            return None
        if quantity is None:
            quantity = 1
        elif quantity.is_integer():
            quantity = int(quantity)
    if revenue is not None:
        amount = revenue
    else:
        amount = round(price * quantity, _DIGITS)
    return Revenue(amount, price, quantity, _text(product), _text(revenue_type))


def revenue_of(props: Mapping[str, Any]) -> Revenue | None:
    """The revenue in `event_properties`, in either spelling, or None.

    Amplitude's own keys (`$revenue`, `$price` × `$quantity`, what its SDKs' revenue helpers and the export
    write) are revenue whenever present. The hand-made spelling (`revenue`, `price`, `quantity`,
    `product_id`, as in the seed's example) counts only with an explicit `revenue`: a `price` and a
    `quantity` alone are what any product event carries ("Add to Cart"), and would turn carts into orders.
    """
    if props.get("$revenue") is None and props.get("$price") is None and props.get("revenue") is None:
        return None
    return _revenue(
        _first(props, _REVENUE), _first(props, _PRICE), _first(props, _QUANTITY), _first(props, _PRODUCT),
        _first(props, _TYPE),
    )


def revenue_of_event(event: Mapping[str, Any]) -> Revenue | None:
    """The revenue of an HTTP V2 event: its top-level fields first, then its `event_properties`."""
    props = event.get("event_properties")
    if not isinstance(props, Mapping):
        props = {}
    fields = [
        top if (top := event.get(name)) is not None else _first(props, keys)
        for name, keys in zip(_TOP_LEVEL, (_REVENUE, _PRICE, _QUANTITY, _PRODUCT, _TYPE), strict=True)
    ]
    return _revenue(*fields)


def order_body(
    key: str, ext_id: Any, email: str | None, event_time_iso: str, revenue: Revenue, event_type: str | None,
) -> bytes:
    """The Brevo order (reference §5) as compact JSON, without `historical` (that is per batch request).

    `id` is the dedupe key, so a re-sent order updates the one Brevo has; `createdAt`/`updatedAt` are the
    event time (`YYYY-MM-DDTHH:MM:SS.mmmZ`); the one product is the event's product, else the event type.
    """
    quantity = revenue.quantity
    product: dict[str, Any] = {
        "productId": revenue.product_id or event_type or "revenue",
        "price": float(revenue.unit_price),
    }
    if float(quantity).is_integer():
        product["quantity"] = int(quantity)
    else:
        product["quantityFloat"] = float(quantity)
    identifiers = {"ext_id": str(ext_id)}
    if email is not None:
        identifiers["email_id"] = email
    data = orjson.dumps({
        "id": key,
        "createdAt": event_time_iso,
        "updatedAt": event_time_iso,
        "status": "refunded" if revenue.refund else "completed",
        "amount": float(revenue.amount),
        "products": [product],
        "identifiers": identifiers,
    })
    return exact(data)  # bodies wait in queues


class Order:
    """A Brevo order ready for `/orders/status` or `/orders/status/batch`, with the key that deduplicates it.

    `body` is the order as compact JSON (what is sent and dead-lettered); `payload` decodes it."""

    __slots__ = ("dedupe_key", "body")

    dedupe_key: str
    body: bytes

    def __init__(self, dedupe_key: str, body: bytes) -> None:
        self.dedupe_key = dedupe_key
        self.body = body

    @property
    def payload(self) -> dict[str, Any]:
        return orjson.loads(self.body)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Order):
            return NotImplemented
        return self.dedupe_key == other.dedupe_key and self.body == other.body

    def __hash__(self) -> int:
        return hash((self.dedupe_key, self.body))

    def __repr__(self) -> str:
        return f"Order(dedupe_key={self.dedupe_key!r}, payload={self.body.decode('utf-8', 'replace')})"


_last: list[Any] = [None, None]  # (row, row_revenue's answer): the consumers of one row share one decode


def row_revenue(row: ExportRow) -> Revenue | Rejected | None:
    """The revenue of an export row (None: not revenue; Rejected: its properties cannot be decoded). The
    orders consumer and the profile collector both ask, about the same row in turn: decoded once."""
    if _last[0] is row:
        return _last[1]
    raw = bytes(row.event_properties)
    answer: Revenue | Rejected | None = None
    if b"revenue" in raw or b"price" in raw:  # else the common case: no decoding at all
        try:
            answer = revenue_of(_decode_dict(raw))
        except msgspec.ValidationError:
            pass  # `null`, or not an object
        except (msgspec.DecodeError, UnicodeDecodeError) as exc:
            answer = Rejected(f"event_properties cannot be decoded: {exc}", row_summary(row))
    _last[0], _last[1] = row, answer
    return answer


def remap_order(row: ExportRow, rules: Any) -> Order | Skipped | Rejected | None:
    """One export row → a Brevo order, or None when the row is not revenue (nothing counted); a row about
    nobody is skipped like its event would be, one without a key or a valid time is rejected."""
    revenue = row_revenue(row)
    if revenue is None or type(revenue) is Rejected:
        return revenue
    subject = row_subject(row, rules, "revenue row")
    if type(subject) is not tuple:
        return subject
    key, ext_id, user, created = subject
    email = email_id(getattr(user, rules._email_attr))
    return Order(key, order_body(key, ext_id, email, created, revenue, row.event_type))
