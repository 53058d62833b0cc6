"""Pipeline performance (issues #3 and #15): watcher against the tools a studio would otherwise
use, measured in the same run on the same trees.

    python bench/pipeline.py                 # all parts, ~16 min on 2 noisy cores
    python bench/pipeline.py --only 1d       # one part (1, 1d, 2, 3, 4, 5; repeatable)
    python bench/pipeline.py --quick         # small sizes, one repetition: a smoke run (~5 min)
    python bench/pipeline.py --markdown out.md
    python bench/pipeline.py --src ../other  # the agent runs another checkout's watcher (A/B a change)

1. Burst of 20,000 x 256 B render frames (50 existing dirs x 400): files/s PUBLISHED in the
   local registry (files of published publishes / (last published_at - writer t0 - sequence
   window)), files lost and duplicated, beside ``inotifywait -m -r -q -e close_write`` watching
   the same burst (and, for the record, in a run of its own). The writer is a separate process;
   CPU-seconds per burst are reported too. Then once each: the same 20,000 files as 2 sequences
   x 10,000 frames (1b), and with every directory created by the writer during the burst (1c).
1d. 10,000 single files (Nuke scripts, 50 existing shot folders x 200, settle 0.5 s): each file
   one publish; published rate beside inotifywait on the same burst, lost, duplicated and journal
   transactions per publish, on a SQLite journal and on a private PostgreSQL (tests/pg_server.py).
2. Latency from a file's last close to its publish in the local registry, minus the settle
   window; reference: inotifywait's own close -> line latency on the same writes.
3. Peak RSS (VmHWM) of an agent holding 100,000 frames in its settler; references: watchdog's
   DirectorySnapshot of the same tree and a plain list of the 100k paths.
4. Idle CPU over 60 s with 10,000 watched directories (native), beside watchdog's Observer with
   its default mask; and one polling cycle over 100,000 unchanged files: watcher's DirPoller
   against watchdog's PollingObserver cycle (DirectorySnapshot + DirectorySnapshotDiff).
5. First start over a large existing tree (built with os.mknod before the agent starts): time
   from spawning the agent to every candidate journaled and published, files/s and peak RSS, for
   1,000,000 frames in 1,000 sequences and for 200,000 single files (1M single files would take
   ~10 min here: the note extrapolates, marked as an estimate); reference: a bare scandir walk.

The agent runs as ``python -m watcher run`` in a subprocess (local backend, SQLite journal in a
temp dir unless PostgreSQL); everything about it is measured from outside: /proc/<pid>/stat and
/status, its status.json, and the journal's rows and timestamps (``created_at`` when a candidate
was journaled, ``published_at`` when the local registry took it). On 2+ cores the writer is
pinned to one CPU and the watchers (and the PostgreSQL server) to another (--no-pin to let the
scheduler place them). Repetitions are interleaved; figures are median (min-max). It is a
report, not a test: it exits 0 whatever the verdicts (2 only when inotifywait is missing or an
option is wrong). Every process, server and tree it starts is stopped and deleted on the way out,
Ctrl-C and SIGTERM included. Linux only (inotify, /proc).
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TEMPLATES = os.path.join(REPO, "tests", "data", "pipeline.yml")
SRC = REPO  # where the agent's ``watcher`` package comes from (--src: A/B another checkout)
CLK = os.sysconf("SC_CLK_TCK")
PAYLOAD = b"x" * 256


# -- writer subprocess (kept free of heavy imports: it is the bottleneck) ----------------------
def writer_main() -> None:
    """Spec on stdin, result JSON on stdout. kind=burst: write every file of every dir
    (``new_dirs``: makedirs each dir first); kind=spaced: one file, then a random pause."""
    import random

    spec = json.load(sys.stdin)
    if spec.get("cpu") is not None:
        os.sched_setaffinity(0, {spec["cpu"]})
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    out: dict = {}
    if spec["kind"] in ("burst", "files"):
        root = spec["root"]
        if spec["kind"] == "burst":  # the same frame names in every dir
            names = [spec["name_fmt"].format(frame=spec["first"] + i) for i in range(spec["files_per_dir"])]
            groups = [(os.path.join(root, d), names) for d in spec["dirs"]]
        else:  # kind=files: [dir, [names]] per directory
            groups = [(os.path.join(root, d), names) for d, names in spec["groups"]]
        t0 = time.time()
        for d, names in groups:
            if spec["new_dirs"]:
                os.makedirs(d)
            for name in names:
                with open(os.path.join(d, name), "wb") as fh:
                    fh.write(PAYLOAD)
        out["t1"] = time.time()
    else:
        rnd = random.Random(spec.get("seed", 1))
        closes = {}
        t0 = time.time()
        for p in spec["paths"]:
            with open(p, "wb") as fh:
                fh.write(PAYLOAD * 4)
            closes[p] = time.time()
            time.sleep(rnd.uniform(spec["gap_min"], spec["gap_max"]))
        out["closes"] = closes
        out["t1"] = time.time()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    out.update(t0=t0, user=ru1.ru_utime - ru0.ru_utime, sys=ru1.ru_stime - ru0.ru_stime)
    json.dump(out, sys.stdout)


if __name__ == "__main__" and len(sys.argv) > 1 and sys.argv[1] == "--_writer":
    writer_main()
    sys.exit(0)

# -- everything else ----------------------------------------------------------------------------
import argparse  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import sqlite3  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
from collections import Counter  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Callable  # noqa: E402

PROCS: list[subprocess.Popen] = []  # every process we started, so that an abort ends them
# On 2+ cores the writer gets CPU 0 and every watcher CPU 1, so that neither can slow the other
# down by taking its core (--no-pin to let the scheduler place them).
PIN: dict[str, int | None] = {"writer": None, "watcher": None, "server": None}  # server None: the watchers' CPU


def pin_watcher() -> None:
    if PIN["watcher"] is not None:
        os.sched_setaffinity(0, {PIN["watcher"]})


def run_writer(spec: dict) -> dict:
    spec = {**spec, "cpu": PIN["writer"]}
    p = subprocess.run([sys.executable, os.path.abspath(__file__), "--_writer"], input=json.dumps(spec),
                       capture_output=True, text=True, check=False)
    if p.returncode:
        raise RuntimeError(f"writer failed: {p.stderr.strip()[-2000:]}")
    return json.loads(p.stdout)


def proc_cpu(pid: int) -> float:
    """utime + stime of a whole process (all threads), seconds."""
    with open(f"/proc/{pid}/stat") as fh:
        rest = fh.read().rsplit(")", 1)[1].split()
    return (int(rest[11]) + int(rest[12])) / CLK


def proc_mem(pid: int) -> dict[str, float]:
    """VmHWM / VmRSS of a process in MB (10^6 bytes)."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmHWM:", "VmRSS:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0]) * 1024 / 1e6
    return out


def inotify_watches(pid: int) -> int:
    n = 0
    for fd in os.listdir(f"/proc/{pid}/fdinfo"):
        try:
            with open(f"/proc/{pid}/fdinfo/{fd}") as fh:
                n += sum(1 for line in fh if line.startswith("inotify wd:"))
        except OSError:
            pass
    return n


def stop_proc(p: subprocess.Popen, timeout: float = 20.0) -> None:
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    if p in PROCS:
        PROCS.remove(p)


def wait_until(pred: Callable[[], Any], timeout: float, every: float = 0.1, what: str = "condition") -> Any:
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not reached within {timeout:.0f} s")
        time.sleep(every)


class Journal:
    """Read-only view of an agent's journal from outside (SQLite file or PostgreSQL URL), for
    progress and the ledger checks. Counts its own statements, so that a PostgreSQL
    transaction count can leave them out."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.pg = url.startswith(("postgresql://", "postgres://"))
        self.queries = 0
        self._conn: Any = None

    def sql(self, query: str, args: tuple = ()) -> list[tuple]:
        if self._conn is None:
            if self.pg:
                import psycopg

                self._conn = psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            else:
                self._conn = sqlite3.connect(self.url[len("sqlite:///"):], timeout=30)
        self.queries += 1
        if self.pg:
            return self._conn.execute(query.replace("?", "%s"), args).fetchall()
        return self._conn.execute(query, args).fetchall()

    @staticmethod
    def _json(v: Any) -> dict:
        return v if isinstance(v, dict) else json.loads(v)

    def publishes(self) -> list[dict]:
        out = []
        for pid, status, payload, created, published in self.sql(
                "SELECT id, status, payload, created_at, published_at FROM publishes ORDER BY id"):
            d = self._json(payload)
            d.update(id=pid, status=status, created_at=created, published_at=published)
            out.append(d)
        return out

    def counts(self) -> dict[str, int]:
        """Publishes per status: cheap enough to poll with 20,000 rows."""
        return {s: int(n) for s, n in self.sql("SELECT status, count(*) FROM publishes GROUP BY status")}

    def published_files(self, roots: dict[str, str] | None = None) -> set[str] | None:
        """Every file of a ``published`` publish, from the ``files`` table: (root, dir, name) with
        ``dir`` relative to the root named ``root`` (``roots``: name -> path), or the older
        absolute (dir, name). None when neither form is there (the caller then falls back to the
        payloads)."""
        roots = roots or {}
        try:
            rows = self.sql("SELECT f.root, f.dir, f.name FROM files f JOIN publishes p ON p.id = f.publish_id "
                            "WHERE p.status='published'")
            return {os.path.join(roots.get(r, ""), d, n) if not os.path.isabs(d) else os.path.join(d, n)
                    for r, d, n in rows}
        except Exception:  # noqa: BLE001 - no root column: the absolute form
            pass
        try:
            return {os.path.join(d, n) for d, n in self.sql(
                "SELECT f.dir, f.name FROM files f JOIN publishes p ON p.id = f.publish_id "
                "WHERE p.status='published'")}
        except Exception:  # noqa: BLE001 - schema moved on again
            return None

    def registry_paths(self) -> list[str]:
        return [self._json(p).get("path", "") for (p,) in self.sql("SELECT payload FROM registry")]

    def published_twice(self) -> int:
        """Publishes with more than one 'published' event: published twice under one key (the
        local registry's upsert would hide it)."""
        return len(self.sql("SELECT publish_id FROM events WHERE status='published' GROUP BY publish_id "
                            "HAVING count(*) > 1"))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Agent:
    """``python -m watcher run`` in a subprocess, on a config written into ``work``. ``journal``:
    a URL (PostgreSQL) instead of the default SQLite file in ``work``."""

    def __init__(self, work: Path, root: Path, *, settle: float, seq: float, journal: str | None = None,
                 **extra: Any) -> None:
        self.work, self.root = work, root
        work.mkdir(parents=True, exist_ok=True)
        self.db = work / "journal.db"
        self.state = work / "state"
        self.cfg = work / "watcher.yml"
        self.settle, self.seq = settle, seq
        self.journal_url = journal or f"sqlite:///{self.db}"
        cfg = {"roots": [{"name": "bench", "path": str(root), "templates": TEMPLATES}],
               "settle_seconds": settle, "sequence_settle_seconds": seq, "journal": self.journal_url,
               "state_dir": str(self.state), "tracker": {"backend": "local"}, **extra}
        self.cfg.write_text(json.dumps(cfg, indent=1))  # JSON is YAML
        self.logf = work / "agent.log"
        self.proc: subprocess.Popen | None = None
        self.j = Journal(self.journal_url)

    def start(self, ready_timeout: float = 60.0) -> "Agent":
        self.t_start = time.monotonic()
        self.t_start_wall = time.time()
        env = {k: v for k, v in os.environ.items() if k != "WATCHER_JOURNAL"}  # the config's journal, always
        with open(self.logf, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "watcher", "-c", str(self.cfg), "run"],
                                         cwd=SRC, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin_watcher,
                                         env=env)
        PROCS.append(self.proc)
        # status.json is first written 2 s after start(), i.e. once the observer holds its watches.
        wait_until(lambda: self._alive() and (self.state / "status.json").exists(), ready_timeout,
                   what="agent start-up (status.json)")
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_tail()}")
        return True

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def status(self) -> dict:
        try:
            return json.loads((self.state / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def cpu(self) -> float:
        return proc_cpu(self.pid)

    def mem(self) -> dict[str, float]:
        return proc_mem(self.pid)

    def sql(self, query: str, args: tuple = ()) -> list[tuple]:
        return self.j.sql(query, args)

    def publishes(self) -> list[dict]:
        return self.j.publishes()

    def published_files(self) -> set[str]:
        return self.j.published_files({"bench": str(self.root)}) or set()

    def wal_commits(self) -> int | None:
        """SQLite write transactions so far: the WAL index header's change counter (``iChange``,
        bytes 8-12 of the -shm file, +1 per committed write transaction, kept across checkpoints).
        Read from outside while the agent holds the database open; None otherwise."""
        try:
            with open(f"{self.db}-shm", "rb") as fh:
                head = fh.read(12)
        except OSError:
            return None
        return int.from_bytes(head[8:12], sys.byteorder) if len(head) == 12 else None

    def warm(self, rel: str, timeout: float = 30.0) -> None:
        """One Nuke script end to end: every stage (and each journal connection) is live."""
        p = self.root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(PAYLOAD)
        wait_until(lambda: self._alive() and any(x["path"] == str(p) and x["status"] == "published"
                                                 for x in self.publishes()), timeout, 0.05, "warm-up publish")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.logf.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def log_count(self, needle: str) -> int:
        try:
            return self.logf.read_text(errors="replace").count(needle)
        except OSError:
            return 0

    def stop(self) -> None:
        self.j.close()
        if self.proc is not None:
            stop_proc(self.proc)


class Inotifywait:
    """``inotifywait -m -r -q -e close_write --format %w%f``; a reader thread stamps each line
    with time.time() as it is read."""

    CMD = ["inotifywait", "-m", "-r", "-q", "-e", "close_write", "--format", "%w%f"]

    def __init__(self, root: Path) -> None:
        self.root = root
        self.lines: list[tuple[float, str]] = []
        self.proc = subprocess.Popen(self.CMD + [str(root)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     text=True, bufsize=1, preexec_fn=pin_watcher)
        PROCS.append(self.proc)
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()
        time.sleep(0.5)  # as in the research; then prove the watches are live with a sentinel
        sentinel = root / ".bench-sentinel"
        sentinel.write_bytes(b"")
        wait_until(lambda: any(p == str(sentinel) for _, p in list(self.lines)), 20, 0.02, "inotifywait watches")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append((time.time(), line.rstrip("\n")))

    def cpu(self) -> float:
        return proc_cpu(self.proc.pid)

    def stop(self) -> None:
        stop_proc(self.proc, 5)


# -- statistics and the report ---------------------------------------------------------------
def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def pct(xs: list[float], q: float) -> float:
    """Nearest-rank percentile (p99 of 200 values is the 198th)."""
    s = sorted(xs)
    if not s:
        return float("nan")
    k = max(0, min(len(s) - 1, int(-(-q * len(s) // 100)) - 1))
    return s[k]


def mmm(xs: list[float], fmt: str = "{:.2f}") -> str:
    """median (min-max); a single value alone."""
    xs = [x for x in xs if x == x]
    if not xs:
        return "n/a"
    if len(xs) == 1:
        return fmt.format(xs[0])
    return f"{fmt.format(med(xs))} ({fmt.format(min(xs))}-{fmt.format(max(xs))})"


@dataclass
class Row:
    part: str
    metric: str
    watcher: str
    target: str
    reference: str
    verdict: str  # PASS / FAIL / info


@dataclass
class Report:
    rows: list[Row] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *a: str) -> None:
        self.rows.append(Row(*a))
        r = self.rows[-1]
        print(f"  -> [{r.part}] {r.metric}: watcher {r.watcher} | target {r.target} | reference {r.reference} "
              f"| {r.verdict}", flush=True)

    def note(self, text: str) -> None:
        self.notes.append(text)
        print(f"  note: {text}", flush=True)

    def table(self) -> str:
        heads = ("#", "metric", "watcher", "target", "reference (same run)", "verdict")
        cells = [heads] + [(r.part, r.metric, r.watcher, r.target, r.reference, r.verdict) for r in self.rows]
        widths = [max(len(c[i]) for c in cells) for i in range(len(heads))]
        line = "  ".join("-" * w for w in widths)
        out = ["  ".join(h.ljust(w) for h, w in zip(heads, widths)), line]
        out += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells[1:]]
        return "\n".join(out)

    def print_results(self, title: str, quick: bool) -> None:
        """The table, the notes and the verdict line, as every bench prints them at the end."""
        print(f"\n== results ({title})\n")
        print(self.table())
        if self.notes:
            print()
            for n in self.notes:
                print(f"- {n}")
        fails = [r for r in self.rows if r.verdict in ("FAIL", "ERROR")]
        missed = f"{len(fails)} target(s) missed or errored: " + ", ".join(f"[{r.part}] {r.metric}" for r in fails)
        print(f"\nverdict: {'all targets met' if not fails else missed}"
              f"{' (quick sizes: indicative only)' if quick else ''}")

    def markdown(self, header: str) -> str:
        out = [header, "", "| # | metric | watcher | target | reference (same run) | verdict |",
               "|---|---|---|---|---|---|"]
        for r in self.rows:
            out.append(f"| {r.part} | {r.metric} | {r.watcher} | {r.target} | {r.reference} | **{r.verdict}** |"
                       if r.verdict in ("PASS", "FAIL") else
                       f"| {r.part} | {r.metric} | {r.watcher} | {r.target} | {r.reference} | {r.verdict} |")
        if self.notes:
            out += ["", "Notes:", ""] + [f"- {n}" for n in self.notes]
        return "\n".join(out) + "\n"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# -- trees ----------------------------------------------------------------------------------
def frame_dir(shot: int, seq: str = "sq01") -> str:
    return f"seq/{seq}/sh{shot:03d}/comp/render/main/v001"


FRAME_FMT = "main.{frame:04d}.exr"


def mknod_frames(root: Path, dirs: int, frames: int, first: int = 1) -> list[str]:
    """Empty regular files, one syscall each (the research's way to build big trees fast)."""
    out = []
    for d in range(first, dirs + 1):
        path = root / frame_dir(d)
        path.mkdir(parents=True, exist_ok=True)
        for i in range(frames):
            os.mknod(path / FRAME_FMT.format(frame=1001 + i))
        out.append(str(path))
    return out


def _mknod_range(root: str, lo: int, hi: int, frames: int) -> int:
    mknod_frames(Path(root), hi, frames, lo)
    return hi - lo + 1


_BIG: dict[tuple[str, int, int], Path] = {}


def big_tree(tmp: Path, dirs: int, frames: int) -> Path:
    """The 100 x 1000 frame tree shared by parts 3 and 4b, built once by two processes."""
    from concurrent.futures import ProcessPoolExecutor

    key = (str(tmp), dirs, frames)
    if key not in _BIG:
        root = tmp / f"big-{dirs}x{frames}"
        t0 = time.monotonic()
        half = dirs // 2
        with ProcessPoolExecutor(2) as ex:
            list(ex.map(_mknod_range, [str(root)] * 2, [1, half + 1], [half, dirs], [frames] * 2))
        print(f"  {dirs * frames:,} empty frames made in {time.monotonic() - t0:.1f} s (os.mknod, 2 processes)",
              flush=True)
        _BIG[key] = root
    return _BIG[key]


def rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


# -- part 1: burst --------------------------------------------------------------------------
@dataclass(frozen=True)
class Burst:
    """``dirs`` sequences of ``per`` frames each, numbered from ``first`` (4-digit padding)."""

    dirs: int
    per: int
    first: int = 1001
    new_dirs: bool = False
    template = "render"

    @property
    def n(self) -> int:
        return self.dirs * self.per

    @property
    def sequences(self) -> int:
        return self.dirs

    def spec(self, root: Path) -> dict:
        return {"kind": "burst", "root": str(root), "dirs": [frame_dir(d) for d in range(1, self.dirs + 1)],
                "files_per_dir": self.per, "first": self.first, "name_fmt": FRAME_FMT, "new_dirs": self.new_dirs}

    def tree(self, base: Path) -> Path:
        root = base / "root"
        (root / "seq" / "sq01").mkdir(parents=True)
        if not self.new_dirs:
            for d in range(1, self.dirs + 1):
                (root / frame_dir(d)).mkdir(parents=True)
        return root

    def expected(self, root: Path) -> set[str]:
        return {os.path.join(root, frame_dir(d), FRAME_FMT.format(frame=self.first + i))
                for d in range(1, self.dirs + 1) for i in range(self.per)}


def work_dir(shot: int, seq: str = "sq01") -> str:
    return f"seq/{seq}/sh{shot:03d}/comp/work"


def nuke_names(shot: int, per: int) -> list[str]:
    """Template ``nuke``: seq/{Sequence}/{Shot}/{Step}/work/{Shot}_{name}_v{version}.nk, names n1..nN."""
    return [f"sh{shot:03d}_n{i}_v001.nk" for i in range(1, per + 1)]


@dataclass(frozen=True)
class Singles:
    """``shots`` existing shot work folders, ``per`` Nuke scripts written into each: every file
    is a publish of its own."""

    shots: int
    per: int
    new_dirs: bool = False
    template = "nuke"
    sequences = 0

    @property
    def n(self) -> int:
        return self.shots * self.per

    def spec(self, root: Path) -> dict:
        return {"kind": "files", "root": str(root), "new_dirs": self.new_dirs,
                "groups": [[work_dir(k), nuke_names(k, self.per)] for k in range(1, self.shots + 1)]}

    def tree(self, base: Path) -> Path:
        root = base / "root"
        (root / "seq" / "sq01").mkdir(parents=True)
        if not self.new_dirs:
            for k in range(1, self.shots + 1):
                (root / work_dir(k)).mkdir(parents=True)
        return root

    def expected(self, root: Path) -> set[str]:
        return {os.path.join(root, work_dir(k), name) for k in range(1, self.shots + 1)
                for name in nuke_names(k, self.per)}


Workload = Any  # Burst | Singles
WARM = "/seq/sq00/"  # warm-up files live under sq00: never counted


def p1_writer_alone(base: Path, b: Workload) -> dict:
    root = b.tree(base)
    w = run_writer(b.spec(root))
    rmtree(base)
    return {"t": w["t1"] - w["t0"], "rate": b.n / (w["t1"] - w["t0"]), "wcpu": w["user"] + w["sys"],
            "wsys": w["sys"]}


def iw_collect(iw: Inotifywait, expected: set[str], t0: float, timeout: float) -> dict:
    """First line per expected file; waits until all came or ``timeout`` passed (the rest is lost)."""
    seen: dict[str, float] = {}
    read = [0]

    def done() -> bool:
        lines = iw.lines[read[0]:]
        read[0] += len(lines)
        for t, p in lines:
            if p in expected and p not in seen:
                seen[p] = t
        return len(seen) >= len(expected)

    try:
        wait_until(done, timeout, 0.1)
    except TimeoutError:
        pass
    t_last = max(seen.values()) - t0 if seen else float("nan")
    return {"t": t_last, "rate": len(seen) / t_last, "lost": len(expected) - len(seen)}


def p1_inotifywait(base: Path, b: Workload) -> dict:
    root = b.tree(base)
    expected = b.expected(root)
    iw = Inotifywait(root)
    try:
        cpu0 = iw.cpu()
        w = run_writer(b.spec(root))
        out = iw_collect(iw, expected, w["t0"], 30)
        out["cpu"] = iw.cpu() - cpu0
    finally:
        iw.stop()
    rmtree(base)
    return {**out, "writer": w["t1"] - w["t0"], "wcpu": w["user"] + w["sys"]}


# -- PostgreSQL (parts 1d and bench/agents.py) ----------------------------------------------
class Pg:
    """A private PostgreSQL (tests/pg_server.py: initdb + pg_ctl on a free port, fsync off), one
    fresh database per run, and the counters that give journal transactions per publish."""

    def __init__(self) -> None:
        if REPO not in sys.path:
            sys.path.insert(0, REPO)
        from tests.pg_server import start_postgres

        # Under /tmp (not our 0700 temp dir): the server runs as the 'postgres' user when we are root.
        self.server = start_postgres(tempfile.gettempdir(), max_connections=100)
        PGS.append(self)
        self.pin()

    def pin(self) -> None:
        """The server (postmaster, hence every backend it forks) on the watchers' CPU: the
        journal's work is the agents' work, as it is in-process with SQLite."""
        cpu = PIN["server"] if PIN["server"] is not None else PIN["watcher"]
        if cpu is None:
            return
        try:
            pm = int((self.server.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return
        pids = [pm]
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        if int(fh.read().rsplit(")", 1)[1].split()[1]) == pm:
                            pids.append(int(d))
                except (OSError, ValueError, IndexError):
                    pass
        for pid in pids:
            try:
                os.sched_setaffinity(pid, {cpu})
            except OSError:
                pass

    def new_db(self) -> tuple[str, str]:
        name = self.server.create_db()
        return name, self.server.url(name)

    def counters(self, db: str) -> dict[str, int]:
        """Transactions committed in ``db`` (pg_stat_database, all of them, reads too) and write
        transactions in the cluster (xids assigned: txid_current() moves once per writing
        transaction; this call takes one itself)."""
        self.server.execute("SELECT pg_stat_clear_snapshot()")
        [(commits, rollbacks)] = self.server.execute(
            "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname=%s", (db,))
        [(xid,)] = self.server.execute("SELECT txid_current()")
        out = {"commits": int(commits), "rollbacks": int(rollbacks), "xid": int(xid)}
        # Scans of the journal's tables (statistics as flushed): how much each statement reads.
        # One autocommit statement of ours in that database (left out by the caller).
        import psycopg

        with psycopg.connect(self.server.url(db), autocommit=True, connect_timeout=10) as c:
            row = c.execute("SELECT coalesce(sum(seq_scan), 0), coalesce(sum(seq_tup_read), 0), "
                            "coalesce(sum(idx_scan), 0), coalesce(sum(idx_tup_fetch), 0) "
                            "FROM pg_stat_user_tables").fetchone()
        out.update(seq_scan=int(row[0]), seq_rows=int(row[1]), idx_scan=int(row[2]), idx_rows=int(row[3]))
        return out

    def cpu(self) -> float:
        """CPU-seconds of the whole server (postmaster and every live backend)."""
        try:
            pm = int((self.server.data / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return 0.0
        total = 0.0
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as fh:
                        rest = fh.read().rsplit(")", 1)[1].split()
                    if int(d) == pm or int(rest[1]) == pm:
                        total += (int(rest[11]) + int(rest[12])) / CLK
                except (OSError, ValueError, IndexError):
                    pass
        return total

    def stop(self) -> None:
        if self in PGS:
            PGS.remove(self)
        self.server.stop()


PGS: list[Pg] = []  # servers to stop on the way out


def start_pg() -> tuple[Pg | None, str]:
    try:
        return Pg(), ""
    except Exception as exc:  # noqa: BLE001 - reported as the row's reason
        return None, f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


def ledger_check(j: Journal, wl: Workload, expected: set[str], root: Path) -> dict:
    """What the journal says about a burst: files published, lost, duplicated, the last publish."""
    pubs = [x for x in j.publishes() if x.get("template") == wl.template and WARM not in x.get("path", "")]
    done = [x for x in pubs if x["status"] == "published"]
    files = j.published_files({"bench": str(root)})
    if files is None:  # no (dir, name) file records: single files by payload path, frames by whole sequences
        files = {x["path"] for x in done if not wl.sequences}
        if wl.sequences:
            for x in done:
                if x.get("frame_count") == wl.per and not x.get("missing_frames"):
                    d = os.path.dirname(x["path"])
                    files |= {p for p in expected if os.path.dirname(p) == d}
    got = files & expected
    by_path = Counter(x["path"] for x in pubs)
    reg = Counter(p for p in j.registry_paths() if p and WARM not in p)
    dup_rows = sum(c - 1 for c in by_path.values() if c > 1)
    dup_reg = sum(c - 1 for c in reg.values() if c > 1)
    twice = j.published_twice()
    t_last = max((x["published_at"] or 0.0) for x in done) if done else float("nan")
    bad = [x for x in done if wl.sequences and (x.get("missing_frames") or x.get("frame_count") != wl.per)]
    return {"got": len(got), "lost": len(expected) - len(got), "publishes": len(pubs), "published": len(done),
            "dup": dup_rows + dup_reg + twice, "dup_rows": dup_rows, "dup_reg": dup_reg, "twice": twice,
            "registry": sum(reg.values()), "t_last": t_last, "incomplete": len(bad),
            "created_last": max((x["created_at"] for x in pubs), default=float("nan"))}


def run_burst(base: Path, wl: Workload, settle: float, seq: float, *, agents: int = 1,
              pg: Pg | None = None) -> dict:
    """One burst through ``agents`` watcher agents (one tree, one journal: SQLite for one agent
    without ``pg``, else a fresh PostgreSQL database), with inotifywait on the same burst.
    Published rate = files published / (last publish - writer t0 - window), window being the
    sequence window for frames and the settle window for single files."""
    root = wl.tree(base)
    expected = wl.expected(root)
    db, url = pg.new_db() if pg else (None, None)
    if url is None and agents > 1:
        raise ValueError("several agents need a shared (PostgreSQL) journal")
    ags = [Agent(base / f"agent{i}", root, settle=settle, seq=seq, journal=url, rescan_interval=0)
           for i in range(agents)]
    j = Journal(ags[0].journal_url)
    window = seq if wl.sequences else settle
    iw = None
    try:
        for a in ags:
            a.start()
        # Warm every stage; with several agents, enough files that each is likely to take one.
        for k in range(agents):
            ags[k].warm(f"seq/sq00/sh000/comp/work/sh000_warm{k}_v001.nk")
        for a in ags:
            a.j.close()
        time.sleep(1.2 if pg else 0.2)  # PostgreSQL flushes a backend's statistics at most once a second
        c0 = pg.counters(db) if pg else {"wal": ags[0].wal_commits()}
        q0 = j.queries
        pg_cpu0 = pg.cpu() if pg else 0.0
        iw = Inotifywait(root)  # the same burst, seen by both at once (its sentinel is hidden: ignored)
        cpu0 = [a.cpu() for a in ags]
        w = run_writer(wl.spec(root))
        same = iw_collect(iw, expected, w["t0"], 30)
        iw.stop()
        last = {"state": None, "cpu": sum(a.cpu() for a in ags), "moved": time.monotonic()}

        def settled() -> bool:
            for a in ags:
                a._alive()
            if wl.sequences:
                rs = [x for x in j.publishes() if x.get("template") == wl.template]
                state: tuple = (len(rs), sum(1 for x in rs if x["status"] == "published"),
                                sum(x.get("frame_count") or 0 for x in rs))
                complete = state[1] == len(rs) and state[2] >= len(expected)
            else:
                c = j.counts()
                state = tuple(sorted(c.items()))
                complete = c.get("published", 0) >= len(expected) + agents and sum(c.values()) == c.get("published", 0)
            cpu = sum(a.cpu() for a in ags)
            if state != last["state"] or cpu - last["cpu"] > 0.05 * agents:  # journal moved, or an agent is busy
                last.update(state=state, moved=time.monotonic())
            last["cpu"] = cpu
            return complete or time.monotonic() - last["moved"] > max(10.0, 3 * seq)  # stuck: count the rest lost

        wait_until(settled, 900, 0.25, "watcher burst")
        cpu = sum(a.cpu() for a in ags) - sum(cpu0)
        pg_cpu = (pg.cpu() - pg_cpu0) if pg else 0.0
        wal1 = None if pg else ags[0].wal_commits()
        led = ledger_check(j, wl, expected, root)
        rescans = sum(r.get("rescans", 0) for a in ags for r in a.status().get("roots", {}).values())
        overflows = sum(a.log_count("inotify queue overflow") for a in ags)
        hwm = max(a.mem().get("VmHWM", 0) for a in ags)
        own = j.queries - q0
        j.close()
    finally:
        if iw:
            iw.stop()
        for a in ags:
            a.stop()
        j.close()
    tx: dict[str, float] = {}
    if pg:
        time.sleep(1.2)  # the agents' backends flush their statistics as they exit
        c1 = pg.counters(db)
        # our own polling statements are autocommit transactions in that database: left out
        tx = {"commits": c1["commits"] + c1["rollbacks"] - c0["commits"] - c0["rollbacks"] - own - 1,
              "writes": c1["xid"] - c0["xid"] - 1, "own": own,
              **{k: c1[k] - c0[k] for k in ("seq_scan", "seq_rows", "idx_scan", "idx_rows")}}
        try:
            pg.server.drop_db(db)
        except Exception:  # noqa: BLE001
            pass
    elif c0.get("wal") is not None and wal1 is not None:
        tx = {"writes": wal1 - c0["wal"]}
    rmtree(base)
    n_pub = led["published"] or 1
    t_pub = led["t_last"] - w["t0"]
    t_seen = led["created_last"] - window - w["t0"]
    rate = led["got"] / (t_pub - window)
    return {"rate": rate, "t_pub": t_pub, "t_eff": t_pub - window, "seen_rate": led["got"] / t_seen,
            "t_seen": t_seen, "lost": led["lost"], "dup": led["dup"], "led": led, "cpu": cpu, "pg_cpu": pg_cpu,
            "publishes": led["publishes"], "incomplete": led["incomplete"], "rescans": rescans,
            "overflows": overflows, "writer": w["t1"] - w["t0"], "wcpu": w["user"] + w["sys"], "hwm": hwm,
            "same": same, "same_ratio": rate / same["rate"], "window": window,
            "tx_pub": {k: v / n_pub for k, v in tx.items() if k != "own"}, "tx": tx, "agents": agents}


def p1_watcher(base: Path, b: Workload, settle: float, seq: float) -> dict:
    return run_burst(base, b, settle, seq)


def fmt_dup(r: dict) -> str:
    led = r["led"]
    return f"{r['dup']} (rows {led['dup_rows']}, registry {led['dup_reg']}, published twice {led['twice']})"


def part1(rep: Report, tmp: Path, quick: bool, reps: int) -> None:
    main = Burst(20, 250) if quick else Burst(50, 400)
    n = main.n
    settle, seq = 0.2, 1.0
    print(f"\n== 1. burst of {n:,} x 256 B frames ({main.dirs} existing dirs x {main.per}), n={reps}, interleaved",
          flush=True)
    res: dict[str, list[dict]] = {"alone": [], "iw": [], "w": []}
    for i in range(reps):
        b = tmp / f"p1-{i}"
        res["alone"].append(p1_writer_alone(b / "alone", main))
        res["iw"].append(p1_inotifywait(b / "iw", main))
        res["w"].append(p1_watcher(b / "w", main, settle, seq))
        a, iw, w = res["alone"][-1], res["iw"][-1], res["w"][-1]
        print(f"  rep {i + 1}: writer alone {a['t']:.2f} s ({a['rate']:.0f}/s, cpu {a['wcpu']:.2f} s) | "
              f"inotifywait alone: last {iw['t']:.2f} s (writer {iw['writer']:.2f} s) lost {iw['lost']} cpu "
              f"{iw['cpu']:.2f} s | watcher: published {w['rate']:,.0f}/s (last publish {w['t_pub']:.2f} s after t0, "
              f"window {seq} s; writer {w['writer']:.2f} s, inotifywait on the same burst {w['same']['t']:.2f} s = "
              f"{w['same']['rate']:,.0f}/s) seen {w['t_seen']:.2f} s lost {w['lost']} dup {w['dup']} cpu "
              f"{w['cpu']:.2f} s publishes {w['publishes']} rescans {w['rescans']}", flush=True)
    A, I, W = res["alone"], res["iw"], res["w"]
    ratios = [w["rate"] / i["rate"] for w, i in zip(W, I)]
    same = [w["same_ratio"] for w in W]
    lost = [w["lost"] for w in W]
    dup = [w["dup"] for w in W]
    rep.add("1", f"files/s PUBLISHED, {n // 1000}k burst: files in the local registry / (last publish - writer "
                 f"t0 - {seq} s window)",
            mmm([w["rate"] for w in W], "{:,.0f}"), ">= 0.5x inotifywait",
            f"inotifywait same burst {mmm([w['same']['rate'] for w in W], '{:,.0f}')} events/s, own run "
            f"{mmm([i['rate'] for i in I], '{:,.0f}')}; writer alone {mmm([a['rate'] for a in A], '{:,.0f}')}",
            verdict(med(same) >= 0.5))
    rep.add("1", "published rate / inotifywait's rate on the same burst", mmm(same), ">= 0.5", "1",
            verdict(med(same) >= 0.5))
    rep.add("1", "files lost (not in a published publish) / duplicated, per rep", " ".join(map(str, lost)) + " / "
            + " ".join(map(str, dup)), "0 / 0", "inotifywait lost " + " ".join(str(i["lost"]) for i in I),
            verdict(not any(lost) and not any(dup)))
    rep.add("1", "files/s seen (journaled; max created_at - window): not the figure, for the record",
            mmm([w["seen_rate"] for w in W], "{:,.0f}"), "-", "-", "info")
    rep.add("1", "published rate / inotifywait in its own run (same rep; writer speed differs)", mmm(ratios), "-",
            "1", "info")
    rep.add("1", f"CPU-s per {n // 1000}k files (whole agent: observe..publish)", mmm([w["cpu"] for w in W]),
            "-", f"inotifywait {mmm([i['cpu'] for i in I])}; writer {mmm([a['wcpu'] for a in A])}", "info")
    rep.add("1", "CPU-bound capacity, files per agent CPU-second", mmm([n / w["cpu"] for w in W], "{:,.0f}"), "-",
            f"writer alone {mmm([a['rate'] for a in A], '{:,.0f}')} files/s", "info")
    rep.add("1", "last publish after the writer's last close, beyond the window (s)",
            mmm([w["t_eff"] - w["writer"] for w in W]), "-",
            f"inotifywait last line {mmm([i['t'] - i['writer'] for i in I])}", "info")
    rep.add("1", "SQLite write transactions per publish (WAL iChange)",
            mmm([w["tx_pub"].get("writes", float("nan")) for w in W], "{:.1f}"), "-", "-", "info")
    cap = [n / w["cpu"] for w in W if w["cpu"] > 0]
    if not quick:
        rep.note("part 1 verdict: the target compares with inotifywait watching the same burst (both see one "
                 "writer). On this shared VM the same writer's speed varies several-fold from one run to the next, "
                 "so rates from separate runs (shown as 'own run') are mostly writer noise.")
    rep.note(f"part 1: the writer alone wrote {n:,} files in {mmm([a['t'] for a in A])} s "
             f"({mmm([a['wsys'] for a in A])} s of it kernel time); with inotify readers attached the same writer took "
             f"{mmm([i['writer'] for i in I])} s (inotifywait alone) and {mmm([w['writer'] for w in W])} s (watcher + "
             f"inotifywait). CPU-bound capacity from CPU-seconds: watcher "
             f"~{mmm(cap, '{:,.0f}')} files/s (whole pipeline, 2 events/file), inotifywait "
             f"~{mmm([n / i['cpu'] for i in I if i['cpu'] > 0], '{:,.0f}')} events/s. "
             f"Published = publishes.published_at in the journal, the local registry's row written in the same "
             f"step; the rate counts files of published publishes (files table) over (last published_at - writer "
             f"t0 - {seq} s sequence window). Writer t0 -> all published {mmm([w['t_pub'] for w in W])} s. "
             f"Publishes per burst {mmm([w['publishes'] for w in W], '{:.0f}')} (expected {main.dirs}), "
             f"incomplete {sum(w['incomplete'] for w in W)}, duplicates {[fmt_dup(w) for w in W]}, rescans "
             f"{[w['rescans'] for w in W]}, inotify overflows {[w['overflows'] for w in W]}, agent VmHWM "
             f"{mmm([w['hwm'] for w in W], '{:.0f}')} MB.")
    # The same number of files in a few long sequences, then in directories the writer creates (n=1 each).
    others = [("1b", Burst(2, 2500, first=0) if quick else Burst(2, 10_000, first=0),
               "long sequences: {d} dirs x {p:,} frames"),
              ("1c", Burst(main.dirs, main.per, new_dirs=True), "new dirs: {d} dirs x {p} frames, each made by the writer")]
    for tag, bb, title in others:
        label = title.format(d=bb.dirs, p=bb.per)
        print(f"== {tag}. {label} (n=1)", flush=True)
        base = tmp / f"p{tag}"
        iw = p1_inotifywait(base / "iw", bb)
        w = p1_watcher(base / "w", bb, settle, seq)
        print(f"  inotifywait alone: last {iw['t']:.2f} s (writer {iw['writer']:.2f} s) lost {iw['lost']} cpu "
              f"{iw['cpu']:.2f} s | watcher: published {w['rate']:,.0f}/s (last publish {w['t_pub']:.2f} s; writer "
              f"{w['writer']:.2f} s, inotifywait on the same burst {w['same']['t']:.2f} s, lost {w['same']['lost']}) "
              f"lost {w['lost']} dup {w['dup']} cpu {w['cpu']:.2f} s publishes {w['publishes']} incomplete "
              f"{w['incomplete']} rescans {w['rescans']}", flush=True)
        rep.add(tag, f"{label}: files/s published / lost / duplicated", f"{w['rate']:,.0f} / {w['lost']} / {w['dup']}",
                ">= 0.5x inotifywait / 0 / 0",
                f"inotifywait same burst {w['same']['rate']:,.0f} / {w['same']['lost']} lost, own run "
                f"{iw['rate']:,.0f} / {iw['lost']}",
                verdict(w["same_ratio"] >= 0.5 and w["lost"] == 0 and w["dup"] == 0))
        rep.note(f"part {tag} ({bb.n:,} files): published rate / inotifywait on the same burst {w['same_ratio']:.2f}, "
                 f"/ its own run {w['rate'] / iw['rate']:.2f}; seen (journaled) rate {w['seen_rate']:,.0f}/s; last "
                 f"publish {w['t_eff'] - w['writer']:.2f} s after the writer's last close beyond the {seq} s window "
                 f"(inotifywait {iw['t'] - iw['writer']:.2f} s); watcher CPU {w['cpu']:.1f} s, i.e. "
                 f"~{bb.n / w['cpu']:,.0f} files per CPU-second (inotifywait {iw['cpu']:.2f} s); {w['publishes']} "
                 f"publishes for {bb.dirs} sequences ({w['incomplete']} incomplete); the writer took "
                 f"{w['writer']:.1f} s in the watcher run, {iw['writer']:.1f} s in the inotifywait run.")


# -- part 1d: single files, SQLite and PostgreSQL ---------------------------------------------
def part1d(rep: Report, tmp: Path, quick: bool, reps: int) -> None:
    wl = Singles(20, 100) if quick else Singles(50, 200)
    settle = 0.5
    print(f"\n== 1d. single files: {wl.n:,} Nuke scripts into {wl.shots} existing shot folders, settle {settle} s, "
          f"SQLite and PostgreSQL journals, n={reps}, interleaved", flush=True)
    pg, why = start_pg()
    res: dict[str, list[dict]] = {"sqlite": [], "pg": []}
    try:
        for i in range(reps):
            for kind in ("sqlite", "pg"):
                if kind == "pg" and pg is None:
                    continue
                r = run_burst(tmp / f"p1d-{kind}-{i}", wl, settle, settle, pg=pg if kind == "pg" else None)
                res[kind].append(r)
                print(f"  rep {i + 1} {kind}: published {r['rate']:,.0f}/s (last publish {r['t_pub']:.2f} s after t0,"
                      f" window {settle} s; writer {r['writer']:.2f} s; inotifywait same burst {r['same']['rate']:,.0f}"
                      f"/s, lost {r['same']['lost']}) ratio {r['same_ratio']:.2f} lost {r['lost']} dup {fmt_dup(r)} "
                      f"agent cpu {r['cpu']:.1f} s + server {r['pg_cpu']:.1f} s "
                      f"tx/publish {({k: round(v, 2) for k, v in r['tx_pub'].items()})}", flush=True)
    finally:
        if pg:
            pg.stop()
    for kind, label in (("sqlite", "SQLite"), ("pg", "PostgreSQL")):
        R = res[kind]
        if not R:
            rep.add("1d", f"{wl.n // 1000}k single files, {label} journal", "not run", ">= 0.5x inotifywait",
                    why or "-", "ERROR")
            continue
        same = [r["same_ratio"] for r in R]
        ok = med(same) >= 0.5 and not any(r["lost"] for r in R) and not any(r["dup"] for r in R)
        rep.add("1d", f"{wl.n // 1000}k single files ({wl.shots} shot dirs), {label}: files/s published",
                mmm([r["rate"] for r in R], "{:,.0f}"), ">= 0.5x inotifywait",
                f"inotifywait same burst {mmm([r['same']['rate'] for r in R], '{:,.0f}')} events/s",
                verdict(med(same) >= 0.5))
        rep.add("1d", f"same, {label}: ratio / lost / duplicated", f"{mmm(same)} / "
                + " ".join(str(r["lost"]) for r in R) + " / " + " ".join(str(r["dup"]) for r in R),
                ">= 0.5 / 0 / 0", "inotifywait lost " + " ".join(str(r["same"]["lost"]) for r in R), verdict(ok))
        tx = [r["tx_pub"].get("commits", r["tx_pub"].get("writes", float("nan"))) for r in R]
        if kind == "pg":
            rep.add("1d", f"same, {label}: table scans per publish: sequential (rows read) / index (rows fetched)",
                    f"{mmm([r['tx_pub'].get('seq_scan', float('nan')) for r in R], '{:.1f}')} "
                    f"({mmm([r['tx_pub'].get('seq_rows', float('nan')) for r in R], '{:,.0f}')}) / "
                    f"{mmm([r['tx_pub'].get('idx_scan', float('nan')) for r in R], '{:.1f}')} "
                    f"({mmm([r['tx_pub'].get('idx_rows', float('nan')) for r in R], '{:,.0f}')})", "-",
                    "pg_stat_user_tables, journal tables", "info")
        rep.add("1d", f"same, {label}: " + ("journal transactions per publish (pg_stat_database xact_commit)"
                                            if kind == "pg" else "write transactions per publish (WAL iChange)"),
                mmm(tx), "-", ("write transactions (xids) " + mmm([r["tx_pub"].get("writes", float("nan")) for r in R])
                               if kind == "pg" else "-"), "info")
    rep.note(f"part 1d: each of the {wl.n:,} files is one publish; rate = files published / (last published_at - "
             f"writer t0 - {settle} s settle window). Duplicates = extra publishes rows for one path + extra registry "
             f"rows for one path + publishes with two 'published' events. Agent CPU-s: SQLite "
             f"{mmm([r['cpu'] for r in res['sqlite']])}, PostgreSQL {mmm([r['cpu'] for r in res['pg']])} + server "
             f"{mmm([r['pg_cpu'] for r in res['pg']])} (the server is pinned to the agents' CPU). Writer took "
             f"{mmm([r['writer'] for r in res['sqlite'] + res['pg']])} s.")


# -- part 2: latency -------------------------------------------------------------------------
def part2(rep: Report, tmp: Path, quick: bool, reps: int) -> None:
    n = 40 if quick else 200
    settle = 0.2
    print(f"\n== 2. latency: {n} Nuke scripts 20-50 ms apart, settle {settle} s, n={reps}", flush=True)
    lat_med, lat_p99, iw_med, iw_p99, worst, missing = [], [], [], [], [], []
    all_lat: list[float] = []
    for i in range(reps):
        base = tmp / f"p2-{i}"
        root = base / "root"
        paths = []
        for k in range(1, n + 1):
            d = root / f"seq/sq01/sh{k:03d}/comp/work"
            d.mkdir(parents=True)
            paths.append(str(d / f"sh{k:03d}_main_v001.nk"))
        agent = Agent(base / "agent", root, settle=settle, seq=settle, rescan_interval=0).start()
        iw = None
        try:
            agent.warm("seq/sq00/sh000/comp/work/sh000_warm_v001.nk")
            iw = Inotifywait(root)
            w = run_writer({"kind": "spaced", "paths": paths, "gap_min": 0.02, "gap_max": 0.05, "seed": i})
            want = set(paths)

            def all_published() -> bool:
                agent._alive()
                return sum(1 for x in agent.publishes() if x["path"] in want and x["status"] == "published") >= n

            try:
                wait_until(all_published, 60, 0.2, "latency publishes")
            except TimeoutError:
                pass
            pubs = {x["path"]: x["published_at"] for x in agent.publishes()
                    if x["path"] in want and x["status"] == "published"}
            time.sleep(0.2)
            lines = {p: t for t, p in iw.lines if p in want}
        finally:
            if iw:
                iw.stop()
            agent.stop()
        closes = w["closes"]
        lat = [(pubs[p] - closes[p] - settle) * 1000 for p in paths if p in pubs]
        ilat = [(lines[p] - closes[p]) * 1000 for p in paths if p in lines]
        missing.append(n - len(lat))
        all_lat += lat
        lat_med.append(med(lat))
        lat_p99.append(pct(lat, 99))
        worst.append(max(lat) if lat else float("nan"))
        iw_med.append(med(ilat))
        iw_p99.append(pct(ilat, 99))
        print(f"  rep {i + 1}: watcher beyond settle median {lat_med[-1]:.1f} ms p99 {lat_p99[-1]:.1f} ms "
              f"max {worst[-1]:.1f} ms (published {len(lat)}/{n}) | inotifywait median {iw_med[-1]:.2f} ms "
              f"p99 {iw_p99[-1]:.2f} ms", flush=True)
        rmtree(base)
    rep.add("2", f"close -> published, minus settle ({settle} s): median ms", mmm(lat_med, "{:.1f}"), "<= 50",
            f"inotifywait close -> line {mmm(iw_med, '{:.2f}')}", verdict(med(lat_med) <= 50 and not any(missing)))
    rep.add("2", "same: p99 ms", mmm(lat_p99, "{:.1f}"), "<= 250", f"inotifywait {mmm(iw_p99, '{:.2f}')}",
            verdict(med(lat_p99) <= 250 and not any(missing)))
    buckets = [sum(1 for x in all_lat if lo <= x < hi) for lo, hi in ((-1e9, 10), (10, 50), (50, 250), (250, 1e9))]
    rep.note(f"part 2: {len(all_lat)} latencies over {reps} rep(s): <10 ms {buckets[0]}, 10-50 ms {buckets[1]}, "
             f"50-250 ms {buckets[2]}, >=250 ms {buckets[3]}; worst per rep {[round(x) for x in worst]} ms; "
             f"not published {missing}. Latency = journal published_at - writer's time.time() after close - settle.")


# -- part 3: memory --------------------------------------------------------------------------
REF_LIST = """
import os, sys
paths = []
stack = [sys.argv[1]]
while stack:
    for e in os.scandir(stack.pop()):
        (stack.append(e.path) if e.is_dir(follow_symlinks=False) else paths.append(e.path))
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(len(paths), int(hwm) * 1024 / 1e6)
"""
REF_SNAPSHOT = """
import sys
from watchdog.utils.dirsnapshot import DirectorySnapshot
s = DirectorySnapshot(sys.argv[1], recursive=True)
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(len(s.paths), int(hwm) * 1024 / 1e6)
"""
REF_BARE = """
hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]
print(0, int(hwm) * 1024 / 1e6)
"""


def ref_hwm(code: str, root: Path) -> tuple[int, float]:
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True).stdout
    n, mb = out.split()
    return int(n), float(mb)


def part3(rep: Report, tmp: Path, quick: bool, reps: int) -> None:
    ndirs, frames = (10, 1000) if quick else (100, 1000)
    n = ndirs * frames
    print(f"\n== 3. peak RSS with {n:,} frames pending ({ndirs} sequences x {frames}), n={reps}", flush=True)
    base = tmp / "p3"
    root = big_tree(tmp, ndirs, frames)
    empty = base / "empty"
    empty.mkdir(parents=True)
    hwm, ingest_cpu, ingest_wall, base_hwm, ref_l, ref_s, ref_b = [], [], [], [], [], [], []
    # The agent on an empty root: its fixed cost, for the per-frame figure.
    a0 = Agent(base / "a0", empty, settle=600, seq=600, rescan_interval=0).start()
    try:
        time.sleep(1)
        base_hwm.append(a0.mem()["VmHWM"])
    finally:
        a0.stop()
    for i in range(reps):
        agent = Agent(base / f"a-{i}", root, settle=600, seq=600, rescan_interval=0)
        agent.start()
        try:
            st = wait_until(lambda: agent._alive() and (agent.status().get("settling_files", 0) >= n) and agent.status(),
                            600, 0.25, "settler filled")
            ingest_wall.append(time.monotonic() - agent.t_start)
            ingest_cpu.append(agent.cpu())
            time.sleep(1)
            m = agent.mem()
            hwm.append(m["VmHWM"])
            published = len(agent.publishes())
        finally:
            agent.stop()
        ref_l.append(ref_hwm(REF_LIST, root))
        ref_s.append(ref_hwm(REF_SNAPSHOT, root))
        ref_b.append(ref_hwm(REF_BARE, root))
        print(f"  rep {i + 1}: agent VmHWM {hwm[-1]:.1f} MB (empty-root agent {base_hwm[0]:.1f} MB), "
              f"settling {st.get('settling_files')} files in {st.get('settling_candidates')} candidates, "
              f"published {published}, ingest <= {ingest_wall[-1]:.1f} s wall, {ingest_cpu[-1]:.1f} CPU-s | "
              f"list of paths {ref_l[-1][1]:.1f} MB, DirectorySnapshot {ref_s[-1][1]:.1f} MB, "
              f"bare python {ref_b[-1][1]:.1f} MB", flush=True)
    rmtree(base)
    per_frame = [(h - base_hwm[0]) * 1e6 / n for h in hwm]
    rep.add("3", f"peak RSS (VmHWM), {n // 1000}k frames pending, MB", mmm(hwm, "{:.0f}"), "<= 200",
            f"DirectorySnapshot {mmm([x[1] for x in ref_s], '{:.0f}')}; list of paths "
            f"{mmm([x[1] for x in ref_l], '{:.0f}')}; bare python {mmm([x[1] for x in ref_b], '{:.0f}')}",
            verdict(med(hwm) <= 200))
    rep.add("3", "bytes per pending frame (HWM - empty-root agent HWM)", mmm(per_frame, "{:,.0f}"), "-",
            f"empty-root agent {mmm(base_hwm, '{:.0f}')} MB", "info")
    rep.add("3", f"start-up ingest of {n // 1000}k frames (scan -> match -> settler): CPU-s",
            mmm(ingest_cpu, "{:.1f}"), "-", f"wall <= {mmm(ingest_wall, '{:.1f}')} s (status.json every 2 s)",
            "info")


# -- part 4: idle CPU and polling ------------------------------------------------------------
WATCHDOG_DEFAULT = """
import sys, time
from watchdog.observers import Observer
from watchdog.events import FileSystemEventHandler
o = Observer()
o.schedule(FileSystemEventHandler(), sys.argv[1], recursive=True)
o.start()
print("started", flush=True)
time.sleep(3600)
"""


def cpu_windows(pid: int, seconds: float, window: float = 10.0) -> list[float]:
    """CPU-seconds per window, back to back."""
    out = []
    t_end = time.monotonic() + seconds
    c0, t0 = proc_cpu(pid), time.monotonic()
    while time.monotonic() < t_end - 1e-3:
        time.sleep(max(0.0, min(window, t_end - time.monotonic())))
        c1, t1 = proc_cpu(pid), time.monotonic()
        out.append((c1 - c0) / (t1 - t0))
        c0, t0 = c1, t1
    return out


def settle_cpu(pid: int, timeout: float = 30.0) -> None:
    """Start-up is over when a 1 s window uses less than 2% of a core."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        c0 = proc_cpu(pid)
        time.sleep(1.0)
        if proc_cpu(pid) - c0 < 0.02:
            return


def part4(rep: Report, tmp: Path, quick: bool, reps: int) -> None:
    parents, subs = (10, 99) if quick else (100, 99)
    idle_s, wd_s = (10, 5) if quick else (60, 20)
    ndirs = parents * (subs + 1)
    print(f"\n== 4a. idle CPU, {ndirs:,} watched dirs: watcher {idle_s} s, watchdog default mask {wd_s} s", flush=True)
    base = tmp / "p4"
    root = base / "dirs"
    for i in range(parents):
        for j in range(subs):
            (root / f"d{i:03d}" / f"s{j:02d}").mkdir(parents=True)
    agent = Agent(base / "agent", root, settle=5, seq=5).start()  # default rescan_interval (3600 s)
    try:
        settle_cpu(agent.pid)
        watches = inotify_watches(agent.pid)
        w_windows = cpu_windows(agent.pid, idle_s)
        mem = agent.mem()
    finally:
        agent.stop()
    p = subprocess.Popen([sys.executable, "-c", WATCHDOG_DEFAULT, str(root)], stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, preexec_fn=pin_watcher)
    PROCS.append(p)
    try:
        assert p.stdout is not None
        p.stdout.readline()
        time.sleep(2)
        wd_watches = inotify_watches(p.pid)
        wd_windows = cpu_windows(p.pid, wd_s)
    finally:
        stop_proc(p, 5)
    w_pct = [x * 100 for x in w_windows]
    total = sum(w_windows) / len(w_windows) * 100
    print(f"  watcher: {watches} watches, {total:.3f}% of a core over {idle_s} s (windows {[round(x, 3) for x in w_pct]}), "
          f"RSS {mem.get('VmRSS', 0):.0f} MB | watchdog default: {wd_watches} watches (mid-rebuild), "
          f"windows {[round(x * 100, 1) for x in wd_windows]}%", flush=True)
    rep.add("4", f"idle CPU, {ndirs // 1000}k dirs native, % of a core over {idle_s} s", f"{total:.3f} "
            f"(10 s windows {mmm(w_pct, '{:.3f}')})", "< 1",
            f"watchdog Observer, default mask: {mmm([x * 100 for x in wd_windows], '{:.0f}')} ({wd_s} s)",
            verdict(total < 1.0))
    rep.note(f"part 4a: watcher held {watches} inotify watches ({ndirs} dirs + root expected), RSS "
             f"{mem.get('VmRSS', 0):.0f} MB; the watchdog default-mask observer held {wd_watches} watches 2 s after its "
             f"start (fewer than {ndirs + 1} means it was rebuilding them after a queue overflow).")

    pdirs, pfiles = (10, 1000) if quick else (100, 1000)
    n = pdirs * pfiles
    cycles = 3 if quick else 5
    print(f"\n== 4b. one polling cycle over {n:,} unchanged files ({pdirs} dirs), in-process, n={cycles}", flush=True)
    from watchdog.utils.dirsnapshot import DirectorySnapshot, DirectorySnapshotDiff

    import queue

    from watcher.observe import DirPoller

    proot = big_tree(tmp, pdirs, pfiles)
    q: queue.Queue = queue.Queue()
    dp = DirPoller("bench", str(proot), 10.0, q, lambda rel: False)
    t0 = time.perf_counter()
    dp.prime()
    prime_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    snap = DirectorySnapshot(str(proot), recursive=True)
    snap0_s = time.perf_counter() - t0
    wt, wc, dt, dc = [], [], [], []
    for _ in range(cycles):
        c0, t0 = time.process_time(), time.perf_counter()
        dp.cycle()
        wt.append((time.perf_counter() - t0) * 1000)
        wc.append((time.process_time() - c0) * 1000)
        c0, t0 = time.process_time(), time.perf_counter()
        new = DirectorySnapshot(str(proot), recursive=True)
        diff = DirectorySnapshotDiff(snap, new)
        snap = new
        dt.append((time.perf_counter() - t0) * 1000)
        dc.append((time.process_time() - c0) * 1000)
        assert not diff.files_created and not diff.files_modified and q.empty(), "tree changed during the bench"
    # Both must see a change, or the comparison means nothing.
    extra = Path(proot / frame_dir(1) / FRAME_FMT.format(frame=9999))
    extra.write_bytes(PAYLOAD)
    dp.cycle()
    # file events only (the poller also queues DirListed marks); Kind is an Enum ("seen")
    dp_seen = [e.path for e in list(q.queue) if getattr(getattr(e, "kind", None), "value", None) == "seen"]
    diff = DirectorySnapshotDiff(snap, DirectorySnapshot(str(proot), recursive=True))
    ok = dp_seen == [str(extra)] and list(diff.files_created) == [str(extra)]
    print(f"  DirPoller cycle {mmm(wt, '{:.1f}')} ms (prime {prime_s * 1000:.0f} ms) | PollingObserver cycle "
          f"{mmm(dt, '{:.0f}')} ms (first snapshot {snap0_s * 1000:.0f} ms) | both see a new file: {ok}", flush=True)
    extra.unlink()
    rmtree(base)
    rep.add("4", f"poll cycle, {n // 1000}k unchanged files: wall ms", mmm(wt, "{:.1f}"),
            "< watchdog (no fixed target)", f"watchdog PollingObserver cycle {mmm(dt, '{:.0f}')}",
            verdict(med(wt) < med(dt) and ok))
    rep.add("4", "same: CPU ms per cycle", mmm(wc, "{:.1f}"), "-", f"watchdog {mmm(dc, '{:.0f}')}", "info")
    rep.note(f"part 4b: DirPoller stats each directory ({pdirs + 1} stats per cycle) and lists only those whose "
             f"mtime moved; watchdog stats all {n + pdirs + 1:,} entries and diffs the snapshots. A new file was "
             f"seen by both after the timed cycles: {ok}. Caveat: a directory's mtime does not move when a file "
             f"is rewritten in place, so DirPoller reports new/removed names only.")


# -- part 5: first start over a large existing tree --------------------------------------------
def _mknod_kind(kind: str, root: str, lo: int, hi: int, per: int) -> int:
    if kind == "frames":
        mknod_frames(Path(root), hi, per, lo)
    else:
        for k in range(lo, hi + 1):
            d = Path(root) / work_dir(k)
            d.mkdir(parents=True, exist_ok=True)
            for name in nuke_names(k, per):
                os.mknod(d / name)
    return hi - lo + 1


def mknod_tree(root: Path, kind: str, dirs: int, per: int) -> float:
    """``dirs`` x ``per`` empty files (frames: one sequence per dir; singles: Nuke scripts), two
    processes; returns the seconds it took."""
    from concurrent.futures import ProcessPoolExecutor

    t0 = time.monotonic()
    half = dirs // 2
    with ProcessPoolExecutor(2) as ex:
        list(ex.map(_mknod_kind, [kind] * 2, [str(root)] * 2, [1, half + 1], [half, dirs], [per] * 2))
    return time.monotonic() - t0


def walk_count(root: Path) -> tuple[int, float]:
    """Reference: a bare os.scandir walk of the tree in a fresh process (what any first start must
    at least do), seconds."""
    code = ("import os,sys,time\nt=time.monotonic();n=0;st=[sys.argv[1]]\nwhile st:\n for e in os.scandir(st.pop()):"
            "\n  (st.append(e.path) if e.is_dir(follow_symlinks=False) else None);n+=not e.is_dir(follow_symlinks=False)"
            "\nprint(n, time.monotonic()-t)")
    out = subprocess.run([sys.executable, "-c", code, str(root)], capture_output=True, text=True, check=True,
                         preexec_fn=pin_watcher).stdout.split()
    return int(out[0]), float(out[1])


def first_start(base: Path, kind: str, dirs: int, per: int) -> dict:
    root = base / "root"
    n = dirs * per
    cands = dirs if kind == "frames" else n
    mk = mknod_tree(root, kind, dirs, per)
    print(f"  {n:,} empty {'frames' if kind == 'frames' else 'Nuke scripts'} in {dirs:,} dirs made in {mk:.1f} s "
          f"(os.mknod, 2 processes)", flush=True)
    nfiles, walk_s = walk_count(root)
    time.sleep(1.0)  # every file older than the settle window
    agent = Agent(base / "agent", root, settle=0.5, seq=1.0, rescan_interval=0)
    peak_rss = 0.0
    try:
        agent.start(ready_timeout=3600)
        last = {"state": None, "cpu": agent.cpu(), "moved": time.monotonic()}

        def done() -> bool:
            nonlocal peak_rss
            agent._alive()
            peak_rss = max(peak_rss, agent.mem().get("VmRSS", 0))
            c = agent.j.counts()
            state = tuple(sorted(c.items()))
            cpu = agent.cpu()
            if state != last["state"] or cpu - last["cpu"] > 0.2:
                last.update(state=state, moved=time.monotonic())
            last["cpu"] = cpu
            complete = c.get("published", 0) >= cands and sum(c.values()) == c.get("published", 0)
            return complete or time.monotonic() - last["moved"] > 60

        wait_until(done, 3600, 1.0, "first start")
        cpu = agent.cpu()
        hwm = agent.mem().get("VmHWM", 0)
        [(rows, created_last, pub_last)] = agent.sql("SELECT count(*), max(created_at), max(published_at) FROM publishes")
        published = agent.j.counts().get("published", 0)
        try:
            [(files_rows,)] = agent.sql("SELECT count(*) FROM files")
        except Exception:  # noqa: BLE001
            files_rows = -1
    finally:
        agent.stop()
    rmtree(base)
    t_j = created_last - agent.t_start_wall
    t_p = pub_last - agent.t_start_wall
    return {"kind": kind, "n": n, "cands": cands, "rows": rows, "published": published, "files_rows": files_rows,
            "t_journal": t_j, "t_publish": t_p, "rate_j": n / t_j, "rate_p": n / t_p, "cand_rate": rows / t_j,
            "cpu": cpu, "hwm": hwm, "mk": mk, "walk": walk_s, "walk_n": nfiles}


P5_SINGLES_PER_DIR = [0]


def part5(rep: Report, tmp: Path, quick: bool, reps: int) -> None:
    runs = [("frames", 100, 1000), ("singles", 100, 200)] if quick else [("frames", 1000, 1000), ("singles", 1000, 200)]
    if P5_SINGLES_PER_DIR[0]:  # --singles-1m: 1,000 dirs x 1,000 single files, measured instead of extrapolated
        runs[1] = ("singles", 1000, P5_SINGLES_PER_DIR[0])
    print(f"\n== 5. first start over an existing tree: {', '.join(f'{d * p:,} {k} ({d:,} dirs)' for k, d, p in runs)}; "
          "agent started after the tree is built, settle 0.5 s, n=1", flush=True)
    for kind, dirs, per in runs:
        r = first_start(tmp / f"p5-{kind}", kind, dirs, per)
        print(f"  {kind}: journaled {r['rows']:,} candidates ({r['n']:,} files, files table {r['files_rows']:,}) "
              f"{r['t_journal']:.1f} s after the agent's start ({r['rate_j']:,.0f} files/s, {r['cand_rate']:,.0f} "
              f"candidates/s), all {r['published']:,} published at {r['t_publish']:.1f} s; agent CPU {r['cpu']:.1f} s, "
              f"VmHWM {r['hwm']:.0f} MB | bare scandir walk {r['walk']:.1f} s for {r['walk_n']:,} files", flush=True)
        label = (f"{r['n'] / 1e6:g}M frames in {dirs:,} sequences" if kind == "frames"
                 else f"{r['n'] // 1000}k single files in {dirs:,} dirs")
        ok = r["published"] >= r["cands"]
        rep.add("5", f"first start, {label}: agent start -> every candidate journaled, s (files/s)",
                f"{r['t_journal']:.1f} ({r['rate_j']:,.0f}/s; {r['cand_rate']:,.0f} candidates/s)", "report",
                f"bare scandir walk of the tree {r['walk']:.1f} s", "info" if ok else "FAIL")
        rep.add("5", "same: all published, s / agent peak RSS (VmHWM) MB / CPU-s",
                f"{r['t_publish']:.1f} / {r['hwm']:.0f} / {r['cpu']:.0f}", "-",
                f"{r['published']:,} of {r['cands']:,} candidates published", "info" if ok else "FAIL")
        if kind == "singles" and r["n"] < 1_000_000:
            rep.note(f"part 5: 1M single files were not run (on 2 cores it would take ~{1e6 / r['rate_j'] / 60:.0f} min); "
                     f"linear extrapolation from {r['n'] // 1000}k: ~{1e6 / r['rate_j']:.0f} s to journal 1M single "
                     f"files at the measured {r['rate_j']:,.0f} files/s (an estimate: the journal's indexes grow, so "
                     f"likely optimistic); peak RSS at 1M not measured.")
    rep.note("part 5: time from spawning `watcher run` (python start-up included) to the newest journal created_at "
             "/ published_at; files/s = files in the tree / that time. The tree is built with os.mknod before the "
             "agent starts, so every file is older than the settle window.")


def _sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


# -- main ------------------------------------------------------------------------------------
PARTS = {"1": part1, "1d": part1d, "2": part2, "3": part3, "4": part4, "5": part5}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=list(PARTS), action="append", help="run only this part (repeatable)")
    ap.add_argument("--quick", action="store_true", help="small sizes, one repetition (smoke run)")
    ap.add_argument("--reps", type=int, help="repetitions for parts 1, 1d, 2, 3 (default 3, 1 with --quick)")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where to build the trees (same filesystem)")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--src", help="run the watcher package of another checkout (a directory holding watcher/), "
                                  "to compare a change against this one")
    ap.add_argument("--singles-1m", action="store_true", help="part 5: 1,000,000 single files (1,000 dirs x 1,000; "
                                                                  "~15 min more) instead of 200,000 and an extrapolation")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the writer to CPU 0 and the watchers to CPU 1")
    args = ap.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        PIN.update(writer=cpus[0], watcher=cpus[1])
    global SRC
    if args.src:
        SRC = os.path.abspath(args.src)
        if not os.path.isfile(os.path.join(SRC, "watcher", "service.py")):
            print(f"error: --src {args.src}: no watcher/service.py there", file=sys.stderr)
            return 2
        sys.path.insert(0, SRC)
    if shutil.which("inotifywait") is None and set(args.only or PARTS) & {"1", "1d", "2"}:
        print("error: inotifywait is not installed; it is the reference for parts 1 and 2. Install it with:\n"
              "  apt-get install inotify-tools", file=sys.stderr)
        return 2
    reps = args.reps or (1 if args.quick else 3)
    if args.singles_1m:
        P5_SINGLES_PER_DIR[0] = 1000
    parts = args.only or list(PARTS)
    tmp = Path(tempfile.mkdtemp(prefix="watcher-bench-", dir=args.tmp))
    rep = Report()
    t0 = time.monotonic()
    load = os.getloadavg()
    pin = (f"writer on CPU {PIN['writer']}, watchers on CPU {PIN['watcher']}" if PIN["writer"] is not None
           else "not pinned")
    print(f"watcher pipeline bench: parts {parts}, reps {reps}{' (quick)' if args.quick else ''}, watcher from {SRC}, "
          f"{pin}, "
          f"{os.cpu_count()} CPUs, load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, trees in {tmp}", flush=True)
    signal.signal(signal.SIGTERM, _sigterm)  # a kill ends the run like Ctrl-C: every process and tree cleaned up
    try:
        for k in parts:
            tp = time.monotonic()
            try:
                PARTS[k](rep, tmp, args.quick, reps)
            except Exception as exc:  # one broken part must not hide the others
                rep.add(str(k), "part failed", f"{type(exc).__name__}: {exc}".replace("\n", " ")[:200], "-", "-", "ERROR")
            print(f"  (part {k}: {time.monotonic() - tp:.0f} s)", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for p in list(PROCS):
            stop_proc(p, 5)
        for pg in list(PGS):
            pg.stop()
        rmtree(tmp)
    elapsed = time.monotonic() - t0
    rep.print_results(f"{elapsed:.0f} s; median (min-max) over interleaved repetitions", args.quick)
    if args.markdown:
        head = (f"# watcher pipeline bench (issue #3)\n\n`python bench/pipeline.py{' --quick' if args.quick else ''}"
                f"{''.join(f' --only {k}' for k in (args.only or []))}{' --src ' + SRC if args.src else ''}`: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
                f"{os.cpu_count()} CPUs ({pin}), load at start {load[0]:.2f}, {elapsed:.0f} s, reps {reps}. "
                "Figures: median (min-max) over interleaved repetitions.")
        Path(args.markdown).write_text(rep.markdown(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
