"""Consumer: contact items (table `contacts` → ContactOutbox → queue brevo_contacts) → Brevo contacts.

An item's body is the design's contact item: `{ext_id, email, attributes, in_brevo, brevo_email, brevo_id, seq}`
(attributes already typed for Brevo; EMAIL and EXT_ID are identity, never in `attributes`). Its route:

* **batch update** — known in Brevo with an identifier `/contacts/batch` accepts (reference §1.5: `id`, or an
  `email` that did not change): `POST /contacts/batch`, through BrevoSink's machinery (sizes, splitting a
  request refused without detail, a lone item to its single request). Keyed by id, the entry also sets EMAIL
  (when it changed) and `ext_id`. A 404 naming positions ("No contact found for indexes 3,4": deleted in
  Brevo) takes those out to be created and sends the rest again (`diverted_items`).
* **single update** — known, without a batch identifier (the email changed and no id is known, or there is
  neither): `PUT /contacts/{ext_id}?identifierType=ext_id`, which keeps one contact per user whatever its
  email (§7); a 404 there → created.
* **create** — not known in Brevo (or diverted as above): when one delivered batch has `import_min` or more,
  `POST /contacts/import` (jsonBody ≤ 8 MB a request, into the import list), its process polled sparingly
  under `brevo_other`; the emails its report lists as invalid are dead letters, a failed import goes one by
  one. Boolean `false` values are left out of the import (reported not to apply there, reference §1.5) and
  written once it is done: `/contacts/batch` by email, else PUT by ext_id. Fewer: `POST /contacts` with
  `updateEnabled` one by one (201 {id} created, 204 updated).

Brevo refusing an email another contact owns (400 with `metadata.duplicate_identifiers`) writes the contact
again without it and dead-letters the item naming both; any other refusal of a single request dead-letters
that contact only. `identified` is told what Brevo now holds (ext_id, email, id if learned) before the items
are settled. Every request spends `brevo_contacts`, except the process polls (`brevo_other`) and the import
report, a plain file download.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson

from ..jsonbytes import dumps_kept
from ..logs import get_logger
from ..pipeline.items import Item
from .brevo_client import BrevoResponse, Outcome, Stopping, validate_response
from .brevo_sink import BrevoSink, SinkStats, _Batch, _together

__all__ = ["BrevoContactsSink", "ContactStats", "Identified", "Identity"]

log = get_logger("brevo_contacts")

SINK = "brevo_contacts"
OTHER_BUDGET = "brevo_other"  # /processes: "all other endpoints", 100 requests an hour on the general plan
IMPORT_LIST_NAME = "Amplitude users"
IMPORT_FOLDER_NAME = "Amplitude"
IMPORT_MAX_BYTES = 8_000_000  # jsonBody: 10 MB at most, about 8 MB advised (reference §1.6)
POLL_FIRST = 2.0  # seconds before the first look at an import's process, then doubling...
POLL_MAX = 60.0  # ...up to this
PROCESS_ENDED = frozenset({"completed", "failed", "cancelled"})
NOT_FOUND = {404: frozenset({"document_not_found"})}
REPORT_TIMEOUT = aiohttp.ClientTimeout(total=60)
# Batches at once: an import holds its batch for its process's seconds, while the others keep the contacts
# budget busy with /contacts/batch (each user still has one write on its way at most: the outbox's rule).
WORKERS = 4

# (ext_id, the email Brevo now holds or None, Brevo's contact id if learned or None)
Identity = tuple[str, str | None, int | None]
Identified = Callable[[list[Identity]], Awaitable[None]]


class ContactStats(SinkStats):
    __slots__ = ("created", "updated", "imported", "import_requests", "import_polls")

    def __init__(self) -> None:
        super().__init__()
        self.created = 0
        self.updated = 0
        self.imported = 0
        self.import_requests = 0
        self.import_polls = 0


class Route(enum.Enum):
    BATCH = "batch"
    SINGLE = "single"
    CREATE = "create"


@dataclass(frozen=True, slots=True)
class Contact:
    """A contact item's body, and the requests it makes."""

    ext_id: str
    email: str | None
    attributes: dict[str, Any]
    in_brevo: bool
    brevo_email: str | None
    brevo_id: int | None

    @classmethod
    def of(cls, item: Item) -> Contact:
        return cls.parse(item.body)

    @classmethod
    def parse(cls, raw: bytes) -> Contact:
        try:
            body = orjson.loads(raw)
            contact = cls(body["ext_id"], body.get("email"), body.get("attributes") or {},
                          bool(body.get("in_brevo")), body.get("brevo_email"), body.get("brevo_id"))
        except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"not a contact item ({type(exc).__name__}: {exc})") from None
        if not isinstance(contact.ext_id, str) or not contact.ext_id or not isinstance(contact.attributes, dict):
            raise ValueError("not a contact item (ext_id, attributes)")
        return contact

    @property
    def route(self) -> Route:
        if not self.in_brevo:
            return Route.CREATE
        return Route.BATCH if self.batch_entry() is not None else Route.SINGLE

    @property
    def email_changed(self) -> bool:
        return self.email is not None and self.email != self.brevo_email

    def _attributes(self, with_email: bool = True) -> dict[str, Any]:
        if with_email and self.email_changed:
            return {**self.attributes, "EMAIL": self.email}
        return self.attributes

    def batch_entry(self) -> dict[str, Any] | None:
        """Its `/contacts/batch` entry, or None when it has no identifier that endpoint accepts."""
        if self.brevo_id is not None:
            return {"id": self.brevo_id, "attributes": self._attributes(), "ext_id": self.ext_id}
        if self.email is not None and self.email == self.brevo_email:
            return {"email": self.email, "attributes": self.attributes}
        return None

    def request(self, *, create: bool, with_email: bool = True) -> tuple[str, str, dict[str, Any]]:
        """(method, path, body) of its single request: POST /contacts (upsert) or PUT by ext_id."""
        if create:
            body: dict[str, Any] = {"email": self.email} if with_email and self.email else {}
            return "POST", "/contacts", {**body, "ext_id": self.ext_id, "attributes": self.attributes,
                                         "updateEnabled": True}
        path = f"/contacts/{quote(self.ext_id, safe='')}?identifierType=ext_id"
        return "PUT", path, {"attributes": self._attributes(with_email)}

    def import_row(self) -> dict[str, Any]:
        """Its `/contacts/import` row, without its falses (`falses`)."""
        row: dict[str, Any] = {"email": self.email} if self.email else {}
        attributes = {k: v for k, v in self.attributes.items() if v is not False}
        return {**row, "attributes": {**attributes, "EXT_ID": self.ext_id}}

    @property
    def falses(self) -> dict[str, bool]:
        """Its attributes set to `false`: an import's jsonBody was reported not to apply them (reference
        §1.5), so they are written once the import has created the contact."""
        return {k: v for k, v in self.attributes.items() if v is False}

    def written(self, *, create: bool, with_email: bool = True, contact_id: int | None = None) -> Identity:
        """What Brevo holds after a write of this contact."""
        email = self.email if with_email and self.email else (None if create else self.brevo_email)
        return self.ext_id, email, contact_id if create else self.brevo_id


@dataclass(frozen=True, slots=True)
class _Written:
    """A batch note: what a write left in Brevo, and how it is counted once delivered."""

    identity: Identity
    outcome: str | None  # a ContactStats counter


def duplicate_identifiers(response: BrevoResponse) -> list[str] | None:
    """`metadata.duplicate_identifiers` of a refusal (an identifier another contact owns), whatever its code."""
    body = response.body
    metadata = body.get("metadata") if isinstance(body, dict) else None
    found = metadata.get("duplicate_identifiers") if isinstance(metadata, dict) else None
    return [str(name) for name in found] if isinstance(found, list) else None


class BrevoContactsSink(BrevoSink):
    name = SINK
    noun = "contact"
    batch_path = "/contacts/batch"
    batch_budget = "brevo_contacts"
    single_budget = "brevo_contacts"  # the same bucket: a spent one is waited out, not worked around
    max_batch_size = 1000  # Brevo publishes no maximum (reference §1.5); a refused size is halved
    grows = False  # 100 a call is what support material cites (§1.5, unverified): the configured size holds
    singles_below = 1  # a lone known contact goes as a batch of one: /contacts/batch is its route
    item_verdicts = NOT_FOUND  # "No contact found for indexes 3,4", "Contact does not exist"
    import_max_bytes = IMPORT_MAX_BYTES
    poll_first = POLL_FIRST
    poll_max = POLL_MAX

    def __init__(self, *, identified: Identified, import_min: int = 50, import_list_id: int | None = None,
                 **kwargs: Any) -> None:
        kwargs.setdefault("workers", WORKERS)
        super().__init__(**kwargs)
        self.identified = identified
        self.import_min = import_min
        self.import_list_id = import_list_id
        self.stats: ContactStats = ContactStats()
        self._list_id: int | None = None  # the import list, once known (configured, found or created)
        self._list_lock = asyncio.Lock()
        self._dry_import = False

    def reload(self, cfg: Any) -> None:
        brevo = cfg.connectors.brevo
        self.client.reconfigure(base_url=brevo.api_url, api_key=brevo.api_key)
        self.resize(brevo.contacts_batch_size)
        self.import_min = brevo.contacts_import_min
        if brevo.import_list_id != self.import_list_id:
            self.import_list_id, self._list_id = brevo.import_list_id, None

    # -- what BrevoSink asks of a sink --
    def batch_body(self, bodies: list[bytes]) -> bytes:
        # One encoding of the whole body: each orjson.dumps result holds ~4 KiB (jsonbytes.py), so encoding
        # the entries one by one held 4 MiB a 1,000-contact request until the join.
        return orjson.dumps({"contacts": [Contact.parse(body).batch_entry() for body in bodies]})

    def single_request(self, item: Item) -> tuple[str, str, bytes]:
        contact = Contact.of(item)
        method, path, body = contact.request(create=contact.route is Route.CREATE)
        return method, path, orjson.dumps(body)

    def refused_items(self, response: BrevoResponse, size: int) -> dict[int, str]:
        return {}  # /contacts/batch names no refused items; a refusal is split down to single requests

    def diverted_items(self, response: BrevoResponse, size: int) -> list[int]:
        """404 "No contact found for indexes 3,4": contacts Brevo no longer has, to be created."""
        if response.status != 404 or response.code != "document_not_found":
            return []
        found = re.search(r"indexes?\s*:?\s*([\d,\s]+)", str(response.body.get("message", "")))
        return [int(n) for n in re.findall(r"\d+", found.group(1))] if found else []

    def would_send(self, item: Item) -> tuple[str, Any]:
        contact = Contact.of(item)
        if contact.route is Route.BATCH:
            return self.batch_path, contact.batch_entry()
        if contact.route is Route.CREATE and self._dry_import:
            return "/contacts/import", contact.import_row()
        return contact.request(create=contact.route is Route.CREATE)[1:]

    def _dry_run(self, items: list[Item]) -> None:
        creates = sum(1 for item in items if _route(item) is Route.CREATE)
        self._dry_import = creates >= self.import_min
        super()._dry_run(items)

    # -- routes --
    async def _send(self, batch: _Batch, indexes: Sequence[int] | None = None) -> None:
        routes: dict[Route | None, list[int]] = {route: [] for route in (*Route, None)}
        for i in range(len(batch.items)) if indexes is None else indexes:
            routes[_route(batch.items[i])].append(i)
        if routes[None]:
            self._settle(batch, routes[None], dict.fromkeys(routes[None], "not a contact item: nothing sent"))
        # The three routes at once (an import's wait is the longest); what the updates found deleted in
        # Brevo is created after them.
        await _together([super()._send(batch, routes[Route.BATCH]),
                         *(self._send_single(batch, i) for i in routes[Route.SINGLE]),
                         self._create(batch, routes[Route.CREATE])])
        if batch.diverted:
            await self._create(batch, batch.diverted)

    async def _send_single(self, batch: _Batch, index: int) -> None:
        await self._write_one(batch, index, create=False)

    async def _write_one(self, batch: _Batch, index: int, *, create: bool) -> None:
        """One contact by its single request; an update Brevo does not find goes to the creates
        (`batch.diverted`), an email another contact owns is left out and the item dead-lettered."""
        contact = Contact.of(batch.items[index])
        with_email, conflict = True, None
        while True:
            response = await self._call_single(batch, *contact.request(create=create, with_email=with_email))
            if validate_response(response.status) is Outcome.OK:
                break
            if not create and response.status == 404:
                batch.diverted.append(index)  # deleted in Brevo: created with the others
                return
            taken = duplicate_identifiers(response)
            if with_email and contact.email and taken is not None and (
                not taken or any("email" in name.lower() for name in taken)
            ):
                conflict = (f"email {contact.email} is already used by another Brevo contact; "
                            f"contact ext_id={contact.ext_id} kept without it")
                with_email = False
                continue
            self._settle(batch, [index], {index: self._reason(f"HTTP {response.status} {response.message}")})
            return
        learned = response.body.get("id") if create and isinstance(response.body, dict) else None
        identity = contact.written(create=create, with_email=with_email,
                                   contact_id=learned if isinstance(learned, int) else None)
        batch.notes[index] = _Written(identity, "created" if response.status == 201 else "updated")
        self._settle(batch, [index], {index: conflict} if conflict else {})

    async def _create(self, batch: _Batch, indexes: list[int]) -> None:
        if len(indexes) >= self.import_min:
            await self._import(batch, indexes)
        else:
            await self._create_singly(batch, indexes)

    async def _create_singly(self, batch: _Batch, indexes: list[int]) -> None:
        await _together([self._write_one(batch, i, create=True) for i in indexes])

    # -- /contacts/import --
    async def _import(self, batch: _Batch, indexes: list[int]) -> None:
        if not indexes:
            return
        list_id = await self._import_list()
        if list_id is None:
            await self._create_singly(batch, indexes)
            return
        parts = self._import_bodies(batch, indexes, list_id)
        await _together([self._import_part(batch, part, body) for part, body in parts])

    def _import_bodies(self, batch: _Batch, indexes: list[int], list_id: int) -> list[tuple[list[int], bytes]]:
        """The import requests for batch.items[indexes]: (their indexes, body), each body ≤ import_max_bytes."""
        head = b'{"jsonBody":['
        tail = b'],"listIds":[%d],"updateExistingContacts":true,"emptyContactsAttributes":false}' % list_id
        room = self.import_max_bytes - len(head) - len(tail)
        parts: list[tuple[list[int], bytes]] = []
        part: list[int] = []
        rows: list[bytes] = []
        size = 0

        def flush() -> None:
            parts.append((part.copy(), b"".join((head, b",".join(rows), tail))))
            part.clear()
            rows.clear()

        for i in indexes:
            row = dumps_kept(Contact.of(batch.items[i]).import_row())  # kept until the part is joined
            if part and size + 1 + len(row) > room:
                flush()
                size = 0
            size += len(row) + (1 if part else 0)
            part.append(i)
            rows.append(row)
        if part:
            flush()
        return parts

    async def _import_part(self, batch: _Batch, indexes: list[int], body: bytes) -> None:
        self.stats.import_requests += 1
        batch.requests += 1
        response = await self.client.call("POST", "/contacts/import", body, budget=self.batch_budget,
                                          context={"sink": self.name, "count": len(indexes)})
        process_id = response.body.get("processId") if isinstance(response.body, dict) else None
        if validate_response(response.status) is not Outcome.OK or not isinstance(process_id, int):
            log.warning("brevo.contacts.import_refused", sink=self.name, count=len(indexes), status=response.status,
                        reason=response.message[:300], then="POST /contacts one by one")
            await self._create_singly(batch, indexes)
            return
        process = await self._import_process(process_id, len(indexes))
        status = process.get("status") if process is not None else None
        if status != "completed":
            log.warning("brevo.contacts.import_failed", sink=self.name, process_id=process_id, status=status,
                        count=len(indexes), then="POST /contacts one by one")
            await self._create_singly(batch, indexes)
            return
        refused = await self._refused_emails(process_id, (process.get("info") or {}).get("import") or {})
        letters = {}
        imported = []
        for i in indexes:
            contact = Contact.of(batch.items[i])
            if contact.email and contact.email.lower() in refused:
                letters[i] = f"Brevo's import refused the email {contact.email} (process {process_id})"
            else:
                batch.notes[i] = _Written(contact.written(create=True), "imported")
                imported.append(i)
        letters.update(await self._write_falses(batch, imported))
        log.info("brevo.contacts.imported", sink=self.name, process_id=process_id, count=len(indexes),
                 refused=len(letters))
        self._settle(batch, indexes, letters)

    async def _write_falses(self, batch: _Batch, indexes: list[int]) -> dict[int, str]:
        """The falses of the contacts an import created (`Contact.falses`): by email through
        `/contacts/batch`, else (or when a batch request is refused) by ext_id one by one. Returns the
        dead-letter reasons of those Brevo refused."""
        todo = [(i, contact, falses) for i in indexes
                if (falses := (contact := Contact.of(batch.items[i])).falses)]
        by_email = [entry for entry in todo if entry[1].email]
        singly = [entry for entry in todo if not entry[1].email]
        size = self.sizer.current

        async def by_batch(chunk: list[tuple[int, Contact, dict[str, bool]]]) -> None:
            body = orjson.dumps({"contacts": [{"email": c.email, "attributes": f} for _, c, f in chunk]})
            batch.requests += 1
            self.stats.batch_requests += 1
            response = await self.client.call("POST", self.batch_path, body, budget=self.batch_budget,
                                              item_verdicts=NOT_FOUND, context={"sink": self.name, "count": len(chunk)})
            if validate_response(response.status) is not Outcome.OK:
                singly.extend(chunk)  # each on its own request, for its own verdict

        await _together([by_batch(by_email[k:k + size]) for k in range(0, len(by_email), size)])
        refused: dict[int, str] = {}

        async def one(index: int, contact: Contact, falses: dict[str, bool]) -> None:
            path = f"/contacts/{quote(contact.ext_id, safe='')}?identifierType=ext_id"
            response = await self._call_single(batch, "PUT", path, orjson.dumps({"attributes": falses}))
            if validate_response(response.status) is not Outcome.OK:
                refused[index] = (f"imported, but {', '.join(falses)} = false not written: "
                                  + self._reason(f"HTTP {response.status} {response.message}"))

        await _together([one(*entry) for entry in singly])
        return refused

    async def _import_process(self, process_id: int, count: int) -> dict[str, Any] | None:
        """The import's process once it ended (completed, failed, cancelled), or None if Brevo will not say."""
        delay = self.poll_first
        while True:
            await self._pause(delay)
            self.stats.import_polls += 1
            response = await self.client.call("GET", f"/processes/{process_id}", budget=OTHER_BUDGET,
                                              item_verdicts=NOT_FOUND, context={"sink": self.name, "count": count})
            if validate_response(response.status) is not Outcome.OK or not isinstance(response.body, dict):
                log.warning("brevo.contacts.process_unreadable", sink=self.name, process_id=process_id,
                            status=response.status, reason=response.message[:300])
                return None
            if response.body.get("status") in PROCESS_ENDED:
                return response.body
            delay = min(delay * 2, self.poll_max)

    async def _pause(self, seconds: float) -> None:
        """Sleep, unless the sink stops meanwhile: then `Stopping` (the import's items are released)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)
        if self._stopping.is_set():
            raise Stopping("stopped while an import was running")

    async def _refused_emails(self, process_id: int, report: dict[str, Any]) -> set[str]:
        """The cells of the import report's `invalid_emails` CSV, lower-cased (empty if there is none or it
        cannot be read: its rows then count as delivered)."""
        others = {name: url for name, url in report.items() if url and name != "invalid_emails"}
        if others:
            log.warning("brevo.contacts.import_report", sink=self.name, process_id=process_id, reports=others)
        url = report.get("invalid_emails")
        if not isinstance(url, str) or not url:
            return set()
        try:
            async with self.client.session.get(url, timeout=REPORT_TIMEOUT) as resp:
                if resp.status != 200:
                    raise aiohttp.ClientResponseError(resp.request_info, (), status=resp.status)
                text = (await resp.read()).decode("utf-8", "replace")
        except (aiohttp.ClientError, TimeoutError) as exc:
            log.warning("brevo.contacts.import_report_unread", sink=self.name, process_id=process_id, url=url,
                        error=f"{type(exc).__name__}: {exc}", then="its rows count as delivered")
            return set()
        return {cell.strip().strip('"').lower() for line in text.splitlines() for cell in re.split(r"[;,\t]", line)}

    async def _import_list(self) -> int | None:
        """The list imports add contacts to: configured, else found or created by name, once per lifetime."""
        async with self._list_lock:
            if self._list_id is None:
                how = "configured"
                try:
                    if self.import_list_id is not None:
                        self._list_id = self.import_list_id
                    else:
                        self._list_id, how = await self._find_or_create_list()
                except _ListUnavailable as exc:
                    log.error("brevo.contacts.import_list_failed", sink=self.name, reason=str(exc),
                              then="new contacts go through POST /contacts one by one")
                    return None
                log.info("brevo.contacts.import_list", sink=self.name, list_id=self._list_id, how=how,
                         name=IMPORT_LIST_NAME if how != "configured" else None)
            return self._list_id

    async def _find_or_create_list(self) -> tuple[int, str]:
        offset = 0
        while True:
            page = await self._read("GET", f"/contacts/lists?limit=50&offset={offset}")
            lists = [entry for entry in page.get("lists") or [] if isinstance(entry, dict)]
            for entry in lists:
                if entry.get("name") == IMPORT_LIST_NAME and isinstance(entry.get("id"), int):
                    return entry["id"], "found"
            offset += len(lists)
            if not lists or offset >= int(page.get("count") or 0):
                break
        folders = (await self._read("GET", "/contacts/folders?limit=50&offset=0")).get("folders") or []
        folder = folders[0].get("id") if folders and isinstance(folders[0], dict) else None
        if not isinstance(folder, int):
            folder = await self._created_id("/contacts/folders", {"name": IMPORT_FOLDER_NAME})
        return await self._created_id("/contacts/lists", {"name": IMPORT_LIST_NAME, "folderId": folder}), "created"

    async def _created_id(self, path: str, payload: dict[str, Any]) -> int:
        created = (await self._read("POST", path, payload)).get("id")
        if not isinstance(created, int):
            raise _ListUnavailable(f"POST {path} answered no id")
        return created

    async def _read(self, method: str, path: str, payload: Any = None) -> dict[str, Any]:
        response = await self.client.call(method, path, payload, budget=self.batch_budget,
                                          context={"sink": self.name})
        if validate_response(response.status) is not Outcome.OK:
            raise _ListUnavailable(f"{method} {path}: HTTP {response.status} {response.message}")
        return response.body if isinstance(response.body, dict) else {}

    # -- acknowledgements --
    async def _record(self, batch: _Batch, indexes: Sequence[int], items: list[Item], letters: dict[int, str]) -> None:
        """Tell `identified` what Brevo now holds for these contacts, then settle them."""
        written = []
        for n, i in enumerate(indexes):
            note = batch.notes.pop(i, None)
            if note is None and n not in letters:
                note = _Written(Contact.of(items[n]).written(create=False), "updated")  # a batch update
            if note is None:
                continue
            written.append(note.identity)
            if n not in letters and note.outcome:
                setattr(self.stats, note.outcome, getattr(self.stats, note.outcome) + 1)
        if written:
            await self.identified(written)
        await super()._record(batch, indexes, items, letters)


class _ListUnavailable(Exception):
    """The import list could not be found or created."""


def _route(item: Item) -> Route | None:
    """The item's route, or None when its body is not a contact item."""
    try:
        return Contact.of(item).route
    except ValueError:
        return None
