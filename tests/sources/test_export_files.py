"""Reading an Export API zip: member listing and order, line iteration, truncated members."""

from __future__ import annotations

import gzip
import zipfile
from datetime import UTC, datetime, timedelta

import orjson
import pytest

from amplitude_brevo.sandbox.amplitude_sim import MALFORMED_LINE, ExportFaults, build_export_zip
from amplitude_brevo.sandbox.sample_data import DatasetSpec, rows_for_hour
from amplitude_brevo.sources.export_files import TruncatedMember, iter_lines, list_members, open_export

START = datetime(2026, 11, 1, 0, tzinfo=UTC)
SPEC = DatasetSpec(start=START, hours=3, rows_per_hour=120, users=20)


def hour(n: int) -> datetime:
    return START + timedelta(hours=n)


def build(tmp_path, *, members_per_hour=2, faults=None, start=0, end=2, spec=SPEC):
    path = tmp_path / "export.zip"
    with open(path, "wb") as fp:
        build_export_zip(spec, hour(start), hour(end), fp, members_per_hour=members_per_hour, faults=faults)
    return path


def all_lines(archive):
    return [line for member in list_members(archive) for line in iter_lines(archive, member)]


def test_members_are_listed_by_hour_then_partition(tmp_path):
    path = build(tmp_path, members_per_hour=3)
    with open_export(path) as archive:
        members = list_members(archive)
    assert [(m.hour, m.partition) for m in members] == [(hour(h), p) for h in range(3) for p in range(3)]
    assert all(m.name.startswith("187520/187520_2026-11-01_") and m.name.endswith(".json.gz") for m in members)
    assert members[0].name == "187520/187520_2026-11-01_0#0.json.gz", "hours are not zero-padded"


def test_non_member_entries_are_ignored_and_odd_names_sorted_last(tmp_path):
    path = tmp_path / "odd.zip"
    gz = gzip.compress(b'{"uuid": "a"}\n')
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("187520/", b"")
        zf.writestr("187520/_SUCCESS", b"")
        zf.writestr("187520/manifest.json", b"{}")
        zf.writestr("187520/unusual-name.json.gz", gz)
        zf.writestr("187520/187520_2026-11-01_10#0.json.gz", gz)
        zf.writestr("187520/187520_2026-11-01_9#1.json.gz", gz)
        zf.writestr("187520/187520_2026-11-01_9#0.json.gz", gz)
    with open_export(path) as archive:
        members = list_members(archive)
    assert [m.name.split("/")[1] for m in members] == [
        "187520_2026-11-01_9#0.json.gz", "187520_2026-11-01_9#1.json.gz", "187520_2026-11-01_10#0.json.gz",
        "unusual-name.json.gz",
    ]
    assert members[-1].hour is None
    assert members[0].hour == datetime(2026, 11, 1, 9, tzinfo=UTC)


def test_lines_are_every_row_in_order(tmp_path):
    path = build(tmp_path)
    expected = [row["uuid"] for h in range(3) for row in rows_for_hour(SPEC, hour(h))]
    with open_export(path) as archive:
        got = [orjson.loads(line)["uuid"] for line in all_lines(archive)]
    assert got == expected


def test_blank_lines_and_a_missing_final_newline(tmp_path):
    path = tmp_path / "blank.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(b'{"a": 1}\n\n  \n{"a": 2}\n{"a": 3}'))
    with open_export(path) as archive:
        assert all_lines(archive) == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']


def test_lines_longer_than_one_read_are_joined(tmp_path, monkeypatch):
    import amplitude_brevo.sources.export_files as export_files

    monkeypatch.setattr(export_files, "_READ_SIZE", 7)
    lines = [orjson.dumps({"uuid": f"row-{i}", "pad": "x" * i}) for i in range(30)]
    path = tmp_path / "small-reads.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(b"\n".join(lines) + b"\n"))
    with open_export(path) as archive:
        assert all_lines(archive) == lines


def test_malformed_line_is_yielded_for_the_decoder_to_refuse(tmp_path):
    path = build(tmp_path, faults=ExportFaults(malformed_line={"20261101T01"}))
    with open_export(path) as archive:
        lines = all_lines(archive)
    assert lines.count(MALFORMED_LINE) == 1
    assert len(lines) == 3 * 120 + 1


def test_truncated_member_yields_its_good_lines_then_raises(tmp_path):
    spec = DatasetSpec(start=START, hours=1, rows_per_hour=2000, users=20)
    path = build(tmp_path, spec=spec, members_per_hour=2, faults=ExportFaults(truncate_member={"20261101T00"}),
                 end=0)
    expected = [row["uuid"] for row in rows_for_hour(spec, hour(0))]
    with open_export(path) as archive:
        first, last = list_members(archive)
        assert [orjson.loads(x)["uuid"] for x in iter_lines(archive, first)] == expected[:1000]
        got: list[bytes] = []
        with pytest.raises(TruncatedMember, match=r"187520_2026-11-01_0#1\.json\.gz"):
            for line in iter_lines(archive, last):
                got.append(line)
    uuids = [orjson.loads(x)["uuid"] for x in got]  # every yielded line is a whole row
    assert uuids == expected[1000:1000 + len(uuids)], "the good lines, in order, before the damage"
    assert 500 <= len(uuids) < 1000


def test_corrupt_gzip_raises_truncated_member(tmp_path):
    path = tmp_path / "corrupt.zip"
    good = gzip.compress(b'{"a": 1}\n' * 50)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", b"this is not gzip at all")
        zf.writestr("1/1_2026-11-01_0#1.json.gz", good[:20] + b"\x00" * 8 + good[28:])
    with open_export(path) as archive:
        not_gzip, damaged = list_members(archive)
        with pytest.raises(TruncatedMember):
            list(iter_lines(archive, not_gzip))
        with pytest.raises(TruncatedMember):
            list(iter_lines(archive, damaged))


def test_a_window_without_data_is_an_empty_zip(tmp_path):
    path = build(tmp_path, start=5, end=6)
    with open_export(path) as archive:
        assert list_members(archive) == []


def test_concatenated_gzip_streams_in_one_entry_are_all_read(tmp_path):
    path = tmp_path / "multi.zip"
    body = gzip.compress(b'{"a": 1}\n{"a": 2}\n') + gzip.compress(b'{"a": 3}\n') + b"\x00" * 16
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", body)
    with open_export(path) as archive:
        assert all_lines(archive) == [b'{"a": 1}', b'{"a": 2}', b'{"a": 3}']


def test_an_empty_entry_has_no_lines(tmp_path):
    path = tmp_path / "empty.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", b"")
    with open_export(path) as archive:
        assert all_lines(archive) == []


def test_line_chunks_hold_the_same_lines_in_lists(tmp_path, monkeypatch):
    import amplitude_brevo.sources.export_files as export_files

    monkeypatch.setattr(export_files, "_READ_SIZE", 64)
    lines = [orjson.dumps({"uuid": f"row-{i}", "pad": "x" * (i % 50)}) for i in range(200)]
    text = b"\n".join(lines[:100]) + b"\n \t\r\n\n\x00\n" + b"\n".join(lines[100:])
    path = tmp_path / "chunks.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(text))
    with open_export(path) as archive:
        (member,) = list_members(archive)
        chunks = list(export_files.iter_line_chunks(archive, member))
    assert len(chunks) > 1 and all(isinstance(c, list) and c for c in chunks)
    # whitespace-only lines are dropped, anything else (even a NUL) is passed on for the decoder to judge
    assert [line for c in chunks for line in c] == lines[:100] + [b"\x00"] + lines[100:]



def test_a_line_over_the_limit_is_skipped_not_held_and_stands_as_one_step(tmp_path, monkeypatch):
    import amplitude_brevo.sources.export_files as export_files

    monkeypatch.setattr(export_files, "_READ_SIZE", 64)
    short = [orjson.dumps({"uuid": f"row-{i}"}) for i in range(6)]
    long_kept = b'{"pad": "' + b"k" * 180 + b'"}'  # 191 bytes, over several reads: at the limit, kept
    too_long = b'{"pad": "' + b"x" * 1000 + b'"}'
    too_long_at_a_newline = b"y" * 250  # ends exactly where a read starts its next line
    text = b"\n".join([short[0], b"", too_long, short[1], long_kept, too_long_at_a_newline, short[2],
                       b"  ", short[3], b"z" * 300]) + b"\n" + short[4] + b"\n" + b"w" * 500  # no final newline
    path = tmp_path / "long.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(text))
    with open_export(path) as archive:
        (member,) = list_members(archive)
        steps = list(export_files.iter_text_steps(archive, member, max_line=191))
    overlong = [s for s in steps if isinstance(s, export_files.OverlongLine)]
    assert [(s.length, s.limit) for s in overlong] == [(len(too_long), 191), (250, 191), (300, 191), (500, 191)]
    # The prefix is what was read before the line was found too long (LINE_PREFIX_BYTES when the limit is larger)
    for s, line in zip(overlong, [too_long, b"y" * 250, b"z" * 300, b"w" * 500], strict=True):
        assert line.startswith(s.prefix) and len(s.prefix) > 191
    # Each skipped line is one physical line in place; the other text passes through unchanged.
    rebuilt = b"".join(b"<long>" + b"\n" * (s is not steps[-1]) if isinstance(s, export_files.OverlongLine) else s
                       for s in steps)
    assert rebuilt == b"\n".join([short[0], b"", b"<long>", short[1], long_kept, b"<long>", short[2], b"  ",
                                  short[3], b"<long>", short[4], b"<long>"])


def test_a_member_without_newlines_is_read_in_bounded_memory(tmp_path, monkeypatch):
    """20 MB with no newline (compressing to a few KB): never more than about the limit is held."""
    import tracemalloc

    import amplitude_brevo.sources.export_files as export_files

    monkeypatch.setattr(export_files, "MAX_LINE_BYTES", 1 << 20)
    path = tmp_path / "no-newlines.zip"
    size = 20 << 20
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("1/1_2026-11-01_0#0.json.gz", gzip.compress(b"{" + b"a" * (size - 1), 1))
    with open_export(path) as archive:
        (member,) = list_members(archive)
        tracemalloc.start()
        try:
            (step,) = export_files.iter_text_steps(archive, member)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert isinstance(step, export_files.OverlongLine) and step.length == size
    assert step.prefix == b"{" + b"a" * (export_files.LINE_PREFIX_BYTES - 1)
    assert peak < 5 << 20, f"peak {peak / 2**20:.1f} MiB while reading a {size >> 20} MiB line"
