"""Hostile names and frames (issue #11): names that are not UTF-8, literal frame placeholders,
negative frames, a stray frame far from its sequence, the same folder spelled NFC and NFD, and
FIFOs, sockets, devices and folders at a template path. Real files, the real pipeline (watchdog
observers, the SQLite journal, the local registry), the real CLI."""
from __future__ import annotations

import json
import logging
import os
import socket
import stat
import tempfile
import time
import tracemalloc
import unicodedata
from pathlib import Path

from watcher.candidate import Candidate, RootScope, Windows, build_publish, frame_ranges
from watcher.explain import explain_path, explain_text
from watcher.journal.base import Status
from watcher.journal.sqlite import SqliteJournal
from watcher.logs import TextFormatter
from watcher.match import load_templates
from watcher.model import Publish
from watcher.roots import load_roots
from watcher.scan import ScanStats, walk
from watcher.unmatched import entries

from .agent import DATA, registry, rows, running, settings, wait_for, write_frames
from .test_cli import cli, make_config

RENDER = "seq/sq01/sh010/comp/render/beauty/v003"
NFC = unicodedata.normalize("NFC", "Étude")
NFD = unicodedata.normalize("NFD", "Étude")


def published(s):
    return [r for r in rows(s) if r.status == Status.PUBLISHED]


def unmatched(s) -> dict[str, str]:
    """path -> reason of every file `watcher unmatched` lists."""
    j = SqliteJournal(s.journal_url())
    try:
        return {e.path: e.reason for e in entries(j.db)}
    finally:
        j.close()


def bad(directory: Path, name: bytes) -> bytes:
    """A path (bytes) in ``directory`` whose name is not UTF-8."""
    return os.fsencode(str(directory)) + b"/" + name


def quiet(svc) -> None:
    svc.sync("shows")
    assert svc.wait_idle(15)


# -- names that are not UTF-8 -------------------------------------------------------------------

def test_scan_cli_refuses_names_that_are_not_utf8_and_publishes_the_rest(tmp_path):
    cfg = make_config(tmp_path)
    root = tmp_path / "root"
    d = root / RENDER
    write_frames(d, "beauty", range(1001, 1004))
    with open(bad(d, b"beauty.1004\xff.exr"), "wb") as f:  # a Latin-1 name among the frames
        f.write(b"x" * 10)
    os.makedirs(bad(root / "seq/sq01", b"sh\xe9020/comp/render/beauty/v003"))
    with open(bad(root / "seq/sq01", b"sh\xe9020/comp/render/beauty/v003/beauty.1001.exr"), "wb") as f:
        f.write(b"y")

    r = cli("-c", str(cfg), "scan")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr and "1 new candidate" in r.stdout, (r.stdout, r.stderr)
    [pub] = json.loads(cli("-c", str(cfg), "publishes", "--json").stdout)
    assert (pub["frames"], pub["frame_count"], pub["size"], pub["status"]) == ("1001-1003", 3, 3 * 1024, "published")

    listed = json.loads(cli("-c", str(cfg), "unmatched", "--json").stdout)
    reasons = {e["path"]: e["reason"] for e in listed}
    assert set(reasons) == {f"{d}/beauty.1004\\xff.exr",
                            f"{root}/seq/sq01/sh\\xe9020/comp/render/beauty/v003/beauty.1001.exr"}
    assert all("not valid UTF-8" in why and "rename" in why for why in reasons.values())
    assert "beauty.1004\\xff.exr" in r.stderr  # said in the log, escaped

    ex = cli("-c", str(cfg), "explain", os.fsdecode(bad(d, b"beauty.1004\xff.exr")))
    assert ex.returncode == 1 and "Traceback" not in ex.stderr, ex.stderr
    assert "beauty.1004\\xff.exr" in ex.stdout and "refused:   its name is not valid UTF-8" in ex.stdout
    as_json = json.loads(cli("-c", str(cfg), "explain", "--json", os.fsdecode(bad(d, b"beauty.1004\xff.exr"))).stdout)
    assert as_json[0]["refused"] == "not_utf8" and as_json[0]["path"].endswith("beauty.1004\\xff.exr")


def test_run_refuses_a_name_that_is_not_utf8_and_journals_its_neighbours(tmp_path, caplog):
    s = settings(tmp_path)
    d = s.roots[0].path / RENDER
    caplog.set_level(logging.INFO, logger="watcher")
    with running(s) as svc:
        d.mkdir(parents=True)
        with open(bad(d, b"beauty.1003\xff.exr"), "wb") as f:
            f.write(b"x" * 7)
        write_frames(d, "beauty", [1001, 1002])
        (d.parent.parent / "notes.txt").write_text("a neighbour that matches nothing")
        [row] = wait_for(lambda: published(s))
        quiet(svc)
    assert (row.publish.frames, row.publish.frame_count, row.publish.size) == ("1001-1002", 2, 2048)
    assert len(registry(s)) == 1
    listed = unmatched(s)
    assert "not valid UTF-8" in listed[f"{d}/beauty.1003\\xff.exr"]
    said = [TextFormatter().format(r) for r in caplog.records if "not valid UTF-8" in r.getMessage()]
    assert said and all("beauty.1003\\xff.exr" in m and "\udcff" not in m for m in said)


def test_lost_events_rescan_with_a_folder_that_is_not_utf8_resyncs_its_root(tmp_path):
    """Before: the rescan raised on the folder's name, the root stayed desynced for good, and no
    sequence of the root was published again."""
    s = settings(tmp_path)
    root = s.roots[0].path
    os.makedirs(bad(root / "seq/sq01", b"sh\xe9030/comp"))
    with running(s) as svc:
        svc.request_rescan("shows", "test: events lost")
        wait_for(lambda: svc.scanner.idle() and not svc.scanner.pending_for("shows", str(root)), 10)
        write_frames(root / RENDER, "beauty", range(1001, 1006))
        [row] = wait_for(lambda: published(s), 15)
        quiet(svc)
    assert row.publish.frames == "1001-1005"


def test_a_walk_below_a_folder_that_is_not_utf8_never_raises(tmp_path):
    """The per-folder rescans (a new folder, a deferred one) start their walk there."""
    s = settings(tmp_path)
    root = s.roots[0].path
    folder = bad(root, b"caf\xe9")
    os.makedirs(folder + b"/sub")
    for name in (b"/a.exr", b"/sub/b\xff.exr"):
        with open(folder + name, "wb") as f:
            f.write(b"x")
    [r] = load_roots(s)
    j = SqliteJournal(s.journal_url())
    try:
        stats = ScanStats()
        evs = list(walk("shows", str(root), r.ignorer, lambda rel: j.known_files("shows", rel), stats,
                        start=os.fsdecode(folder)))
    finally:
        j.close()
    seen = sorted(os.fsencode(e.path) for e in evs if hasattr(e, "kind"))
    assert seen == [folder + b"/a.exr", folder + b"/sub/b\xff.exr"] and stats.errors == 0


# -- literal frame placeholders -----------------------------------------------------------------

PLACEHOLDERS = ["beauty.####.exr", "beauty.%04d.exr", "beauty.$F4.exr", "beauty.@@@@.exr", "beauty.<UDIM>.exr",
                "beauty.#.exr", "beauty.%d.exr"]


def test_placeholder_names_never_join_or_merge_with_the_real_frames(tmp_path):
    s = settings(tmp_path)
    d = s.roots[0].path / RENDER
    with running(s) as svc:
        d.mkdir(parents=True)
        for n in PLACEHOLDERS:
            (d / n).write_bytes(b"p" * 999)
        write_frames(d, "beauty", range(1001, 1006))
        [row] = wait_for(lambda: published(s))
        quiet(svc)
    assert len(rows(s)) == 1 and len(registry(s)) == 1
    p = row.publish
    assert (p.path, p.frames, p.frame_count, p.size) == (str(d / "beauty.%04d.exr"), "1001-1005", 5, 5 * 1024)
    listed = unmatched(s)
    assert sorted(listed) == sorted(str(d / n) for n in PLACEHOLDERS)
    assert all("placeholder" in why and "never a real frame" in why for why in listed.values())
    for n in PLACEHOLDERS[:5]:
        res = explain_path(load_roots(s), str(d / n))
        assert res["matched"] is False and res["refused"] == "placeholder", res


def test_dry_run_never_merges_placeholders_nor_shows_undecodable_names(tmp_path):
    cfg = make_config(tmp_path)
    d = tmp_path / "root" / RENDER
    write_frames(d, "beauty", range(1001, 1004))
    for n in PLACEHOLDERS:
        (d / n).write_bytes(b"p" * 999)
    shot = bad(tmp_path / "root/seq/sq01", b"sh\xe9040/comp/render/beauty/v003")
    os.makedirs(shot)
    with open(shot + b"/beauty.1001.exr", "wb") as f:  # its Shot, read as text, is not UTF-8
        f.write(b"x")
    dry = cli("-c", str(cfg), "scan", "--dry-run", "--json")
    assert dry.returncode == 0 and "Traceback" not in dry.stderr, dry.stderr
    [only] = json.loads(dry.stdout)
    assert (only["path"], only["frames"], only["size"]) == (str(d / "beauty.%04d.exr"), "1001-1003", 3 * 1024)


# -- negative frames ----------------------------------------------------------------------------

def test_negative_frames_are_one_sequence_with_their_positive_neighbours(tmp_path):
    """``-0003 … 0002`` (the digits padded, in v003) and ``-003 … 0002`` (printf, in v004) are
    each one sequence of padding 4, one name and one version; their files are found again from
    the publish."""
    s = settings(tmp_path)
    base = s.roots[0].path / RENDER
    styles = {"v003": lambda f: f"beauty.-{-f:04d}.exr", "v004": lambda f: f"beauty.{f:04d}.exr"}
    names = {v: [(neg(f) if f < 0 else f"beauty.{f:04d}.exr") for f in range(-3, 3)] for v, neg in styles.items()}
    with running(s) as svc:
        for v, files in names.items():
            (base.parent / v).mkdir(parents=True)
            for n in files:
                (base.parent / v / n).write_bytes(b"n" * 100)
        wait_for(lambda: len(published(s)) == 2)
        quiet(svc)
    assert len(rows(s)) == 2
    for row in rows(s):
        p = row.publish
        d = base.parent / f"v{p.version:03d}"
        assert (p.path, p.frames, p.missing_frames, p.frame_count, p.padding, p.size) == \
            (str(d / "beauty.%04d.exr"), "-3-2", None, 6, 4, 600)
        assert p.file_paths() == [str(d / n) for n in names[d.name]]


# -- a stray frame far from its sequence --------------------------------------------------------

def test_a_stray_frame_is_reported_and_the_sequence_publishes_without_it(tmp_path, caplog):
    s = settings(tmp_path)
    d = s.roots[0].path / RENDER
    caplog.set_level(logging.WARNING, logger="watcher")
    with running(s) as svc:
        write_frames(d, "beauty", range(1001, 1101))
        write_frames(d, "beauty", [99999999])
        [row] = wait_for(lambda: published(s))
        quiet(svc)
    p = row.publish
    assert (p.frames, p.missing_frames, p.frame_count, p.size) == ("1001-1100", None, 100, 100 * 1024)
    assert len(rows(s)) == 1 and len(registry(s)) == 1
    [said] = [r.getMessage() for r in caplog.records if "99999999" in r.getMessage()]
    assert str(d / "beauty.99999999.exr") in said and "frame 99999999" in said


def test_a_seven_digit_stray_costs_milliseconds(tmp_path):
    """Ranges, holes and frame lists are built from the frames present, never from their span
    (fileseq expanded 1001-9999999 into ten million frames: seconds and a gigabyte)."""
    d = tmp_path / RENDER
    paths = write_frames(d, "beauty", list(range(1001, 1101)) + [9999999], size=1)
    ts = load_templates(DATA / "pipeline.yml")
    scope = RootScope("shows", str(tmp_path))
    first = ts.match(f"{RENDER}/beauty.1001.exr")
    from watcher.candidate import FileState, candidate_key

    cand = Candidate(candidate_key("shows", first), scope, first, Windows(0.1, 0.1, 1.0))
    for p in paths:
        m = ts.match(str(p.relative_to(tmp_path)))
        cand.files[str(p)] = FileState(str(p), m.frame, 1, 1)
    tracemalloc.start()
    t0 = time.perf_counter()
    pub = build_publish(cand)
    numbers = pub.frame_numbers()
    old_row = Publish(**{**pub.__dict__, "frames": "1001-9999999", "missing_frames": "1101-9999998"})
    old_numbers = old_row.frame_numbers()  # a row as the old code wrote it
    holes = frame_ranges([1, 2, 5, 9999999])
    elapsed = time.perf_counter() - t0
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert (pub.frames, pub.missing_frames, pub.frame_count) == ("1001-1100", None, 100)
    assert numbers == list(range(1001, 1101)) and old_numbers == list(range(1001, 1101)) + [9999999]
    assert holes == ("1-9999999", "3-4,6-9999998")
    assert elapsed < 0.1 and peak < 5_000_000, (elapsed, peak)


# -- the same folder spelled NFC and NFD --------------------------------------------------------

def test_nfd_names_match_in_nfc_and_keep_their_spelling_for_io():
    ts = load_templates(DATA / "pipeline.yml")
    rel = f"seq/sq01/{NFD}/comp/render/{NFD}/v003/{NFD}.1001.exr"
    m = ts.match(rel)
    assert m, m.reason  # an alphanumeric key takes the decomposed "Étude"
    assert m.fields["name"] == NFC and m.fields["Shot"] == NFC
    assert m.relpath == rel and m.pattern % 1001 == rel
    assert m == ts.match(rel)  # and again from the frame cache
    composed = ts.match(unicodedata.normalize("NFC", rel))
    assert composed.fields == m.fields and composed.relpath != m.relpath


def test_the_same_folder_spelled_nfc_and_nfd_publishes_once(tmp_path, caplog):
    s = settings(tmp_path)
    root = s.roots[0].path
    first = root / f"seq/sq01/{NFD}/comp/render/{NFD}/v003"
    second = root / f"seq/sq01/{NFC}/comp/render/{NFC}/v003"
    caplog.set_level(logging.INFO, logger="watcher")
    with running(s) as svc:
        write_frames(first, NFD, range(1, 4))
        [row] = wait_for(lambda: published(s))
        write_frames(second, NFC, range(1, 4))
        wait_for(lambda: len(unmatched(s)) == 3)
        quiet(svc)
    assert len(rows(s)) == 1 and len(registry(s)) == 1
    p = row.publish
    assert (p.name, p.entity.name, p.frames) == (NFC, NFC, "1-3")  # sent in NFC
    assert p.path == str(first / f"{NFD}.%04d.exr") and all(os.path.isfile(f) for f in p.file_paths())
    listed = unmatched(s)
    assert sorted(listed) == [str(second / f"{NFC}.{f:04d}.exr") for f in range(1, 4)]
    assert all("another Unicode spelling" in why and p.path in why for why in listed.values())
    [warned] = [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "another Unicode spelling" in r.getMessage()]
    assert str(second) in warned and p.path in warned


def test_the_nfc_twin_of_a_published_folder_is_refused_after_a_restart(tmp_path):
    """The first spelling is known from the journal, not only from this run's memory."""
    s = settings(tmp_path)
    root = s.roots[0].path
    with running(s) as svc:
        write_frames(root / f"seq/sq01/{NFC}/comp/render/beauty/v003", "beauty", range(1, 3))
        wait_for(lambda: published(s))
        quiet(svc)
    with running(s) as svc:
        write_frames(root / f"seq/sq01/{NFD}/comp/render/beauty/v003", "beauty", range(1, 3))
        wait_for(lambda: len(unmatched(s)) == 2)
        quiet(svc)
    assert len(rows(s)) == 1 and len(registry(s)) == 1
    assert rows(s)[0].publish.entity.name == NFC


def test_a_decomposed_name_that_fails_a_key_is_said_at_warning(tmp_path, caplog):
    s = settings(tmp_path)
    d = s.roots[0].path / f"seq/sq01/sh010/comp/render/{NFD}-1/v003"
    caplog.set_level(logging.INFO, logger="watcher")
    with running(s) as svc:
        write_frames(d, f"{NFD}-1", [1])
        wait_for(lambda: unmatched(s))
        quiet(svc)
    [said] = [r for r in caplog.records if "decomposed (NFD)" in r.getMessage()]
    assert said.levelno == logging.WARNING
    assert "key name" in said.getMessage() and "letters and digits only" in said.getMessage()
    assert rows(s) == []


# -- FIFOs, sockets, devices and folders at a template path -------------------------------------

def test_explain_refuses_what_is_not_a_regular_file(tmp_path):
    s = settings(tmp_path)
    d = s.roots[0].path / RENDER
    d.mkdir(parents=True)
    os.mkfifo(d / "beauty.1001.exr")
    (d / "beauty.1002.exr").mkdir()
    sock = socket.socket(socket.AF_UNIX)
    short = tempfile.mkdtemp(dir="/tmp")  # a socket's path is limited to 108 bytes: bound there, moved in
    sock.bind(f"{short}/s")
    os.rename(f"{short}/s", d / "beauty.1003.exr")
    os.rmdir(short)
    kinds = {1001: "a FIFO", 1002: "a directory", 1003: "a socket"}
    try:
        os.mknod(d / "beauty.1004.exr", stat.S_IFCHR | 0o600, os.makedev(1, 5))  # /dev/zero's numbers
        kinds[1004] = "a character device"
    except (PermissionError, OSError):
        pass  # no CAP_MKNOD here: the other kinds still run
    write_frames(d, "beauty", [1005, 1006])
    roots = load_roots(s)
    try:
        for frame, kind in kinds.items():
            res = explain_path(roots, str(d / f"beauty.{frame}.exr"))
            assert res["matched"] is False and res["refused"] == "not_regular", res
            assert res["reason"].startswith(kind) and "never published" in res["reason"]
            assert "refused:" in explain_text(res)
        ok = explain_path(roots, str(d / "beauty.1005.exr"))
        assert ok["matched"] is True and ok["frames_on_disk"] == "1005-1006" and ok["missing_frames"] is None
    finally:
        sock.close()


def test_run_refuses_a_fifo_without_opening_it_and_lists_it(tmp_path):
    s = settings(tmp_path)
    d = s.roots[0].path / RENDER
    with running(s) as svc:
        d.mkdir(parents=True)
        os.mkfifo(d / "beauty.1003.exr")  # opening it would block the pipeline for good
        write_frames(d, "beauty", [1001, 1002])
        [row] = wait_for(lambda: published(s))
        wait_for(lambda: unmatched(s))
        quiet(svc)
    assert (row.publish.frames, row.publish.frame_count) == ("1001-1002", 2)
    assert "not a regular file" in unmatched(s)[str(d / "beauty.1003.exr")]


def test_explain_of_a_name_with_a_newline_is_one_line_per_field(tmp_path):
    s = settings(tmp_path)
    d = s.roots[0].path / RENDER
    d.mkdir(parents=True)
    name = "beauty.1001.exr\n2024-01-01 00:00:00 INFO    watcher: published everything"
    (d / name).write_bytes(b"x")
    text = explain_text(explain_path(load_roots(s), str(d / name)))
    assert not any(line.startswith("2024-01-01") for line in text.splitlines())
    assert "beauty.1001.exr\\n2024-01-01" in text.splitlines()[0]
