"""The export reader: one member read, decoded and remapped, in-process (`map_member`) and in the child."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from amplitude_brevo.pipeline import remap
from amplitude_brevo.pipeline.remap import EVENTS_SINK, MappingRules, SinkOutput, remap_event
from amplitude_brevo.pipeline.rows import row_decoder
from amplitude_brevo.sandbox.amplitude_sim import ExportFaults, build_export_zip
from amplitude_brevo.sandbox.sample_data import DatasetSpec
from amplitude_brevo.sources import export_reader, member_mapper
from amplitude_brevo.sources.export_files import Member, iter_lines, list_members
from amplitude_brevo.sources.export_reader import ReaderFailed, ReaderPool
from amplitude_brevo.sources.member_mapper import MappedChunk, map_member

START = datetime(2026, 11, 1, tzinfo=UTC)
RULES = MappingRules(event_mapping={"Page View": "page_viewed", "Purchase": "order_completed"},
                     property_mapping={"email": "email", "plan_type": "PLAN"})


def export(tmp_path, rows_per_hour: int = 2000, faults: ExportFaults | None = None):
    spec = DatasetSpec(seed=3, start=START, hours=1, rows_per_hour=rows_per_hour)
    path = tmp_path / "export.zip"
    with open(path, "wb") as fp:
        build_export_zip(spec, START, START, fp, members_per_hour=1, faults=faults)
    with zipfile.ZipFile(path) as archive:
        (member,) = list_members(archive)
    return path, member


def merged(chunks: list[MappedChunk]) -> MappedChunk:
    total = MappedChunk()
    for chunk in chunks:
        total.rows += chunk.rows
        for name, out in chunk.outputs.items():
            into = total.outputs.setdefault(name, SinkOutput())
            into.keys += out.keys
            into.bodies += out.bodies
        total.letters += chunk.letters
        for reason, count in chunk.skipped.items():
            total.skipped[reason] = total.skipped.get(reason, 0) + count
    return total


async def here_and_striped(path: Path) -> tuple[Member, MappedChunk, MappedChunk]:
    """The one member of the export at `path`, mapped in this process and striped over two children."""
    with zipfile.ZipFile(path) as archive:
        (member,) = list_members(archive)
        here = merged(list(map_member(archive, member, RULES)))
    reader = ReaderPool(2)
    try:
        striped = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
    finally:
        await reader.close()
    return member, here, striped


def test_map_member_is_remap_event_over_every_line(tmp_path):
    path, member = export(tmp_path)
    with zipfile.ZipFile(path) as archive:
        expected = [remap_event(row_decoder.decode(line), RULES) for line in iter_lines(archive, member)]
        chunks = list(map_member(archive, member, RULES))
    got = merged(chunks)
    assert len(chunks) > 1
    assert got.rows == len(expected) == 2000
    events = [e for e in expected if hasattr(e, "body")]
    out = got.outputs[EVENTS_SINK]
    assert out.keys == ["events:" + e.dedupe_key for e in events] and out.bodies == [e.body for e in events]
    assert sum(got.skipped.values()) == len(expected) - len(events) and got.letters == []


def test_a_line_remapping_fails_on_becomes_a_dead_letter(tmp_path, monkeypatch):
    path, member = export(tmp_path, rows_per_hour=50)
    calls = []

    def failing(row, rules):
        calls.append(row)
        if len(calls) == 7:
            raise RuntimeError("surprise")
        return remap_event(row, rules)

    monkeypatch.setitem(remap.CONSUMERS, EVENTS_SINK, remap.Consumer(EVENTS_SINK, "events:", failing))
    with zipfile.ZipFile(path) as archive:
        got = merged(list(map_member(archive, member, MappingRules(RULES.event_mapping, RULES.property_mapping))))
    assert got.rows == 50
    [(event, line, item, reason)] = got.letters
    assert (event, line, reason) == ("export.line.failed", 7, "cannot map the line: RuntimeError: surprise")
    assert item["member"] == member.name and item["text"].startswith("{")


def test_a_truncated_member_ends_with_its_good_lines_and_a_letter(tmp_path):
    path, member = export(tmp_path, faults=ExportFaults(truncate_member={"20261101T00"}))
    with zipfile.ZipFile(path) as archive:
        chunks = list(map_member(archive, member, RULES))
    *good, last = chunks
    assert sum(c.rows for c in good) > 0
    [(event, line, item, reason)] = last.letters
    assert event == "export.member.truncated" and line is None
    assert item == {"member": member.name, "lines_read": sum(c.rows for c in good)}
    assert reason.startswith("truncated or corrupt gzip member after")


@pytest.mark.parametrize("workers", [0, 1, 2, 3])
async def test_the_children_hand_over_what_map_member_computes_in_order(tmp_path, workers):
    path, member = export(tmp_path)
    with zipfile.ZipFile(path) as archive:
        expected = merged(list(map_member(archive, member, RULES)))
    reader = ReaderPool(workers)
    try:
        for _ in range(2):  # the same children read a second member
            got = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
            assert got == expected
        assert len(reader.pids) == workers  # 0: mapped in this process
    finally:
        await reader.close()
    assert reader.pids == []


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_striped_children_agree_on_a_truncated_member(tmp_path, workers):
    path, member = export(tmp_path, faults=ExportFaults(truncate_member={"20261101T00"}))
    with zipfile.ZipFile(path) as archive:
        expected = merged(list(map_member(archive, member, RULES)))
    reader = ReaderPool(workers)
    try:
        got = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
    finally:
        await reader.close()
    assert got == expected and [letter[0] for letter in got.letters] == ["export.member.truncated"]


async def test_a_child_killed_mid_member_raises_reader_failed_and_the_next_read_starts_a_new_one(tmp_path):
    path, member = export(tmp_path, rows_per_hour=20_000)  # ~40 steps: the child cannot have sent all of its own
    reader = ReaderPool(2)
    try:
        chunks = reader.map_member(path, member, RULES)
        await chunks.__anext__()
        first_pids = reader.pids
        reader._procs[1].kill()
        with pytest.raises(ReaderFailed, match="ended while reading"):
            async for _ in chunks:
                pass
        assert reader.pids == [], "the other child is stopped too"
        got = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
        assert got.rows == 20_000 and set(reader.pids).isdisjoint(first_pids)
    finally:
        await reader.close()


async def test_leaving_a_member_early_stops_the_child(tmp_path):
    from contextlib import aclosing

    path, member = export(tmp_path)
    reader = ReaderPool(2)
    async with aclosing(reader.map_member(path, member, RULES)) as chunks:
        async for _ in chunks:
            procs = list(reader._procs)
            break
    assert reader.pids == [] and all(p.returncode is not None for p in procs), \
        "their next frames would belong to this member"
    got = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
    assert got.rows == 2000
    await reader.close()


def test_the_pool_pauses_at_a_tenth_of_the_queue_and_resumes_at_a_fiftieth():
    """Brevo the bottleneck (queue ≥ 10 % full): map here; back to children only once it is ≤ 2 %."""
    from structlog.testing import capture_logs

    queued = [0]
    pool = ReaderPool(2, backlog=lambda: (queued[0], 100))
    answers = []
    with capture_logs() as logs:
        for depth in (0, 9, 10, 50, 3, 2, 9, 0):
            queued[0] = depth
            answers.append((pool.in_process(), pool.paused))
    assert answers == [(False, False), (False, False), (True, True), (True, True), (True, True), (False, False),
                       (False, False), (False, False)], "hysteresis: 3 % is not drained yet, 9 % not backed up"
    assert [(e["event"], e["queued"], e["capacity"]) for e in logs] == [
        ("export.readers.paused", 10, 100), ("export.readers.resumed", 2, 100)]
    assert logs[0]["reason"] and logs[1]["readers"] == 2
    pool.workers = 0
    queued[0] = 0
    with capture_logs() as logs:
        assert pool.in_process() is True and not pool.paused and logs == [], "no workers: always here, quietly"
    assert ReaderPool(2).in_process() is False, "no backlog to watch: always the children"


@pytest.mark.parametrize("sinks", [(EVENTS_SINK,), ()])
def test_rules_travel_to_the_child_whole(sinks):
    rules = MappingRules(event_mapping={"A": "a"}, property_mapping={"x": "X"}, ext_id_field="crm_id",
                         email_property="mail", anonymous="use_device_id", sinks=sinks)
    assert MappingRules(**member_mapper.rules_args(rules)) == rules


async def test_without_children_members_are_mapped_here(tmp_path, monkeypatch):
    """Exec refused (a stricter sandbox): logged once, mapped in this process, nothing lost."""
    path, member = export(tmp_path)
    with zipfile.ZipFile(path) as archive:
        expected = merged(list(map_member(archive, member, RULES)))

    async def refused(*args, **kwargs):
        raise PermissionError(13, "Permission denied", args[0])

    monkeypatch.setattr(export_reader.asyncio, "create_subprocess_exec", refused)
    reader = ReaderPool(2)
    got = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
    assert got == expected and reader.workers == 0 and reader.pids == []


def test_leaving_map_member_early_stops_its_inflate_thread(tmp_path):
    import threading

    path, member = export(tmp_path, rows_per_hour=20_000)
    before = threading.active_count()
    with zipfile.ZipFile(path) as archive:
        chunks = map_member(archive, member, RULES)
        next(chunks)
        assert threading.active_count() == before + 1
        chunks.close()
    assert threading.active_count() == before, "the thread inflating ahead is gone"


@pytest.mark.parametrize("after", [0, 1, 4])
async def test_switching_to_this_process_mid_member_hands_over_the_same_chunks(tmp_path, after):
    """The queue backing up after `after` chunks: the children stop, this process maps the rest from the
    next step; together the same chunks, in order, as one reader would give."""
    path, member = export(tmp_path, rows_per_hour=6000)
    with zipfile.ZipFile(path) as archive:
        expected = list(map_member(archive, member, RULES))
    seen: list[MappedChunk] = []
    children: list = []
    backed_up = [True]

    def backlog() -> tuple[int, int]:
        children.extend(p for p in reader._procs if p not in children)
        return (10 if backed_up[0] and len(seen) >= after else 0), 100

    reader = ReaderPool(2, backlog)
    try:
        async for chunk in reader.map_member(path, member, RULES):
            seen.append(chunk)
            if len(seen) > after:
                assert reader.pids == [], "the children are stopped once the member is read here"
        assert seen == expected and len(expected) > 5
        assert (children == []) == (after == 0), "asked before the member: no child is started at all"
        assert all(p.returncode is not None for p in children)
        assert reader.paused
        backed_up[0] = False
        got = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
        assert got == merged(expected) and len(reader.pids) == 2, "started again for a member read by children"
        assert not reader.paused
    finally:
        await reader.close()


async def test_a_truncated_member_switched_mid_way_has_one_letter(tmp_path):
    path, member = export(tmp_path, rows_per_hour=6000, faults=ExportFaults(truncate_member={"20261101T00"}))
    with zipfile.ZipFile(path) as archive:
        expected = merged(list(map_member(archive, member, RULES)))
    count = [0]

    def backlog() -> tuple[int, int]:
        count[0] += 1
        return (10 if count[0] > 2 else 0), 100

    reader = ReaderPool(2, backlog)
    try:
        got = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
    finally:
        await reader.close()
    assert got == expected and [letter[0] for letter in got.letters] == ["export.member.truncated"]


async def test_line_numbers_are_physical_lines_for_every_reader(tmp_path):
    """Blank lines count: a bad line's number is its line in the member (as `sed -n Np` shows it), whether
    this process or striped children read the steps before it."""
    import gzip

    import orjson

    good = [orjson.dumps({"event_type": "Purchase", "user_id": f"u{i}", "$insert_id": f"i{i}",
                         "event_time": "2026-11-01 00:10:00.000000", "pad": "x" * 900})
            for i in range(3000)]  # ~2.8 MB: three 1 MiB steps
    text = b"\n".join(line + (b"\n\n \t" if i % 7 == 0 else b"") for i, line in enumerate(good))
    text += b"\n{not json\n" + good[0]  # the bad line, then a last line without its newline
    bad_line = text.count(b"\n", 0, text.index(b"{not json")) + 1
    path = tmp_path / "blank-lines.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(text))
    member, here, striped = await here_and_striped(path)
    [(event, line, item, _)] = here.letters
    assert (event, line, item["line"]) == ("export.line.malformed", bad_line, bad_line)
    assert striped == here and here.rows == 3002 and bad_line > 3000


async def test_children_get_only_what_the_interpreter_needs_of_the_environment(tmp_path, monkeypatch):
    """The daemon's environment holds its secrets (keys expanded into the config): a reader child has none."""
    path, member = export(tmp_path, rows_per_hour=50)
    monkeypatch.setenv("AMPLITUDE_SECRET_KEY", "amp-secret-do-not-leak")
    monkeypatch.setenv("PYTHON_API_TOKEN", "not-an-interpreter-setting")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", "/run/credentials/amplitude-brevo.service")
    monkeypatch.setenv("LC_TIME", "C")
    monkeypatch.setenv("PYTHONHASHSEED", "7")
    reader = ReaderPool(1)
    try:
        got = merged([chunk async for chunk in reader.map_member(path, member, RULES)])
        assert got.rows == 50
        (pid,) = reader.pids
        with open(f"/proc/{pid}/environ", "rb") as environ:
            names = dict(item.split(b"=", 1) for item in environ.read().split(b"\0") if item)
    finally:
        await reader.close()
    assert b"AMPLITUDE_SECRET_KEY" not in names and b"PYTHON_API_TOKEN" not in names
    assert b"CREDENTIALS_DIRECTORY" not in names
    assert names[b"LC_TIME"] == b"C" and names[b"PYTHONHASHSEED"] == b"7" and b"PATH" in names
    assert names[b"PYTHONPATH"].split(b":")[0] == str(Path(export_reader.__file__).resolve().parents[2]).encode()
    assert not any(b"amp-secret" in value for value in names.values())


async def test_a_line_over_the_limit_is_a_dead_letter_with_its_physical_line_for_every_reader(tmp_path, monkeypatch):
    """A line longer than MAX_LINE_BYTES (here 1.5 MiB, over one 1 MiB step) is skipped, never held: one letter
    with its line number (blank lines count) and its start, the same in this process and in striped children."""
    import gzip

    import orjson

    from amplitude_brevo.sources import export_files

    monkeypatch.setattr(export_files, "MAX_LINE_BYTES", 3 << 19)
    good = [orjson.dumps({"event_type": "Purchase", "user_id": f"u{i}", "$insert_id": f"i{i}",
                         "event_time": "2026-11-01 00:10:00.000000", "pad": "x" * 900}) for i in range(2500)]
    huge = b'{"event_type": "Purchase", "pad": "' + b"z" * (3 << 20) + b'"}'
    text = b"\n".join(line + (b"\n\n" if i % 9 == 0 else b"") for i, line in enumerate(good[:1200]))
    text += b"\n" + huge + b"\n" + b"\n".join(good[1200:]) + b"\n"
    huge_line = text.count(b"\n", 0, text.index(huge)) + 1
    path = tmp_path / "huge-line.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(text, 1))
    member, here, striped = await here_and_striped(path)
    [(event, line, item, reason)] = here.letters
    assert (event, line, item["line"], item["bytes"]) == ("export.line.too_long", huge_line, huge_line, len(huge))
    assert reason == f"line longer than {3 << 19} bytes ({len(huge)} bytes, skipped)"
    assert item["text"] == huge[:4096].decode() and item["member"] == member.name
    assert here.rows == 2501 and len(here.outputs[EVENTS_SINK].bodies) == 2500, "every other line is read"
    assert striped == here


def test_a_member_fans_out_to_every_consumer_and_a_row_is_dead_lettered_once(tmp_path, monkeypatch):
    import gzip

    import orjson

    def profiles(row, rules):  # a second consumer: rejects what events also rejects, and more
        if row.user_id == "bad":
            return remap.Rejected("profiles: bad user", {"user_id": row.user_id})
        return remap.BrevoEvent(None, orjson.dumps({"ext_id": row.user_id})) if row.user_id else None

    monkeypatch.setitem(remap.CONSUMERS, "test_profiles", remap.Consumer("test_profiles", None, profiles))
    rules = MappingRules(RULES.event_mapping, RULES.property_mapping, sinks=(EVENTS_SINK, "test_profiles"))
    rows = [{"event_type": "Purchase", "user_id": "u1", "$insert_id": "i1", "event_time": "2026-11-01 00:10:00"},
            {"event_type": "Purchase", "user_id": "bad", "$insert_id": "i2", "event_time": "not a time"},
            {"event_type": "Sign Up", "user_id": "u3", "$insert_id": "i3", "event_time": "2026-11-01 00:10:00"}]
    path = tmp_path / "fan-out.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(b"\n".join(map(orjson.dumps, rows))))
    with zipfile.ZipFile(path) as archive:
        (member,) = list_members(archive)
        got = merged(list(map_member(archive, member, rules)))
    assert got.rows == 3 and got.skipped == {"unmapped": 1}
    assert got.outputs[EVENTS_SINK].keys == ["events:i1"]
    assert got.outputs["test_profiles"] == SinkOutput([None, None], [b'{"ext_id":"u1"}', b'{"ext_id":"u3"}'])
    [(event, line, item, reason)] = got.letters
    assert (event, line, reason) == ("export.row.rejected", 2, "unparseable event_time 'not a time'")
    assert item["member"] == member.name


# -- collecting consumers (the profile collector): one snapshot per user, reader and member --

PROFILE_RULES = MappingRules(
    event_mapping=RULES.event_mapping, property_mapping={"email": "email", "plan_type": "PLAN"},
    sinks=(EVENTS_SINK, "profiles"), count_revenue=True,
)


def profiles(chunks: list[MappedChunk]) -> tuple[dict[str, tuple], list[str]]:
    """What the chunks' profile outputs fold to (as the folder folds them): by user, (newest event time and
    upload, its values, first and last seen); and the revenue facts' keys, sorted."""
    import orjson

    users: dict[str, tuple] = {}
    facts = []
    for chunk in chunks:
        for body in chunk.outputs.get("profiles", SinkOutput()).bodies:
            data = orjson.loads(body)
            if "r" in data:
                facts.append(data["k"])
                continue
            seen = (data["t"], data["s"])
            known = users.get(data["u"])
            if known is None:
                users[data["u"]] = (seen, data["p"], data["f"], data["l"])
            else:
                newest = (seen, data["p"]) if seen >= known[0] else known[:2]
                users[data["u"]] = (*newest, min(known[2], data["f"]), max(known[3], data["l"]))
    return users, sorted(facts)


def snapshots_by_user(chunks: list[MappedChunk]) -> dict[str, int]:
    import orjson

    counts: dict[str, int] = {}
    for chunk in chunks:
        for body in chunk.outputs.get("profiles", SinkOutput()).bodies:
            if b'"r":1' not in body:
                user = orjson.loads(body)["u"]
                counts[user] = counts.get(user, 0) + 1
    return counts


def test_a_member_makes_one_snapshot_per_user_in_a_tail_after_its_steps(tmp_path):
    path, member = export(tmp_path, rows_per_hour=6000)
    with zipfile.ZipFile(path) as archive:
        chunks = list(map_member(archive, member, PROFILE_RULES))
        lines = list(iter_lines(archive, member))
    assert len(chunks) > 5
    *steps, tail = chunks
    assert all(not c.outputs["profiles"].bodies and not c.tail for c in steps), "collected over the member"
    assert tail.tail and tail.rows == 0 and tail.outputs["profiles"].bodies, "written once, after the last step"
    chunks = steps + [tail]
    counts = snapshots_by_user(chunks)
    assert set(counts.values()) == {1}
    users = {row.user_id for row in map(PROFILE_RULES.row_decoder.decode, lines) if row.user_id}
    assert set(counts) == users, "every user with a row has a profile"
    # the events are what they always were, chunk by chunk
    events_only = MappingRules(RULES.event_mapping, PROFILE_RULES.property_mapping)
    with zipfile.ZipFile(path) as archive:
        plain = list(map_member(archive, member, events_only))
    assert [c.outputs[EVENTS_SINK] for c in steps] == [c.outputs[EVENTS_SINK] for c in plain]


def test_the_newest_row_of_a_user_wins_across_the_steps_of_a_member(tmp_path):
    import gzip

    import orjson

    def line(i: int, at: str, plan: str) -> bytes:
        return orjson.dumps({"event_type": "Page View", "user_id": "u1", "$insert_id": f"i{i}", "event_time": at,
                             "server_upload_time": at, "user_properties": {"plan_type": plan}, "pad": "x" * 900})

    # several 1 MiB steps; the newest row in the first step, the oldest in the last
    rows = [line(0, "2026-11-01 00:50:00.000000", "newest")]
    rows += [line(i, "2026-11-01 00:20:00.000000", "middle") for i in range(1, 2999)]
    rows += [line(2999, "2026-11-01 00:05:00.000000", "oldest")]
    path = tmp_path / "one-user.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(b"\n".join(rows)))
    with zipfile.ZipFile(path) as archive:
        (member,) = list_members(archive)
        chunks = list(map_member(archive, member, PROFILE_RULES))
    assert len(chunks) > 2
    users, _ = profiles(chunks)
    assert snapshots_by_user(chunks) == {"u1": 1}
    assert users["u1"][1] == {"plan_type": "newest"}
    assert users["u1"][2:] == ("2026-11-01T00:05:00.000Z", "2026-11-01T00:50:00.000Z")


@pytest.mark.parametrize("workers", [1, 2, 3])
async def test_children_each_collect_their_steps_and_fold_to_what_one_reader_collects(tmp_path, workers):
    path, member = export(tmp_path, rows_per_hour=6000)
    with zipfile.ZipFile(path) as archive:
        expected = list(map_member(archive, member, PROFILE_RULES))
    reader = ReaderPool(workers)
    try:
        got = [chunk async for chunk in reader.map_member(path, member, PROFILE_RULES)]
    finally:
        await reader.close()
    steps = [c for c in got if not c.tail]
    assert len(steps) == len(expected) - 1 and not any(c.tail for c in expected[:-1]) and expected[-1].tail
    assert got[len(steps):] == [c for c in got if c.tail] and 1 <= len(got) - len(steps) <= workers, \
        "the children's tails come after every step, one from each child that collected something"
    assert profiles(got) == profiles(expected)
    assert max(snapshots_by_user(got).values()) <= workers, "one snapshot per user and child"
    assert [c.outputs[EVENTS_SINK] for c in steps] == [c.outputs[EVENTS_SINK] for c in expected[:-1]]
    assert merged(got).skipped == merged(expected).skipped


@pytest.mark.parametrize("after", [1, 2, 5])
async def test_switching_to_this_process_mid_member_loses_nothing_the_children_collected(tmp_path, after):
    """The children's collected profiles never arrive when they are stopped mid-member: the steps they mapped
    are collected again here, so every row still feeds its profile and every revenue fact comes once."""
    path, member = export(tmp_path, rows_per_hour=6000)
    with zipfile.ZipFile(path) as archive:
        expected = list(map_member(archive, member, PROFILE_RULES))
    seen: list[MappedChunk] = []

    def backlog() -> tuple[int, int]:
        return (10 if len(seen) >= after else 0), 100

    reader = ReaderPool(2, backlog)
    try:
        async for chunk in reader.map_member(path, member, PROFILE_RULES):
            seen.append(chunk)
        assert reader.paused
    finally:
        await reader.close()
    users, facts = profiles(seen)
    assert (users, facts) == profiles(expected) and facts, "no profile lost, no revenue fact twice"
    assert merged(seen).rows == merged(expected).rows and merged(seen).skipped == merged(expected).skipped
    assert [c.outputs[EVENTS_SINK] for c in seen if c.rows] == [c.outputs[EVENTS_SINK] for c in expected if c.rows]


@pytest.mark.parametrize("workers", [0, 2])
async def test_a_truncated_member_still_writes_the_profiles_of_its_good_lines(tmp_path, workers):
    path, member = export(tmp_path, rows_per_hour=6000, faults=ExportFaults(truncate_member={"20261101T00"}))
    with zipfile.ZipFile(path) as archive:
        expected = list(map_member(archive, member, PROFILE_RULES))
        good = []
        try:
            good = [PROFILE_RULES.row_decoder.decode(line) for line in iter_lines(archive, member)]
        except Exception:  # noqa: BLE001 - the truncation
            pass
    reader = ReaderPool(workers)
    try:
        got = [chunk async for chunk in reader.map_member(path, member, PROFILE_RULES)]
    finally:
        await reader.close()
    last = [c for c in got if not c.tail][-1]
    assert got[-1].tail and last.letters[0][0] == "export.member.truncated"
    users, _ = profiles(got)
    assert users == profiles(expected)[0] and users
    assert len(users) >= len({row.user_id for row in good if row.user_id})
