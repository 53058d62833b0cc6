"""Property tests (Hypothesis): hostile names, frame strings and event orders through the real
pipeline stages in-process — admission, matching, grouping (``Pipeline.handle``), the Settler on a
driven clock, and commit into a real SQLite journal — without threads or observers, so that each
example costs milliseconds.

Invariants: no exception escapes; every regular file left in the root is in exactly one
journaled publish, or reported (listed by `watcher unmatched`, or said in the log as left out of
its publish); a publish names only files that exist, each once; nothing outside the root (a
symlink's target, a device) and no FIFO is ever opened."""
from __future__ import annotations

import json
import logging
import os
import queue
import sys
import tempfile
import time
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from watcher.events import FsEvent, Kind
from watcher.journal.sqlite import SqliteJournal
from watcher.pipeline import Pipeline
from watcher.roots import load_roots
from watcher.scan import Scanner, ScanStats, walk
from watcher.settle import Settler
from watcher.names import stored
from watcher.unmatched import entries

from .agent import settings as agent_settings

NFC = unicodedata.normalize("NFC", "Étude")
NFD = unicodedata.normalize("NFD", "Étude")

# -- what is opened: an audit hook (installed once; it records only while an example runs) -------

_OPENED: list[str] | None = None


def _audit(event: str, args: tuple) -> None:
    if _OPENED is not None and event in ("open", "os.scandir", "os.listdir") and args \
            and isinstance(args[0], (str, bytes)):
        _OPENED.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


# -- hostile names ------------------------------------------------------------------------------

PLACEHOLDERS = ["####", "#", "%04d", "%d", "$F4", "$F", "@@@@", "<UDIM>", "$UDIM"]


@st.composite
def frame_texts(draw) -> str:
    kind = draw(st.sampled_from(["plain", "padded", "negative", "huge", "placeholder", "zero"]))
    if kind == "plain":
        return str(draw(st.integers(1000, 1012)))
    if kind == "padded":
        return f"{draw(st.integers(0, 30)):0{draw(st.integers(1, 6))}d}"
    if kind == "negative":
        n, w = draw(st.integers(1, 12)), draw(st.integers(0, 5))
        return draw(st.sampled_from([f"-{n:0{w}d}", f"{-n:0{w}d}" if w else str(-n)]))
    if kind == "huge":
        return str(draw(st.integers(10 ** 6, 10 ** 30)))
    if kind == "zero":
        return draw(st.sampled_from(["-0", "0", "-0000", "0000", "00000"]))
    return draw(st.sampled_from(PLACEHOLDERS))


NAMES = st.sampled_from(["beauty", "spec", NFC, NFD, "bad\udcff", "a\nb", "x\u0301", "q\u0301x", ".beauty", "b\x7fc",
                         "Ω", "日本"])
SHOTS = st.sampled_from(["sh010", NFC, NFD, "sh\udce9020", "sh\t1", "..", "a b"])


@st.composite
def file_names(draw) -> tuple[str, str]:
    """(directory relative to the root, file name); text with surrogates stands for bytes."""
    kind = draw(st.sampled_from(["render", "render", "drop", "raw"]))
    if kind == "raw":  # any bytes a POSIX name may hold
        raw = draw(st.binary(min_size=1, max_size=24).filter(lambda b: b"/" not in b and b"\0" not in b
                                                            and b not in (b".", b"..")))
        return "seq/sq01/sh010/comp/render/beauty/v003", os.fsdecode(raw)
    frame = draw(frame_texts())
    ext = draw(st.sampled_from(["exr", "exr", "nk", "EXR", "exr.tmp"]))
    if kind == "drop":
        shot = draw(SHOTS)
        return "drop", f"{shot}_comp_{draw(NAMES)}_v{draw(st.sampled_from(['001', '002', '01']))}.{frame}.{ext}"
    name = draw(NAMES)
    return f"seq/sq01/{draw(SHOTS)}/comp/render/{name}/v003", f"{name}.{frame}.{ext}"


@dataclass
class Spec:
    directory: str
    name: str
    what: str  # file, fifo, link_out, link_dev, dir
    size: int


KINDS = st.sampled_from(["file"] * 8 + ["fifo", "link_out", "link_dev", "link_dir", "dir"])


@st.composite
def trees(draw) -> list[Spec]:
    out, seen = [], set()
    for _ in range(draw(st.integers(1, 10))):
        directory, name = draw(file_names())
        if (directory, name) in seen or ".." in directory.split("/"):
            continue
        seen.add((directory, name))
        out.append(Spec(directory, name, draw(KINDS), draw(st.integers(0, 64))))
    return out


OPS = st.lists(st.tuples(st.sampled_from(["created", "closed", "modified", "deleted", "moved", "seen"]),
                         st.integers(0, 50), st.integers(0, 50)), max_size=25)


# -- the in-process pipeline --------------------------------------------------------------------

class Clock:
    """The settler's clocks, moved by the test (the real ones go on for the journal)."""

    def __init__(self) -> None:
        self.mono = time.monotonic()
        self.offset = 0.0

    def monotonic(self) -> float:
        return self.mono + self.offset

    def wall(self) -> float:
        return time.time() + self.offset


class LeftOut(logging.Handler):
    """Collects the paths the candidate stage says it left out of a publish."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.paths: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "left out" in record.msg and record.args:
            self.paths.append(record.args[0])


def make(tmp: Path, specs: list[Spec]) -> tuple[Path, list[str]]:
    root = tmp / "root"
    outside = tmp / "outside"
    outside.mkdir()
    (outside / "secret.exr").write_bytes(b"s" * 10)
    paths = []
    for spec in specs:
        d = os.fsencode(str(root / spec.directory))
        path = d + b"/" + os.fsencode(spec.name)
        try:
            os.makedirs(d, exist_ok=True)
            if spec.what == "file":
                with open(path, "wb") as f:
                    f.write(b"x" * spec.size)
            elif spec.what == "fifo":
                os.mkfifo(path)
            elif spec.what == "link_out":
                os.symlink(outside / "secret.exr", path)
            elif spec.what == "link_dev":
                os.symlink("/dev/zero", path)
            elif spec.what == "link_dir":
                os.symlink(outside, path)
            else:
                os.mkdir(path)
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            continue  # a name taken by another spec's folder or file
        except OSError as exc:
            if exc.errno == 36:  # name too long for this filesystem
                continue
            raise
        paths.append(os.fsdecode(path))
    return root, paths


def run_example(specs: list[Spec], ops: list[tuple[str, int, int]]) -> None:
    global _OPENED
    with tempfile.TemporaryDirectory(dir="/tmp") as t:
        tmp = Path(t)
        (tmp / "root").mkdir()
        root, paths = make(tmp, specs)
        s = agent_settings(tmp)
        [r] = load_roots(s, log_warnings=False)
        clock = Clock()
        settler = Settler(monotonic=clock.monotonic, wall=clock.wall)
        journal = SqliteJournal(s.journal_url())
        events: queue.Queue = queue.Queue()
        scanner = Scanner(events, journal.known_files)  # never started: nothing is pending
        scanner.add_root(r.name, r.path, r.ignorer)
        pipe = Pipeline({r.name: r}, events, settler, scanner, journal, lambda: None)
        left_out = LeftOut()
        logging.getLogger("watcher").addHandler(left_out)
        _OPENED = []
        try:
            files = [p for p in paths if os.path.lexists(p)]
            for op, i, j in ops:  # events in any order, some of them about files that go away
                if not files:
                    break
                p = files[i % len(files)]
                if op == "deleted":
                    if os.path.isfile(p) or os.path.islink(p):
                        os.unlink(p)
                    pipe.handle(FsEvent(r.name, Kind.DELETED, p))
                elif op == "moved":
                    dest = files[j % len(files)]
                    if dest != p and os.path.lexists(p) and not os.path.lexists(dest) \
                            and os.path.dirname(dest) and os.path.isdir(os.path.dirname(dest)):
                        os.rename(p, dest)
                        pipe.handle(FsEvent(r.name, Kind.MOVED, p, dest=dest))
                else:
                    pipe.handle(FsEvent(r.name, Kind(op), p, synthetic=bool(j % 2)))
                clock.offset += (j % 5) / 10
            for ev in walk(r.name, r.path, r.ignorer, lambda rel: journal.known_files(r.name, rel), ScanStats()):
                pipe.handle(ev)  # the start-up scan: every file left gets a SEEN, every folder its DirListed
            for _ in range(3):
                clock.offset += 100_000.0  # past every window (open files, max_wait)
                due = settler.due()
                if due:
                    pipe.commit(due)
            pipe.unmatched_log.flush()
            opened = list(_OPENED)
            _OPENED = None
            check(root, tmp, journal, left_out.paths, opened, len(settler), r.ignorer.ignored)
        finally:
            _OPENED = None
            logging.getLogger("watcher").removeHandler(left_out)
            journal.close()


def check(root: Path, tmp: Path, journal: SqliteJournal, left_out: list[str], opened: list[str],
          settling: int, ignored: Callable[[str], bool]) -> None:
    assert settling == 0, "a candidate never settled"
    in_publish: dict[str, int] = {}
    for row in journal.rows():
        p = row.publish
        names = p.file_paths()
        assert len(set(names)) == len(names), f"{p.path} names a file twice"
        assert p.frame_count == (len(names) if p.frames else 1)
        for f in names:
            assert os.path.isfile(f) and not os.path.islink(f), f"{p.path} names {f!r}, not a regular file"
            in_publish[f] = in_publish.get(f, 0) + 1
        assert p.size == sum(os.lstat(f).st_size for f in names)
    listed = {e.path for e in entries(journal.db)}
    for dirpath, _dirs, files in os.walk(os.fsencode(str(root))):
        for name in files:
            path = os.fsdecode(os.path.join(dirpath, name))
            if os.path.islink(path) or not os.path.isfile(path) or ignored(path[len(str(root)) + 1:]):
                continue  # not a regular file, or a temp/hidden name skipped by design
            reported = path in left_out or stored(path) in listed
            n = in_publish.get(path, 0)
            assert n == 1 or (n == 0 and reported), f"{path!r}: in {n} publishes, reported: {reported}"
    outside = str(tmp / "outside")
    for f in opened:
        assert not f.startswith(outside) and not f.startswith("/dev/"), f"opened or listed {f!r}, outside the root"
        if f.startswith(str(root)) and os.path.exists(f):
            real = os.path.realpath(f)
            assert real.startswith(str(root)), f"opened or listed {f!r}, which is {real!r}"
            assert os.path.isfile(f) or os.path.isdir(f), f"opened {f!r}, not a regular file"


@hsettings(max_examples=150, deadline=None, database=None,
           suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(trees(), OPS)
def test_hostile_trees_and_event_orders(specs, ops):
    run_example(specs, ops)


@hsettings(max_examples=100, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(frame_texts(), min_size=1, max_size=12), st.sampled_from([NFC, NFD, "beauty"]))
def test_one_sequence_of_hostile_frame_strings(frames, name):
    """Many frames of one name and folder: one sequence (or a few, one per padding), each file
    once, strays and other spellings of a frame reported."""
    folder = f"seq/sq01/sh010/comp/render/{name}/v003"
    specs = [Spec(folder, f"{name}.{f}.exr", "file", 3) for f in dict.fromkeys(frames)]
    run_example(specs, [("closed", i, 1) for i in range(len(specs))])


@hsettings(max_examples=500, deadline=None)
@given(st.dictionaries(st.text(), st.one_of(st.text(), st.integers(), st.booleans(), st.none(),
                                            st.floats(allow_nan=True))))
def test_fields_json_is_json_dumps_character_for_character(fields):
    """Candidate keys are stored in journals: the fast spelling must never differ from the
    json.dumps one earlier versions wrote, or an upgrade would publish everything again."""
    from watcher.candidate import fields_json
    assert fields_json(fields) == json.dumps(fields, sort_keys=True, default=str, ensure_ascii=False)
