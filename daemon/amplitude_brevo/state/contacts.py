"""Contacts and revenue totals: the profile of every user, folded from snapshots, and the writes still due.

`fold_contacts` is the profile folder's one transaction per batch (contacts/folder.py):

1. revenue facts go into the ledger `revenue` by dedupe key; a key inserted for the first time adds its
   amount to the user's `revenue_totals` (purchases counted in `orders`, refunds in `refunds`), so a
   re-read, a restart or a kill -9 never counts a purchase twice;
2. each user's snapshot is folded into their row: the newest row wins (event time, then upload time) for
   the property values and the email; first seen / last active are the extremes of everything read;
   then the user's *operations* (live events and identifies, `ingest/brevo_feed.py`) are applied in order
   to the values (`pipeline/user_ops.py`); an operation's key is recorded in the dedupe table in this
   transaction (`ops:<key>`), so an operation re-read from the spool is never applied twice;
3. the row's attributes are converted for Brevo (`attributes_of`, given by the folder) and compared with
   what is stored: unchanged → nothing; changed (or a new user, or a new email) → stored with the next
   `seq`. A row whose seq is above the `contacts.written` checkpoint has a Brevo write pending: the
   contact outbox (contacts/outbox.py) reads those in seq order and the checkpoint moves once Brevo has
   answered for them. A row the snapshot changes in nothing at all (a re-read) is not written again:
   `updated_at` is the time of the row's last change.

Rows are read by key lists through one statement each (`json_each` over the keys, or `IN` lists padded to a
few fixed lengths): every distinct SQL text is a statement SQLite compiles and the connection caches, ~60 KiB
for an `IN` list of 500, and the lengths of a batch's lists vary from batch to batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from amplitude_brevo.jsonbytes import dumps_kept
from amplitude_brevo.pipeline.user_ops import InvalidOperations, apply_operations
from amplitude_brevo.state.base import JSON_EACH as _JSON_EACH  # a module global: tests switch it off
from amplitude_brevo.state.base import MAX_IN_PARAMS, StoreBase, chunks, json_array, marks, now_or, write_tx

CONTACTS_CHECKPOINT = "contacts.written"
OPERATIONS_NAMESPACE = "ops:"  # dedupe-table keys of applied profile operations (`ops:<spool id>-<index>`)

# (sources, derived {first_seen, last_active}, totals or None) → (Brevo attributes, dropped [(attribute, why)])
AttributesOf = Callable[[Mapping[str, Any], Mapping[str, Any], "Totals | None"], tuple[dict[str, Any], list[Any]]]


@dataclass(frozen=True, slots=True)
class Totals:
    ltv: float
    orders: int
    refunds: int


@dataclass(slots=True)
class FoldResult:
    new: int = 0  # users seen for the first time, now pending
    changed: int = 0  # known users whose attributes or email changed, now pending
    unchanged: int = 0  # snapshots that changed nothing Brevo would see
    revenue_counted: int = 0  # revenue facts counted for the first time
    revenue_repeated: int = 0  # facts whose key was counted before
    operations_applied: int = 0  # operations items applied for the first time
    operations_repeated: int = 0  # operations items whose key was applied before
    dropped: list[tuple[str, str, str]] = field(default_factory=list)  # (user, attribute, why) not convertible


@dataclass(frozen=True, slots=True)
class PendingContact:
    user_id: str
    seq: int
    email: str | None
    attributes_json: bytes  # the attributes as stored: JSON, keys sorted
    in_brevo: bool
    brevo_email: str | None
    brevo_id: int | None

    @property
    def attributes(self) -> dict[str, Any]:
        return orjson.loads(self.attributes_json)

    def body(self) -> bytes:
        """The contact item's body (what `sinks/brevo_contacts.py` reads), exact-size: it waits in the
        contacts queue. The attributes go in as stored, not decoded and encoded again."""
        return dumps_kept({
            "ext_id": self.user_id, "email": self.email, "attributes": orjson.Fragment(self.attributes_json),
            "in_brevo": self.in_brevo, "brevo_email": self.brevo_email, "brevo_id": self.brevo_id, "seq": self.seq,
        })


class ContactsState(StoreBase):
    _next_seq: int | None = None  # touched only on the writer thread

    async def fold_contacts(self, snapshots: Sequence[Mapping[str, Any]], facts: Sequence[Mapping[str, Any]],
                            attributes_of: AttributesOf, *, operations: Sequence[Mapping[str, Any]] = (),
                            now: float | None = None) -> FoldResult:
        """Fold one batch of snapshots (at most one per user), revenue facts and operations (in the order
        they happened), in one transaction."""
        return await self._run(self._fold, list(snapshots), list(facts), attributes_of, list(operations),
                               now_or(now))

    async def pending_contacts(self, after_seq: int, limit: int = 1000) -> list[PendingContact]:
        """Rows with a write pending past `after_seq`, in seq order. On the lookup connection: the outbox's
        reads do not wait behind the folder's transactions on the writer thread (they see what committed)."""
        return await self._run_lookup(_pending, after_seq, limit)

    async def pending_contact(self, user_id: str) -> PendingContact | None:
        """One user's row as the outbox would send it (whether pending or not); on the lookup connection."""
        return await self._run_lookup(_by_user, user_id)

    async def contacts_identified(self, rows: Iterable[tuple[str, str | None, int | None]]) -> None:
        """Brevo holds these contacts now: (user, the email Brevo has or None, Brevo's id when learned)."""
        batch = list(rows)
        if batch:
            await self._run(_identified, batch)

    async def contact_row(self, user_id: str) -> dict[str, Any] | None:
        """A user's stored row, decoded (status, forget, tests)."""
        return await self._run(_row, user_id)

    async def revenue_totals(self, user_id: str) -> Totals | None:
        return await self._run(lambda conn: _totals(conn, [user_id]).get(user_id))

    async def contacts_count(self) -> int:
        return await self._run(lambda conn: conn.execute("SELECT count(*) FROM contacts").fetchone()[0])

    # -- on the writer thread --
    def _seq(self, conn: sqlite3.Connection) -> int:
        if self._next_seq is None:
            self._next_seq = (conn.execute("SELECT max(seq) FROM contacts").fetchone()[0] or 0) + 1
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def _fold(self, conn: sqlite3.Connection, snapshots: list[Mapping[str, Any]], facts: list[Mapping[str, Any]],
              attributes_of: AttributesOf, operations: list[Mapping[str, Any]], now: float) -> FoldResult:
        result = FoldResult()
        next_seq = self._next_seq
        try:
            with write_tx(conn):
                by_user = {s["u"]: s for s in snapshots}
                ops_of = _claim_operations(conn, operations, result, now)  # user → operations, in order
                named = {**dict.fromkeys(by_user), **dict.fromkeys(ops_of)}
                # One read of the totals of everyone the batch names; counting the facts updates it.
                totals = _totals(conn, [*named, *({fact["u"]: None for fact in facts}.keys() - named.keys())])
                totals_changed = _count_revenue(conn, facts, result, totals)
                users = [*named, *sorted(totals_changed - named.keys())]
                existing = _rows(conn, users)
                writes = []
                for user in users:
                    write = self._folded_write(conn, user, existing.get(user), by_user.get(user), totals.get(user),
                                               attributes_of, result, ops_of.get(user))
                    if write is not None:
                        writes.append((*write, now))
                conn.executemany(
                    "INSERT INTO contacts (user_id, seen, first_seen, last_active, email, sources, attributes, seq,"
                    " updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (user_id) DO UPDATE SET"
                    " seen = excluded.seen, first_seen = excluded.first_seen, last_active = excluded.last_active,"
                    " email = excluded.email, sources = excluded.sources, attributes = excluded.attributes,"
                    " seq = excluded.seq, updated_at = excluded.updated_at",
                    writes,
                )
        except BaseException:
            self._next_seq = next_seq  # the seqs of a rolled-back transaction were never used
            raise
        return result

    def _folded_write(self, conn: sqlite3.Connection, user: str, row: dict[str, Any] | None,
                      snapshot: Mapping[str, Any] | None, totals: Totals | None, attributes_of: AttributesOf,
                      result: FoldResult, operations: list[Mapping[str, Any]] | None = None) -> tuple[Any, ...] | None:
        """The row to store for `user` after `snapshot` and `operations` (without `updated_at`), counted in
        `result`; None when nothing is to be written: revenue for a user no row has told us about yet
        (written with their first row), or a row that would be stored exactly as it is."""
        folded = _folded(row, snapshot)
        if operations:
            folded = _operated(folded or _NOBODY, operations, user, result)
        if folded is None:
            return None
        seen, first_seen, last_active, email, sources, encoded_sources = folded
        attributes, dropped = attributes_of(sources, {"first_seen": first_seen, "last_active": last_active}, totals)
        for attribute, why in dropped:
            result.dropped.append((user, attribute, why))
        encoded = dumps_kept(attributes, option=orjson.OPT_SORT_KEYS)
        if encoded_sources is None:
            encoded_sources = dumps_kept(sources)
        if row is None:
            result.new += 1
            seq = self._seq(conn)
        elif encoded != row["attributes"] or email != row["email"]:
            result.changed += 1
            seq = self._seq(conn)
        else:
            result.unchanged += 1
            if (seen, first_seen, last_active, encoded_sources) == (
                    row["seen"], row["first_seen"], row["last_active"], row["sources"]):
                return None  # a re-read: the stored row is this one already
            seq = row["seq"]
        return user, seen, first_seen, last_active, email, encoded_sources, encoded, seq


def _count_revenue(conn: sqlite3.Connection, facts: list[Mapping[str, Any]], result: FoldResult,
                   totals: dict[str, Totals]) -> set[str]:
    """Count the facts whose key the ledger does not hold yet (the first of a batch's repeats), in bulk: one
    read of the ledger's known keys, one insert of the new ones, one upsert of each changed user's totals
    (summed in fact order, as one statement per fact would have). `totals` holds the stored totals of (at
    least) every user of `facts`; it is updated to the new ones. Returns the users whose totals changed."""
    new: dict[str, Mapping[str, Any]] = {}
    for fact in facts:
        if fact["k"] in new:
            result.revenue_repeated += 1
        else:
            new[fact["k"]] = fact
    for key in _selected(conn, "SELECT key FROM revenue WHERE key IN ", list(new)):
        del new[key[0]]
        result.revenue_repeated += 1
    if not new:
        return set()
    conn.executemany("INSERT INTO revenue (key, user_id, amount, at) VALUES (?, ?, ?, ?)",
                     [(key, fact["u"], float(fact["a"]), fact.get("t")) for key, fact in new.items()])
    result.revenue_counted += len(new)
    after: dict[str, list[Any]] = {}  # user → [ltv, orders, refunds] after this batch
    for fact in new.values():
        amount, user = float(fact["a"]), fact["u"]
        total = after.get(user)
        if total is None:
            before = totals.get(user)
            total = after[user] = [amount, 0, 0] if before is None else [
                before.ltv + amount, before.orders, before.refunds]
        else:
            total[0] += amount
        total[1] += amount > 0
        total[2] += amount < 0
    rows = [(user, ltv, orders, refunds) for user, (ltv, orders, refunds) in after.items()]
    conn.executemany(
        "INSERT INTO revenue_totals (user_id, ltv, orders, refunds) VALUES (?, ?, ?, ?) ON CONFLICT (user_id)"
        " DO UPDATE SET ltv = excluded.ltv, orders = excluded.orders, refunds = excluded.refunds",
        rows,
    )
    for user, ltv, orders, refunds in rows:
        totals[user] = Totals(ltv, orders, refunds)
    return set(after)


# (seen, first_seen, last_active, email, sources, the stored encoding of sources or None when they are new)
Folded = tuple[str, "str | None", "str | None", "str | None", Mapping[str, Any], "bytes | None"]


def _folded(row: dict[str, Any] | None, snapshot: Mapping[str, Any] | None) -> Folded | None:
    """The row after `snapshot`: newest wins for values and email, extremes for first/last seen. Sources
    kept from the row come with their stored encoding (not encoded again)."""
    if snapshot is None:
        if row is None:
            return None
        return (row["seen"], row["first_seen"], row["last_active"], row["email"], *_stored_sources(row))
    seen = f"{snapshot.get('t') or ''}|{snapshot.get('s') or ''}"
    first, last = snapshot.get("f"), snapshot.get("l")
    if row is None:
        return seen, first, last, snapshot.get("e"), dict(snapshot.get("p") or {}), None
    first_seen, last_active = _earliest(row["first_seen"], first), _latest(row["last_active"], last)
    if seen >= row["seen"]:
        return seen, first_seen, last_active, snapshot.get("e") or row["email"], dict(snapshot.get("p") or {}), None
    return (row["seen"], first_seen, last_active, row["email"] or snapshot.get("e"), *_stored_sources(row))


_NOBODY: Folded = ("", None, None, None, {}, None)  # a user the operations are the first news of


def _claim_operations(conn: sqlite3.Connection, operations: list[Mapping[str, Any]], result: FoldResult,
                      now: float) -> dict[str, list[Mapping[str, Any]]]:
    """The operations never applied before, by user in batch order; their keys are recorded now (in the
    fold's transaction: applied and recorded together, or neither)."""
    if not operations:
        return {}
    new: dict[str, Mapping[str, Any]] = {}
    for op in operations:
        key = OPERATIONS_NAMESPACE + op["k"]
        if key in new:
            result.operations_repeated += 1
        else:
            new[key] = op
    for (key,) in _selected(conn, "SELECT key FROM dedupe WHERE key IN ", list(new)):
        del new[key]
        result.operations_repeated += 1
    conn.executemany("INSERT INTO dedupe (key, sink, delivered_at) VALUES (?, 'profiles', ?)",
                     [(key, now) for key in new])
    result.operations_applied += len(new)
    by_user: dict[str, list[Mapping[str, Any]]] = {}
    for op in new.values():
        by_user.setdefault(op["u"], []).append(op)
    return by_user


def _operated(folded: Folded, operations: list[Mapping[str, Any]], user: str, result: FoldResult) -> Folded:
    """The row after a user's operations, in order: `c` (fields of the event) as `$set`, then `o`; an email
    they set (`m` "once": only where none is known); the newest time seen; the extremes of activity."""
    seen, first_seen, last_active, email, sources, _ = folded
    sources = dict(sources)
    for op in operations:
        columns = op.get("c")
        if columns:
            sources.update(columns)
        ops = op.get("o")
        if ops:
            try:
                applied = apply_operations(sources, ops)
            except InvalidOperations as exc:
                result.dropped.append((user, "(user properties)", f"operations not applied: {exc}"))
            else:
                sources = applied.properties
                for operation, name, why in applied.skipped:
                    result.dropped.append((user, name, f"{operation} not applied: {why}"))
        new_email = op.get("e")
        if new_email and (op.get("m") != "once" or not email):
            email = new_email
        at = f"{op.get('t') or ''}|{op.get('s') or ''}"
        if at > seen:
            seen = at
        first_seen, last_active = _earliest(first_seen, op.get("f")), _latest(last_active, op.get("l"))
    return seen, first_seen, last_active, email, sources, None


def _earliest(a: str | None, b: str | None) -> str | None:
    """`min(filter(None, (a, b)), default=None)`, without building a filter (it runs per snapshot)."""
    if not a:
        return b or None
    return a if not b or a <= b else b


def _latest(a: str | None, b: str | None) -> str | None:
    """`max(filter(None, (a, b)), default=None)`."""
    if not a:
        return b or None
    return a if not b or a >= b else b


def _stored_sources(row: dict[str, Any]) -> tuple[dict[str, Any], bytes | None]:
    """A row's sources, decoded, and their stored encoding."""
    stored = row["sources"]
    return orjson.loads(stored or b"{}"), stored or None


def _selected(conn: sqlite3.Connection, sql: str, keys: list[str]) -> list[tuple[Any, ...]]:
    """The rows of `sql` + "(the keys)": `SELECT … WHERE key IN ` and a list of keys (see the module
    docstring: one statement text, whatever the number of keys)."""
    if not keys:
        return []
    if _JSON_EACH:
        return conn.execute(f"{sql}(SELECT value FROM json_each(?))", (json_array(keys),)).fetchall()
    out: list[tuple[Any, ...]] = []
    for part in chunks(keys):
        size = next(size for size in _IN_SIZES if size >= len(part))
        padded = [*part, *([None] * (size - len(part)))]  # NULL matches nothing
        out += conn.execute(f"{sql}({marks(size)})", padded).fetchall()
    return out


_IN_SIZES = (8, 64, MAX_IN_PARAMS)  # the lengths `IN` lists are padded to (without json_each)
_COLUMNS = "user_id, seen, first_seen, last_active, email, sources, attributes, seq, brevo_email, brevo_id, in_brevo"
_NAMES = _COLUMNS.split(", ")


def _rows(conn: sqlite3.Connection, users: list[str]) -> dict[str, dict[str, Any]]:
    rows = _selected(conn, f"SELECT {_COLUMNS} FROM contacts WHERE user_id IN ", users)
    return {values[0]: dict(zip(_NAMES, values, strict=True)) for values in rows}


def _totals(conn: sqlite3.Connection, users: list[str]) -> dict[str, Totals]:
    rows = _selected(conn, "SELECT user_id, ltv, orders, refunds FROM revenue_totals WHERE user_id IN ", users)
    return {user: Totals(ltv, orders, refunds) for user, ltv, orders, refunds in rows}


def _pending_of(values: tuple[Any, ...]) -> PendingContact:
    user, seq, email, attributes, in_brevo, brevo_email, brevo_id = values
    return PendingContact(user, seq, email, attributes or b"{}", bool(in_brevo), brevo_email, brevo_id)


_PENDING = "SELECT user_id, seq, email, attributes, in_brevo, brevo_email, brevo_id FROM contacts"


def _pending(conn: sqlite3.Connection, after_seq: int, limit: int) -> list[PendingContact]:
    rows = conn.execute(f"{_PENDING} WHERE seq > ? ORDER BY seq LIMIT ?", (after_seq, limit)).fetchall()
    return [_pending_of(values) for values in rows]


def _by_user(conn: sqlite3.Connection, user_id: str) -> PendingContact | None:
    values = conn.execute(f"{_PENDING} WHERE user_id = ?", (user_id,)).fetchone()
    return None if values is None else _pending_of(values)


def _identified(conn: sqlite3.Connection, rows: list[tuple[str, str | None, int | None]]) -> None:
    with write_tx(conn):
        conn.executemany(
            "UPDATE contacts SET in_brevo = 1, brevo_email = ?, brevo_id = coalesce(?, brevo_id) WHERE user_id = ?",
            [(email, brevo_id, user) for user, email, brevo_id in rows],
        )


def _row(conn: sqlite3.Connection, user_id: str) -> dict[str, Any] | None:
    row = _rows(conn, [user_id]).get(user_id)
    if row is None:
        return None
    row["sources"] = orjson.loads(row["sources"] or b"{}")
    row["attributes"] = orjson.loads(row["attributes"] or b"{}")
    return row
