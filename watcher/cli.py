"""Command line: `watcher init|run|scan|explain|publishes|retry|check|status|demo`.

Exit codes everywhere: 0 ok, 1 runtime failure, 2 usage or configuration error."""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from . import logs
from .config import STARTER, Settings, load_settings, shipped_template
from .errors import ConfigError, WatcherError

log = logging.getLogger("watcher")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse exits 2 already; keep its one-line style
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="watcher", description="Auto-publisher: watches project trees and registers what lands there "
                                           "in the production tracker.")
    p.add_argument("-c", "--config", help="config file (default: $WATCHER_CONFIG, else ./watcher.yml)")
    p.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    p.add_argument("--log-format", choices=["text", "json"])
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("init", help="write a commented starter config that runs as is")
    s.add_argument("dir", nargs="?", default=".", help="folder to write watcher.yml into (default: .)")
    s.add_argument("--root", help="the folder to watch (default: DIR/root, created)")

    sub.add_parser("run", help="watch the roots and publish until stopped (SIGTERM/SIGINT)")

    s = sub.add_parser("scan", help="one pass: publish complete files the journal lacks, then exit")
    s.add_argument("--dry-run", action="store_true", help="list what would be published; change nothing")
    s.add_argument("--json", action="store_true", help="with --dry-run: a JSON array")
    s.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
    s.add_argument("--verify", action="store_true",
                   help="also stat files the journal knows, to find ones rewritten in place (slower)")

    s = sub.add_parser("explain", help="show how paths match templates and what they would publish")
    s.add_argument("paths", nargs="+")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("publishes", help="list the journal's publishes")
    s.add_argument("--json", action="store_true", help="a JSON array (a stable contract; see README)")
    s.add_argument("--status", choices=["pending", "publishing", "published", "failed"])
    s.add_argument("--limit", type=int)

    s = sub.add_parser("retry", help="re-queue failed publishes")
    s.add_argument("ids", nargs="*", type=int)
    s.add_argument("--failed", action="store_true", help="every failed publish")

    sub.add_parser("check", help="verify the configuration, templates, journal and tracker access")

    s = sub.add_parser("status", help="journal counts and the running agent's state")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("demo", help="create a demo root with sample renders and run on the embedded defaults")
    s.add_argument("dir", nargs="?", default="watcher-demo")
    s.add_argument("--once", action="store_true", help="scan, publish, list, exit (no watching)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WatcherError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL


def _settings(args: argparse.Namespace, *, check_paths: bool = True) -> Settings:
    s = load_settings(args.config, check_paths=check_paths)
    logs.setup(args.log_level or s.log_level, args.log_format or s.log_format)
    return s


def _journal(settings: Settings):
    from .journal import open_journal

    return open_journal(settings.journal_url())


# -- commands ------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    d = Path(args.dir)
    cfg = d / "watcher.yml"
    if cfg.exists():
        print(f"watcher: {cfg} exists; not overwriting it", file=sys.stderr)
        return EXIT_USAGE
    d.mkdir(parents=True, exist_ok=True)
    root = Path(args.root) if args.root else d / "root"
    root.mkdir(parents=True, exist_ok=True)
    tpl = d / "templates.yml"
    if not tpl.exists():
        tpl.write_text(shipped_template("studio.yml").read_text(encoding="utf-8"), encoding="utf-8")
    cfg.write_text(STARTER.format(root_name="shows", root_path=_rel(root, d), templates="templates.yml",
                                  journal=(d.resolve() / "state" / "journal.db")), encoding="utf-8")
    print(f"wrote {cfg} (watching {root}, templates {tpl}); start it with: watcher -c {cfg} run")
    return EXIT_OK


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p.resolve())


def _install_signals(stop: threading.Event) -> None:
    def handler(signum: int, _frame: Any) -> None:
        log.info("received %s; shutting down", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def cmd_run(args: argparse.Namespace) -> int:
    from .service import Service

    stop = threading.Event()
    _install_signals(stop)  # first: a SIGTERM during start-up still means a clean stop
    settings = _settings(args)
    svc = Service(settings)
    svc.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        svc.stop(grace=8.0)
    return EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.dry_run:
        return _dry_run(settings, args.json)
    from .service import Service

    stop = threading.Event()
    _install_signals(stop)
    svc = Service(settings, watch=False, verify=args.verify)
    svc.start()
    t0 = time.monotonic()
    ok = True
    try:
        while not svc.wait_idle(timeout=0.5):
            if stop.is_set() or (args.timeout and time.monotonic() - t0 > args.timeout):
                ok = False
                break
    finally:
        svc.stop(grace=8.0)
    counts = _journal(settings).counts()
    print(f"scan done: {svc.committed} new candidate(s) journaled, {svc.publishers.published} published, "
          f"{svc.publishers.failed} failed; journal: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    return EXIT_OK if ok and not svc.publishers.failed else EXIT_FAIL


def _dry_run(settings: Settings, as_json: bool) -> int:
    """Walk, match and group without journaling or publishing."""
    from .journal import open_journal
    from .pipeline import dry_run
    from .roots import load_roots

    journal = open_journal(settings.journal_url())
    try:
        pubs, stats = dry_run(load_roots(settings), journal)
    finally:
        journal.close()
    if as_json:
        print(json.dumps([_dry(p) for p in pubs], indent=2, ensure_ascii=False, default=str))
    else:
        for p in pubs:
            ent = f"{p.entity.type} {p.entity.name}" if p.entity else "-"
            print(f"{p.path}{' [' + p.frames + ']' if p.frames else ''}  {ent}  {p.task or '-'}  {p.name}  "
                  f"v{p.version if p.version is not None else '-'}  {p.publish_type}")
        print(f"{len(pubs)} publish(es) would be made ({stats.files} files seen, {stats.known} already journaled)",
              file=sys.stderr)
    return EXIT_OK


def _dry(p: Any) -> dict[str, Any]:
    d = {k: v for k, v in p.to_dict().items() if k not in ("key", "root_path")}
    return d


def cmd_explain(args: argparse.Namespace) -> int:
    from .roots import Refusal, load_roots

    settings = _settings(args, check_paths=False)
    roots = load_roots(settings)
    results = []
    for raw in args.paths:
        path = os.path.abspath(raw)
        res: dict[str, Any] = {"path": path}
        for r in roots:
            rel = r.relative(path)
            if rel is None:
                continue
            res["root"] = r.name
            res["relative_path"] = rel
            # the pipeline's own admission; a path not on disk yet is explained as if it were a file
            verdict = r.admit(rel, path) if os.path.lexists(path) or r.ignorer.ignored(rel) else None
            if isinstance(verdict, Refusal):
                reason = verdict.value
                if verdict is Refusal.ESCAPES:
                    reason = f"resolves to {os.path.realpath(path)}, outside the root: never published"
                res.update(matched=False, reason=reason)
            else:
                res.update(r.templates.explain(rel))
                pub = res.get("publish")
                if pub and r.scope.project:
                    pub["project"] = r.scope.project
                if pub and r.scope.entity:
                    pub["entity"] = {"type": r.scope.entity.type, "name": r.scope.entity.name}
            break
        else:
            res.update(matched=False, root=None,
                       reason="not under any configured root (" + ", ".join(f"{r.name}: {r.path}" for r in roots) + ")")
        results.append(res)
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    else:
        for res in results:
            print(_explain_text(res))
    return EXIT_OK if all(r.get("matched") for r in results) else EXIT_FAIL


def _explain_text(res: dict[str, Any]) -> str:
    lines = [res["path"]]
    if res.get("root"):
        lines.append(f"  root:      {res['root']}")
    if res.get("matched"):
        lines.append(f"  template:  {res.get('template')}")
        fields = res.get("fields") or {}
        lines.append("  fields:    " + ", ".join(f"{k}={v!r}" for k, v in fields.items()))
        pub = res.get("publish")
        if pub:
            ent = pub.get("entity")
            if isinstance(ent, dict):
                ent = f"{ent.get('type')} {ent.get('name')}"
            elif ent is None and pub.get("entity_type"):
                ent = f"{pub.get('entity_type')} {pub.get('entity_name')}"
            lines.append(f"  publish:   {ent or '-'} / task {pub.get('task') or '-'} / name {pub.get('name')} / "
                         f"v{pub.get('version') if pub.get('version') is not None else '-'} / {pub.get('publish_type')}")
        else:
            lines.append("  publish:   none (the template has no publishes rule)")
        if res.get("frame") is not None or res.get("pattern") not in (None, res.get("relative_path")):
            lines.append(f"  frame:     {res.get('frame')}   sequence: {res.get('pattern')}")
    else:
        if res.get("closest"):
            lines.append(f"  closest:   {res['closest']}")
        if res.get("ambiguous"):
            lines.append(f"  ambiguous: {', '.join(res['ambiguous'])}")
        lines.append(f"  no match:  {res.get('reason')}")
    return "\n".join(lines)


def cmd_publishes(args: argparse.Namespace) -> int:
    from .journal.base import Status

    settings = _settings(args, check_paths=False)
    j = _journal(settings)
    try:
        rows = j.rows(Status(args.status) if args.status else None, limit=args.limit)
    finally:
        j.close()
    if args.json:
        print(json.dumps([r.to_json() for r in rows], indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    if not rows:
        print("no publishes" + (f" with status {args.status}" if args.status else ""))
    for r in rows:
        d = r.to_json()
        ent = f"{d['entity']['type']} {d['entity']['name']}" if d["entity"] else "-"
        frames = f" [{d['frames']}{', missing ' + d['missing_frames'] if d['missing_frames'] else ''}]" \
            if d["frames"] else ""
        print(f"{d['id']:>6}  {d['status']:<10}  {d['path']}{frames}  "
              f"{ent}  {d['task'] or '-'}  {d['name']}  v{d['version'] if d['version'] is not None else '-'}  "
              f"{(d['tracker'] or '') + ' ' + (d['tracker_id'] or '') if d['tracker_id'] else ''}"
              + (f"\n        error: {d['error']}" if d["error"] and d["status"] != "published" else ""))
    return EXIT_OK


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.ids and not args.failed:
        print("watcher retry: give publish ids or --failed", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args, check_paths=False)
    j = _journal(settings)
    try:
        moved = j.requeue(None if args.failed else args.ids)
        missing = [i for i in args.ids if i not in moved]
    finally:
        j.close()
    print(f"re-queued {len(moved)} publish(es): {', '.join(map(str, moved)) or '-'}; a running agent picks them up")
    if missing:
        print(f"watcher retry: not failed (or unknown): {', '.join(map(str, missing))}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .journal import open_journal
    from .roots import load_roots
    from .service import make_backend

    settings = _settings(args)
    ok = True
    roots = load_roots(settings)
    for r in roots:
        print(f"ok   root {r.name}: {r.path} ({len(r.templates.names)} templates, {r.cfg.observer} observer)")
        for w in r.templates.warnings:
            print(f"warn root {r.name}: {w}")
    j = open_journal(settings.journal_url())
    print(f"ok   journal {j.url}")
    backend = make_backend(settings, {r.name: Path(r.path) for r in roots}, [r.templates for r in roots])
    try:
        for res in backend.check():
            ok &= res.ok
            print(res)
    finally:
        backend.close()
        j.close()
    return EXIT_OK if ok else EXIT_FAIL


def cmd_status(args: argparse.Namespace) -> int:
    settings = _settings(args, check_paths=False)
    j = _journal(settings)
    try:
        counts = j.counts()
    finally:
        j.close()
    agent = None
    sf = settings.state_dir / "status.json"
    if sf.exists():
        try:
            agent = json.loads(sf.read_text())
            agent["age_seconds"] = round(time.time() - agent.get("time", 0), 1)
        except (OSError, ValueError):
            agent = None
    out = {"journal": counts, "agent": agent}
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print("journal: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        if agent:
            print(f"agent {agent['agent']} (status written {agent['age_seconds']} s ago): queue {agent['queue']}, "
                  f"settling {agent['settling_files']} file(s), publishing {agent['publishing']}")
            for n, r in agent["roots"].items():
                print(f"  root {n}: {'up' if r['up'] else 'DOWN'} {r['path']} rescans {r['rescans']}"
                      + (f" (last: {r['last_rescan_reason']})" if r["last_rescan_reason"] else ""))
        else:
            print("no running agent has written a status")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import make_demo

    cfg = make_demo(Path(args.dir))
    print(f"demo: config {cfg}; watching {cfg.parent / 'shows'} on the local registry and the SQLite journal")
    ns = argparse.Namespace(config=str(cfg), log_level=args.log_level, log_format=args.log_format,
                            dry_run=False, json=False, timeout=120, verify=False)
    if args.once:
        rc = cmd_scan(ns)
        cmd_publishes(argparse.Namespace(config=str(cfg), log_level=None, log_format=None, json=False,
                                         status=None, limit=None))
        return rc
    print("demo: drop more files under the root (see README), list them with "
          f"`watcher -c {cfg} publishes`; Ctrl-C to stop")
    return cmd_run(ns)


COMMANDS = {"init": cmd_init, "run": cmd_run, "scan": cmd_scan, "explain": cmd_explain, "publishes": cmd_publishes,
            "retry": cmd_retry, "check": cmd_check, "status": cmd_status, "demo": cmd_demo}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
