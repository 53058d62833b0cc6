"""Several agents on one ledger (issue #15): the same burst of single files through

    1 agent on SQLite, 1 agent on PostgreSQL, 3 agents on PostgreSQL

(three ``watcher run`` processes on the same root and the same journal, each with its own
state_dir), with the published rate beside inotifywait's event rate on the same burst, files
lost and duplicated, and journal transactions per publish.

    python bench/agents.py              # 20,000 files (50 shot folders x 400 Nuke scripts), 2 reps, ~11 min on 2 cores
    python bench/agents.py --quick      # 4,000 files, 1 rep (~1-2 min)
    python bench/agents.py --reps 3 --markdown out.md
    python bench/agents.py --src ../other  # the agents run another checkout's watcher
    python bench/agents.py --server-apart  # PostgreSQL off the agents' core (a database server of its own)

Target: 3 agents on PostgreSQL publish at least as fast as 1 agent on SQLite (medians), and
nothing is lost or duplicated anywhere. Method (shared with bench/pipeline.py part 1d):

- the writer is a separate process pinned to CPU 0; every agent AND the PostgreSQL server
  (postmaster, hence each backend it forks) are pinned to CPU 1, so the variants get the same
  CPU budget (--no-pin to let the scheduler place them; --server-apart puts the server on the
  writer's CPU instead, as a database on its own machine, to see the agents' own limit). The
  server is a private one
  (tests/pg_server.py: initdb + pg_ctl, fsync and synchronous_commit off), one fresh database
  per run, stopped and deleted at the end (Ctrl-C and SIGTERM included);
- published rate = files published in the local registry / (last ``published_at`` - writer's
  first file - settle window 0.5 s); lost = written files not in a published publish; duplicated
  = extra ``publishes`` rows for one path + extra ``registry`` rows for one path + publishes with
  two ``published`` events (published twice under one key: the registry's upsert would hide it);
- transactions per publish: PostgreSQL: ``pg_stat_database.xact_commit + xact_rollback`` of the
  database, before the burst (after warm-up) and after the agents stopped, minus this bench's own
  polling statements (autocommit, counted), divided by publishes: every transaction, reads
  included; and write transactions = xids assigned (``txid_current()`` before/after, cluster-wide).
  SQLite: write transactions from the WAL index header's change counter (``iChange``, +1 per
  committed write transaction, read from the -shm file while the agent runs); SQLite reads are
  not transactions anyone can count from outside, so they are not in that figure. On PostgreSQL
  also table scans per publish (``pg_stat_user_tables``: sequential scans and the rows they read,
  index scans and the rows they fetched), which say what each statement costs the server.

It is a report: it exits 0 whatever the verdicts (2 when inotifywait is missing). Linux only.
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import pipeline as P  # noqa: E402  (the agent, writer, inotifywait and PostgreSQL harness)

VARIANTS = [("sqlite-1", "1 agent, SQLite", 1, False), ("pg-1", "1 agent, PostgreSQL", 1, True),
            ("pg-3", "3 agents, PostgreSQL", 3, True)]


def _sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="4,000 files, one repetition (~1-2 min)")
    ap.add_argument("--reps", type=int, help="repetitions, interleaved (default 2, 1 with --quick)")
    ap.add_argument("--tmp", default=tempfile.gettempdir(), help="where to build the trees")
    ap.add_argument("--markdown", help="also write the table as Markdown to this file")
    ap.add_argument("--src", help="run the watcher package of another checkout (a directory holding watcher/)")
    ap.add_argument("--no-pin", action="store_true", help="do not pin the writer to CPU 0, agents and server to CPU 1")
    ap.add_argument("--server-apart", action="store_true",
                    help="pin PostgreSQL to the writer's CPU, not the agents' (as a database server on its own "
                         "machine would be; the writer is done within about a second)")
    args = ap.parse_args()
    if shutil.which("inotifywait") is None:
        print("error: inotifywait is not installed (apt-get install inotify-tools)", file=sys.stderr)
        return 2
    if args.src:
        P.SRC = os.path.abspath(args.src)
        if not os.path.isfile(os.path.join(P.SRC, "watcher", "service.py")):
            print(f"error: --src {args.src}: no watcher/service.py there", file=sys.stderr)
            return 2
    cpus = sorted(os.sched_getaffinity(0))
    if not args.no_pin and len(cpus) >= 2:
        P.PIN.update(writer=cpus[0], watcher=cpus[1], server=cpus[0] if args.server_apart else None)
    wl = P.Singles(20, 200) if args.quick else P.Singles(50, 400)
    settle = 0.5
    reps = args.reps or (1 if args.quick else 2)
    tmp = Path(tempfile.mkdtemp(prefix="watcher-agents-", dir=args.tmp))
    rep = P.Report()
    res: dict[str, list[dict]] = {k: [] for k, *_ in VARIANTS}
    t0 = time.monotonic()
    load = os.getloadavg()
    pin = ((f"writer and PostgreSQL on CPU {P.PIN['writer']}, agents on CPU {P.PIN['watcher']}" if args.server_apart
            else f"writer on CPU {P.PIN['writer']}, agents and PostgreSQL on CPU {P.PIN['watcher']}")
           if P.PIN["writer"] is not None else "not pinned")
    print(f"watcher agents bench: {wl.n:,} Nuke scripts ({wl.shots} shot folders x {wl.per}), settle {settle} s, "
          f"reps {reps}{' (quick)' if args.quick else ''}, {pin}, {os.cpu_count()} CPUs, load {load[0]:.2f} "
          f"{load[1]:.2f} {load[2]:.2f}, trees in {tmp}", flush=True)
    signal.signal(signal.SIGTERM, _sigterm)
    pg = None
    why = ""
    try:
        pg, why = P.start_pg()
        if pg is None:
            print(f"  PostgreSQL unavailable: {why}", flush=True)
        for i in range(reps):
            for key, label, n_agents, on_pg in VARIANTS:
                if on_pg and pg is None:
                    continue
                try:
                    r = P.run_burst(tmp / f"{key}-{i}", wl, settle, settle, agents=n_agents, pg=pg if on_pg else None)
                except Exception as exc:  # one broken variant must not hide the others
                    print(f"  rep {i + 1} {label}: ERROR {type(exc).__name__}: {exc}"[:2000], flush=True)
                    continue
                res[key].append(r)
                print(f"  rep {i + 1} {label}: published {r['rate']:,.0f}/s (last publish {r['t_pub']:.2f} s after "
                      f"t0; writer {r['writer']:.2f} s; inotifywait same burst {r['same']['rate']:,.0f}/s) lost "
                      f"{r['lost']} dup {P.fmt_dup(r)} agents CPU {r['cpu']:.1f} s, server CPU {r['pg_cpu']:.1f} s, "
                      f"tx per publish {({k: round(v, 2) for k, v in r['tx_pub'].items()})}, agent VmHWM "
                      f"{r['hwm']:.0f} MB", flush=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        for p in list(P.PROCS):
            P.stop_proc(p, 5)
        if pg is not None:
            pg.stop()
        P.rmtree(tmp)
    elapsed = time.monotonic() - t0
    base = [r["rate"] for r in res["sqlite-1"]]
    for key, label, n_agents, on_pg in VARIANTS:
        R = res[key]
        if not R:
            rep.add(key, f"{label}: files/s published", "not run", "-", why or "failed (see above)", "ERROR")
            continue
        rates = [r["rate"] for r in R]
        if key == "pg-3":
            target, ok = f">= 1 agent on SQLite ({P.mmm(base, '{:,.0f}')})", bool(base) and P.med(rates) >= P.med(base)
        else:
            target, ok = "-", True
        rep.add(key, f"{label}: files/s published ({wl.n // 1000}k single files)", P.mmm(rates, "{:,.0f}"), target,
                f"inotifywait same burst {P.mmm([r['same']['rate'] for r in R], '{:,.0f}')} events/s; ratio "
                f"{P.mmm([r['same_ratio'] for r in R])}", P.verdict(ok) if key == "pg-3" else "info")
        lost_dup = " ".join(str(r["lost"]) for r in R) + " / " + " ".join(str(r["dup"]) for r in R)
        rep.add(key, f"{label}: lost / duplicated", lost_dup, "0 / 0",
                "inotifywait lost " + " ".join(str(r["same"]["lost"]) for r in R),
                P.verdict(not any(r["lost"] or r["dup"] for r in R)))
        if on_pg:
            rep.add(key, f"{label}: journal transactions per publish (xact_commit+rollback, reads included)",
                    P.mmm([r["tx_pub"].get("commits", float("nan")) for r in R]), "-",
                    f"write transactions (xids) per publish {P.mmm([r['tx_pub'].get('writes', float('nan')) for r in R])}",
                    "info")
            rep.add(key, f"{label}: table scans per publish: sequential (rows read) / index (rows fetched)",
                    f"{P.mmm([r['tx_pub'].get('seq_scan', float('nan')) for r in R], '{:.1f}')} "
                    f"({P.mmm([r['tx_pub'].get('seq_rows', float('nan')) for r in R], '{:,.0f}')}) / "
                    f"{P.mmm([r['tx_pub'].get('idx_scan', float('nan')) for r in R], '{:.1f}')} "
                    f"({P.mmm([r['tx_pub'].get('idx_rows', float('nan')) for r in R], '{:,.0f}')})", "-",
                    "pg_stat_user_tables of the journal's tables", "info")
        else:
            rep.add(key, f"{label}: write transactions per publish (WAL iChange; reads not countable)",
                    P.mmm([r["tx_pub"].get("writes", float("nan")) for r in R]), "-", "-", "info")
        rep.add(key, f"{label}: CPU-s per burst, agents + server", P.mmm([r["cpu"] + r["pg_cpu"] for r in R], "{:.1f}"),
                "-", f"agents {P.mmm([r['cpu'] for r in R], '{:.1f}')}, server "
                f"{P.mmm([r['pg_cpu'] for r in R], '{:.1f}')}", "info")
    rep.note(f"writer took {P.mmm([r['writer'] for R in res.values() for r in R])} s for {wl.n:,} files (its speed "
             "varies several-fold on this shared VM: compare rates within a rep and against inotifywait on the same "
             "burst). Rate = files published / (last published_at - writer t0 - settle window).")
    rep.print_results(f"{elapsed:.0f} s; median (min-max) over {reps} interleaved repetition(s)", args.quick)
    if args.markdown:
        head = (f"# watcher agents bench (issue #15)\n\n`python bench/agents.py{' --quick' if args.quick else ''}`: "
                f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs ({pin}), load at start "
                f"{load[0]:.2f}, {elapsed:.0f} s, reps {reps}.")
        Path(args.markdown).write_text(rep.markdown(head))
    return 0


if __name__ == "__main__":
    sys.exit(main())
