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
from typing import Any, Callable, NoReturn, Sequence

from pydantic import BaseModel, ConfigDict, Field

from . import logs
from .logs import hide_url_password
from .config import STARTER, Settings, load_settings, shipped_template
from .errors import ConfigError, WatcherError
from .names import one_line

log = logging.getLogger("watcher")

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # argparse exits 2 already; keep its one-line style
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("watcher")
    except PackageNotFoundError:
        return "unknown (not installed: run `pip install -e .`)"


def _positive(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"{n} is not 1 or more (leave --limit out to list everything)")
    return n


#: the largest id a journal can hold (SQLite and PostgreSQL integers are 64-bit)
MAX_ID = 2**63 - 1


def _publish_id(text: str) -> int:
    """A publish id as `watcher publishes` lists it: a whole number from 1 to ``MAX_ID``."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a publish id (a whole number, as `watcher publishes` "
                                         "lists them)") from None
    if not 1 <= n <= MAX_ID:
        raise argparse.ArgumentTypeError(f"{text} is not a publish id (ids run from 1 to {MAX_ID})")
    return n


def _since(text: str) -> float:
    """``30m``, ``2h``, ``3d``, ``1w`` ago, or an ISO date/time (local time unless it says)."""
    import re
    from datetime import datetime

    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if m:
        unit = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
        return time.time() - float(m.group(1)) * unit
    try:
        return datetime.fromisoformat(text.strip().replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither a duration (30m, 2h, 3d, 1w) nor a date "
                                         "(2026-01-31 or 2026-01-31T14:00)") from None


def _global_options(parser: argparse.ArgumentParser, *, sub: bool) -> None:
    """``-c``, ``--log-level``, ``--log-format``: accepted before or after the subcommand (after
    wins). On subcommands their default is "not given", so they never undo the earlier value."""
    d: Any = argparse.SUPPRESS if sub else None
    parser.add_argument("-c", "--config", default=d, help="config file (default: $WATCHER_CONFIG, else ./watcher.yml)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], default=d)
    parser.add_argument("--log-format", choices=["text", "json"], default=d)


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="watcher", description="Auto-publisher: watches project trees and registers what lands there "
                                           "in the production tracker.")
    p.add_argument("--version", action="version", version=f"watcher {_version()}")
    _global_options(p, sub=False)
    common = Parser(add_help=False)
    _global_options(common, sub=True)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    def add(name: str, **kw: Any) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[common], **kw)

    s = add("init", help="write a commented starter config that runs as is")
    s.add_argument("dir", nargs="?", default=".", help="folder to write watcher.yml into (default: .)")
    s.add_argument("--root", help="the folder to watch (default: DIR/root, created)")

    s = add("run", help="watch the roots and publish until stopped (SIGTERM/SIGINT; SIGHUP reloads)")
    s.add_argument("--http", metavar="ADDR", help="serve /metrics and /healthz on HOST:PORT (overrides `http:`)")

    s = add("scan", help="one pass: publish complete files the journal lacks, then exit")
    s.add_argument("--dry-run", action="store_true", help="list what would be published; change nothing")
    s.add_argument("--json", action="store_true", help="with --dry-run: a JSON array")
    s.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 1)")
    s.add_argument("--verify", action="store_true",
                   help="also stat files the journal knows, to find ones rewritten in place (slower)")

    s = add("baseline", help="record the complete files already on disk as known, never to publish")
    s.add_argument("--root", help="only this root (its name)")
    s.add_argument("--older-than", type=_since, metavar="DURATION",
                   help="only what was last written before this: 30m, 2h, 3d, 1w, or a date (2026-01-31)")
    s.add_argument("--dry-run", action="store_true", help="count what would be baselined; write nothing")
    s.add_argument("--json", action="store_true", help="the per-root summary as JSON")

    s = add("explain", help="show how paths match templates and what they would publish")
    s.add_argument("paths", nargs="+")
    s.add_argument("--json", action="store_true")

    s = add("publishes", help="list the journal's publishes, newest first")
    s.add_argument("--json", action="store_true", help="a JSON array (a stable contract; see README)")
    s.add_argument("--status", choices=["pending", "publishing", "published", "failed", "baseline"])
    s.add_argument("--limit", type=_positive, help="the N newest (after the filters)")
    s.add_argument("--root", help="only this root (its name)")
    s.add_argument("--entity", help="only this entity: NAME, or TYPE:NAME (Shot:sh010)")
    s.add_argument("--path", help="only paths containing this text, or matching this glob (*, ?, [...])")
    s.add_argument("--since", type=_since, help="journaled since: 30m, 2h, 3d, 1w, or a date (2026-01-31T14:00)")

    s = add("retry", help="re-queue failed publishes (or failed webhook deliveries)")
    s.add_argument("ids", nargs="*", type=_publish_id, metavar="ID")
    s.add_argument("--failed", action="store_true", help="every failed publish")
    s.add_argument("--webhooks", action="store_true", help="every failed webhook delivery")

    s = add("check", help="verify the configuration, templates, state dir, journal and tracker access")
    s.add_argument("--strict", action="store_true", help="warnings fail too (exit 1)")

    s = add("status", help="health verdict (exit 0 healthy, 1 not), journal counts and the agent's state")
    s.add_argument("--json", action="store_true")

    s = add("agents", help="the agents sharing this journal: host, roots, last heartbeat, what each holds")
    s.add_argument("--json", action="store_true")
    s.add_argument("--all", action="store_true", help="also agents that stopped or went silent")

    s = add("unmatched", help="files that matched no template or were ignored, with the reason")
    s.add_argument("--root", help="only this root (its name)")
    s.add_argument("--since", type=_since, help="arrived since: 30m, 2h, 3d, 1w, or a date (2026-01-31T14:00)")
    s.add_argument("--json", action="store_true")

    s = add("desk", help="serve the I/O desk page, read-only, against the journal (foreground)")
    s.add_argument("--http", default="127.0.0.1:8470", metavar="ADDR",
                   help="HOST:PORT to listen on (default 127.0.0.1:8470; any non-loopback address needs a token)")
    s.add_argument("--token-file", help="file holding the token (default: the config's http_token_file)")

    s = add("demo", help="create a demo root with sample renders and run on the embedded defaults")
    s.add_argument("dir", nargs="?", default="watcher-demo")
    s.add_argument("--once", action="store_true", help="scan, publish, list, exit (no watching)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        return COMMANDS[args.command](args)
    except BrokenPipeError:
        # the reader went away (`watcher publishes | head -2`): stop quietly, and keep the
        # interpreter's final flush from failing again
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_OK
    except ConfigError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except WatcherError as exc:
        print(f"watcher: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        return EXIT_FAIL
    except Exception as exc:  # a bug: one line for the user, the traceback at DEBUG
        log.debug("internal error", exc_info=True)
        print(f"watcher: internal error: {type(exc).__name__}: {exc} (a bug: please report it; "
              "--log-level DEBUG shows where it happened)", file=sys.stderr)
        return EXIT_FAIL


def _settings(args: argparse.Namespace, *, check_paths: bool = True, agent: bool = False) -> Settings:
    """The settings, and logging set up. ``log_file`` is the agent's (``run``): the other
    commands are run by someone reading their output, so they keep logging to stderr."""
    s = load_settings(getattr(args, "config", None), check_paths=check_paths)
    logs.setup(getattr(args, "log_level", None) or s.log_level, getattr(args, "log_format", None) or s.log_format,
               log_file=s.log_file if agent else None, config_file=str(s.config_file) if s.config_file else None)
    return s


def _journal(settings: Settings):
    from .journal import open_journal

    return open_journal(settings.journal_url())


def _journal_missing(settings: Settings) -> bool:
    """A SQLite journal that does not exist yet (read-only commands must not create it)."""
    url = settings.journal_url()
    return url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).exists()


def _config_hint(settings: Settings) -> str:
    return f"watcher -c {settings.config_file}" if settings.config_file else "watcher"


# -- commands ------------------------------------------------------------------------------
def cmd_init(args: argparse.Namespace) -> int:
    from .config import default_state_dir

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
    state = default_state_dir(cfg.resolve())
    cfg.write_text(STARTER.format(root_name="shows", root_path=_rel(root, d), templates="templates.yml",
                                  state_dir=state), encoding="utf-8")
    print(f"wrote {cfg} (watching {root}, templates {tpl}; journal and status in {state}); "
          f"start it with: watcher -c {cfg} run")
    if any(f.is_file() for f in _first_files(root)):
        print(f"{root} already holds files: with `existing: publish` (as written) the first start publishes them; "
              f"set `existing: baseline`, or run `watcher -c {cfg} baseline` first, to publish only what comes next "
              f"(`watcher -c {cfg} check` counts them)")
    return EXIT_OK


def _first_files(root: Path, limit: int = 1000) -> list[Path]:
    """A few entries of a tree, files first found (enough to tell whether it is empty)."""
    out: list[Path] = []
    for d, _dirs, names in os.walk(root):
        out += [Path(d) / n for n in names]
        if out or len(out) >= limit:
            break
    return out


def _rel(p: Path, base: Path) -> str:
    try:
        return str(p.resolve().relative_to(base.resolve()))
    except ValueError:
        return str(p.resolve())


def _install_signals(stop: threading.Event, reload: threading.Event | None = None,
                     stopped: threading.Event | None = None) -> None:
    """One stop path: SIGTERM/SIGINT (and SIGHUP to reload) on POSIX; on Windows also the
    console's control events (window closed, logoff, shutdown), which no signal reports.
    ``stopped`` is set once the agent has stopped: Windows waits for it before ending us."""
    hup = getattr(signal, "SIGHUP", None)  # Windows has none: `run` would not even start there

    def handler(signum: int, _frame: Any) -> None:
        name = signal.Signals(signum).name
        if signum == hup and reload is not None:
            log.info("received SIGHUP; reloading the configuration")
            reload.set()
            return
        log.info("received %s; shutting down", name)
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    if hup is not None:
        signal.signal(hup, handler)  # `run` reloads; a one-shot `scan` stops cleanly
    if sys.platform == "win32":
        from .host import ConsoleStop

        def on_console(name: str) -> None:
            log.info("received %s; shutting down", name)
            stop.set()

        try:
            ConsoleStop(on_console, stopped or threading.Event()).install()
        except (OSError, AttributeError) as exc:  # a service without a console has none to watch
            log.debug("no console control handler: %s", exc)


def cmd_run(args: argparse.Namespace) -> int:
    from .config import http_problem
    from .service import Service, check_state_dir, instance_lock
    from .systemd import Notifier

    stop, reload = threading.Event(), threading.Event()
    stopped = threading.Event()
    _install_signals(stop, reload, stopped)  # first: a SIGTERM during start-up still means a clean stop
    settings = _settings(args, agent=True)
    if getattr(args, "http", None):
        problem = http_problem(args.http, settings.http_token_file)
        if problem:
            raise ConfigError(f"--http: {problem}")
        settings.http = args.http
    assert settings.state_dir is not None
    check_state_dir(settings.state_dir)  # the lock lives there: say so plainly when it is not writable
    lock = instance_lock(settings)  # one agent per configuration; held until the agent has stopped
    try:
        notify = Notifier()
        svc = Service(settings)
        svc.start()
        notify.ready(f"watching {len(svc.roots)} root(s)")
        dog = notify.watchdog_interval
        last_dog, complained = 0.0, False
        try:
            while not stop.wait(min(1.0, dog or 1.0)):
                if reload.is_set():
                    reload.clear()
                    notify.send("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
                    svc.reload(settings.config_file)
                    notify.ready(f"watching {len(svc.roots)} root(s); {svc.reloads} reload(s)")
                if dog and time.monotonic() - last_dog >= dog:
                    if svc.working():
                        notify.watchdog()
                        last_dog, complained = time.monotonic(), False
                    elif not complained:
                        complained = True
                        log.error("a thread of the agent died or the supervisor stopped checking; not answering "
                                  "the systemd watchdog, so systemd restarts the agent")
        finally:
            notify.stopping()
            svc.stop(grace=8.0)
    finally:
        if lock is not None:
            lock.release()
        stopped.set()
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
            if _journal_gone_for(svc) > SCAN_JOURNAL_PATIENCE:
                break  # said below: a one-shot scan does not wait for the journal forever
    finally:
        svc.stop(grace=8.0)
    problems = _scan_problems(svc)
    try:
        j = _journal(settings)
        try:
            counts = ", ".join(f"{k} {v}" for k, v in j.counts().items())
        finally:
            j.close()
    except WatcherError as exc:
        counts = f"cannot be read ({exc})"
    print(f"scan done: {svc.committed} new candidate(s) journaled, {svc.publishers.published} published, "
          f"{svc.publishers.failed} failed; journal: {counts}")
    for line in problems:
        print(f"watcher: scan: {line}", file=sys.stderr)
    return EXIT_OK if ok and not problems and not svc.publishers.failed else EXIT_FAIL


SCAN_JOURNAL_PATIENCE = 60.0  # seconds a scan waits for a journal that takes no writes


def _journal_gone_for(svc: Any) -> float:
    since = svc.journal.health.snapshot().get("since")
    return 0.0 if since is None else time.time() - since


def _scan_problems(svc: Any) -> list[str]:
    """Why a scan did not do its whole job, one line each: a root whose walk did not finish (or
    whose top folder could not be read), candidates the journal could not take, candidates
    parked. Unreadable subfolders are reported by the walk and do not fail the scan."""
    out = []
    for name in svc.roots:
        stats = svc.scanner.stats.get(name)
        if not svc.scanner.scans.get(name):
            out.append(f"root {name}: the walk did not finish (see the log above); files there were not looked at")
        elif stats is not None and stats.dirs == 0 and stats.errors:
            out.append(f"root {name}: its folder {svc.roots[name].path} could not be read; give this user read access")
    unresolved = svc.journal.health.unresolved  # the journal's fault, if no write has succeeded since
    if unresolved and len(svc.settler):
        out.append(f"{len(svc.settler)} candidate(s) could not be journaled: journal unavailable: {unresolved}; "
                   "nothing is lost: run the scan again once the journal takes writes")
    if svc.pipeline.parked_total:
        out.append(f"{svc.pipeline.parked_total} candidate(s) parked after repeated errors (see the log above and "
                   "`watcher unmatched`)")
    return out


class _NoJournal:
    """What a journal that does not exist yet knows: nothing (``scan --dry-run`` must not
    create one)."""

    def known_files(self, root: str, directory: str) -> dict[str, tuple[int, int, int]]:
        return {}

    def by_key(self, key: str) -> None:
        return None

    def by_keys(self, keys: list[str]) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        pass


def _dry_run(settings: Settings, as_json: bool) -> int:
    """Walk, match and group without journaling or publishing."""
    from .journal import open_journal
    from .pipeline import dry_run
    from .roots import load_roots

    journal: Any = _NoJournal() if _journal_missing(settings) else open_journal(settings.journal_url())

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
    from .explain import explain_path, explain_text
    from .roots import load_roots

    settings = _settings(args, check_paths=False)
    roots = load_roots(settings)
    results = [explain_path(roots, raw) for raw in args.paths]
    if args.json:
        print(json.dumps(results, indent=2, ensure_ascii=False, default=str))
    else:
        for res in results:
            print(explain_text(res))
    return EXIT_OK if all(r.get("matched") for r in results) else EXIT_FAIL


def _keep(args: argparse.Namespace) -> Callable[[Any], bool]:
    """The Python side of the `publishes` filters (status and --since are SQL)."""
    import fnmatch

    etype, _, ename = (args.entity or "").rpartition(":")
    glob = args.path is not None and any(c in args.path for c in "*?[")

    def keep(row: Any) -> bool:
        p = row.publish
        if args.root and p.root != args.root:
            return False
        if args.entity:
            if p.entity is None or p.entity.name != ename or (etype and p.entity.type.lower() != etype.lower()):
                return False
        if args.path is not None:
            if not (fnmatch.fnmatchcase(p.path, args.path) if glob else args.path in p.path):
                return False
        return True

    return keep


def _local_time(iso: str | None) -> str:
    if not iso:
        return "-"
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _shown_row(row: Any) -> dict[str, Any]:
    """A journal row as `publishes` shows it: a tracker link or error journaled with a URL's
    password in it (by an older version) is shown with the password masked."""
    d = row.to_json()
    for key in ("tracker_url", "error"):
        if isinstance(d.get(key), str):
            d[key] = hide_url_password(d[key])
    return d


def cmd_publishes(args: argparse.Namespace) -> int:
    from .journal.base import Status

    settings = _settings(args, check_paths=False)
    if _journal_missing(settings):
        rows: list[Any] = []
    else:
        j = _journal(settings)
        try:
            rows = j.newest(status=Status(args.status) if args.status else None, since=args.since,
                            limit=args.limit, keep=_keep(args))
        finally:
            j.close()
    if args.json:
        print(json.dumps([_shown_row(r) for r in rows], indent=2, ensure_ascii=False, default=str))
        return EXIT_OK
    if not rows:
        print("no publishes" + (" matching the filters" if any((args.status, args.root, args.entity, args.path,
                                                                  args.since)) else ""))
    for r in rows:
        d = _shown_row(r)
        ent = f"{d['entity']['type']} {d['entity']['name']}" if d["entity"] else "-"
        frames = f" [{d['frames']}{', missing ' + d['missing_frames'] if d['missing_frames'] else ''}]" \
            if d["frames"] else ""
        when = _local_time(d["published_at"] or d["created_at"])
        print(f"{d['id']:>6}  {d['status']:<10}  {when}  {d['project'] or '-'}  {ent}  {d['task'] or '-'}  "
              f"{d['name']}  v{d['version'] if d['version'] is not None else '-'}")
        print(f"        {d['path']}{frames}")
        if d["tracker_id"]:
            print(f"        {d['tracker']} {d['tracker_id']}" + (f"  {d['tracker_url']}" if d["tracker_url"] else ""))
        if d["error"] and d["status"] != "published":
            print(f"        error: {d['error']}")
    return EXIT_OK


def _agent_note(settings: Settings) -> str:
    """Whether an agent will pick re-queued work up, and what to run when none will."""
    from . import health

    assert settings.state_dir is not None
    running, why = health.agent_running(_agent_status(settings.state_dir))
    cmd = _config_hint(settings)
    if running:
        return f"the running agent picks them up within seconds ({why})"
    shared = settings.journal_url().startswith(("postgresql://", "postgres://"))
    return (f"no agent is running for this configuration on this machine ({why}); "
            f"run `{cmd} run` (or `{cmd} scan` for one pass) to publish them"
            + ("; an agent on another machine sharing this PostgreSQL journal also picks them up" if shared else ""))


def cmd_retry(args: argparse.Namespace) -> int:
    if not args.ids and not args.failed and not args.webhooks:
        print("watcher retry: give publish ids, --failed or --webhooks", file=sys.stderr)
        return EXIT_USAGE
    settings = _settings(args, check_paths=False)
    from . import webhooks

    j = _journal(settings)
    try:
        moved = j.requeue(None if args.failed else args.ids) if (args.ids or args.failed) else []
        missing = [i for i in args.ids if i not in moved]
        hooks = webhooks.requeue_failed(j.db) if args.webhooks else 0
    finally:
        j.close()
    note = _agent_note(settings)
    if args.ids or args.failed:
        print(f"re-queued {len(moved)} publish(es): {', '.join(map(str, moved)) or '-'}")
    if args.webhooks:
        print(f"re-queued {hooks} webhook delivery(ies)")
    print(note)
    if missing:
        print(f"watcher retry: not failed (or unknown): {', '.join(map(str, missing))}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def _writable(path: Path) -> tuple[bool, str]:
    """Whether ``path`` is (or could be created as) a writable folder, without creating it."""
    probe = path
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return False, f"{probe} is not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return False, f"{probe} is not writable by this user"
    return True, "writable" if probe == path else f"will be created (in {probe})"


def _existing_report(roots: list[Any], journal: Any) -> int:
    """Per root: how many candidates already on disk (and not journaled) the next start would
    publish, and how many it would baseline (``existing``). A first start about to publish a
    tree's history is a warning. Returns the number of warnings."""
    from .pipeline import on_disk
    from .scan import ScanStats

    warnings = 0
    for r in roots:
        seen = getattr(journal, "first_seen", lambda _root: None)(r.name)
        publish = baseline = files = 0
        for cand, _row in on_disk([r], journal, ScanStats()):
            # existing: baseline keeps what predates the journal's first sight of the root
            # (all of it, before the first start); the rest publishes
            old = r.cfg.existing == "baseline" and (seen is None or _arrived_before(cand, seen))
            if old:
                baseline += 1
            else:
                publish += 1
                files += len(cand.files)
        first = seen is None
        text = ((f"root {r.name}: {publish} publish(es) ({files} file(s)) already on disk and not journaled; the "
                 f"{'first' if first else 'next'} start publishes them" if publish else
                 f"root {r.name}: nothing already on disk waits to be published") + f" (existing: {r.cfg.existing})"
                + (f"; {baseline} candidate(s) on disk before watcher will be recorded as baseline" if baseline else ""))
        if publish and first and r.cfg.existing == "publish":
            warnings += 1
            print(f"warn {text}. To keep a tree's history out of the tracker: `watcher baseline --root {r.name}` "
                  "once before the first start, or `existing: baseline` on the root")
        else:
            print(f"ok   {text}")
    return warnings


def _arrived_before(cand: Any, at: float) -> bool:
    from .candidate import build_publish

    arrived = build_publish(cand).arrived
    return arrived is not None and arrived < at


def cmd_check(args: argparse.Namespace) -> int:
    from .roots import load_roots
    from .service import backend_settings, make_backend

    settings = _settings(args)
    ok, warnings = True, 0
    roots = load_roots(settings, log_warnings=False)  # printed here, once
    for r in roots:
        if not r.templates.names:  # an empty or all-skipped file: the root would publish nothing, silently
            ok = False
            print(f"FAIL root {r.name}: {r.path}: {r.cfg.templates} defines no path templates, so nothing in this "
                  "root would ever publish; add `paths:` (see `watcher init`'s templates.yml)")
        else:
            print(f"ok   root {r.name}: {r.path} ({len(r.templates.names)} templates, {r.cfg.observer} observer)")
        for w in r.templates.warnings:
            warnings += 1
            print(f"warn root {r.name}: {w}")
    assert settings.state_dir is not None
    w_ok, why = _writable(settings.state_dir)
    ok &= w_ok
    print(f"{'ok  ' if w_ok else 'FAIL'} state_dir {settings.state_dir}: {why}"
          + ("" if w_ok else "; set state_dir to a folder this user may write"))
    missing = _journal_missing(settings)
    j = None
    if missing:
        print(f"ok   journal {settings.journal_url()} (not created yet: `watcher run` or `watcher scan` creates it)")
    else:
        j_ok, j = _check_journal(settings)
        ok &= j_ok
    if missing or j is not None:
        warnings += _existing_report(roots, j if j is not None else _NoJournal())
    if settings.http:
        settings.http_token()  # an unreadable token file is a configuration error
        print(f"ok   http {settings.http}" + (" (bearer token)" if settings.http_token_file else ""))
    hooks = {r.name: settings.hooks_for(r.name) for r in roots}
    if any(hooks.values()):
        signed = settings.webhook_key() is not None
        print(hide_url_password("ok   webhooks: " + "; ".join(f"{n}: {', '.join(u) or '-'}" for n, u in hooks.items())))
        if not signed:
            warnings += 1
            print("warn webhooks: no webhook_secret (or webhook_secret_file): deliveries are not signed")
    try:
        if missing and settings.tracker.backend == "local":
            backend_settings(settings)  # validated; the registry itself lives in the journal
            print("ok   local registry (kept in the journal, created with it)")
        else:
            backend = make_backend(settings, {r.name: Path(r.path) for r in roots}, [r.templates for r in roots])
            try:
                for res in backend.check():
                    ok &= res.ok
                    print(backend.scrub(hide_url_password(str(res))))  # never a secret, never a URL's password
            finally:
                backend.close()
    finally:
        if j is not None:
            j.close()
    if warnings and args.strict:
        print(f"{warnings} warning(s); --strict makes them fail", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK if ok else EXIT_FAIL


def _check_journal(settings: Settings) -> tuple[bool, Any]:
    """`check`'s journal lines: it opens as this watcher's journal, its pages are sound, it takes
    writes. Returns (ok, the journal when it may be read for the rest of the check)."""
    from .errors import JournalError

    try:
        j = _journal(settings)
    except JournalError as exc:
        print(f"FAIL journal {hide_url_password(settings.journal_url())}: {exc}")
        return False, None
    probes = j.check()
    bad = [p for p in probes if not p.ok]
    for p in bad:
        print(f"FAIL journal {j.url}: {p.what}: {p.detail}")
    if not bad:
        print(f"ok   journal {j.url} (" + "; ".join(f"{p.what}: {p.detail}" for p in probes) + ")")
    if any(p.what == "integrity" for p in bad):
        j.close()
        return False, None  # nothing more is read from a damaged journal
    return not bad, j


BASELINE_BATCH = 200  # candidates per transaction: a kill loses at most the batch being written


def cmd_baseline(args: argparse.Namespace) -> int:
    """Record every complete candidate already on disk as ``baseline``: known (scans skip its
    files), never published. One walk at scan speed, no tracker call, batches of
    ``BASELINE_BATCH`` per transaction, so an interrupted run is finished by running it again."""
    from .candidate import build_publish
    from .journal.base import Status
    from .pipeline import _records, on_disk
    from .roots import load_roots
    from .scan import ScanStats

    settings = _settings(args)
    roots = load_roots(settings)
    if args.root:
        roots = [r for r in roots if r.name == args.root]
        if not roots:
            raise ConfigError(f"--root {args.root}: no such root (roots: {', '.join(r.name for r in settings.roots)})")
    journal: Any = _NoJournal() if args.dry_run and _journal_missing(settings) else _journal(settings)
    now = time.time()
    summary: dict[str, dict[str, int]] = {}
    t0 = last = time.monotonic()
    batch: list[tuple[Any, list[Any]]] = []

    def flush() -> None:
        if batch and not args.dry_run:
            journal.baseline_many(batch)
        batch.clear()

    def walked(r: Any, stats: Any) -> None:
        log.info("baseline %s: %d files in %d dirs walked so far (%d already journaled)", r.name, stats.files,
                 stats.dirs, stats.known)

    try:
        for r in roots:
            stats = ScanStats()
            n = summary[r.name] = {"candidates": 0, "files": 0, "known_files": 0, "remembered_files": 0,
                                   "too_recent": 0, "left_to_agent": 0}
            for cand, row in on_disk([r], journal, stats, known_keys=True, progress=walked):
                pub = build_publish(cand)
                # complete: quiet for its settle window (a file being written now is the agent's), and
                # older than --older-than; a sequence counts by its newest frame
                quiet = cand.windows.settle if not cand.is_sequence else max(cand.windows.settle, cand.windows.sequence)
                cutoff = min(now - quiet, args.older_than if args.older_than is not None else now)
                if pub.mtime >= cutoff:
                    n["too_recent"] += 1
                    continue
                if row is None:
                    n["candidates"] += 1
                    n["files"] += len(cand.files)
                    batch.append((pub, _records(cand)))
                    if len(batch) >= BASELINE_BATCH:
                        flush()
                elif row.status in (Status.PUBLISHED, Status.BASELINE):  # new files of a known publish
                    n["remembered_files"] += len(cand.files)
                    if not args.dry_run:
                        journal.remember_files(row.id, _records(cand), "files on disk at `watcher baseline`: known, "
                                                                       "not republished")
                else:  # pending, publishing or failed: the agent decides
                    n["left_to_agent"] += 1
                if time.monotonic() - last >= 10:
                    last = time.monotonic()
                    log.info("baseline %s: %d candidate(s), %d file(s) recorded so far", r.name, n["candidates"],
                             n["files"])
            flush()
            n["known_files"] = stats.known
    finally:
        journal.close()
    verb = "would be" if args.dry_run else ""
    if args.json:
        print(json.dumps({"dry_run": bool(args.dry_run), "roots": summary}, indent=2))
        return EXIT_OK
    for name, n in summary.items():
        print(f"root {name}: {n['candidates']} candidate(s), {n['files']} file(s) {verb or 'recorded'} as baseline"
              + (f"; {n['remembered_files']} new file(s) of journaled publishes {verb or 'recorded'} as known"
                 if n["remembered_files"] else "")
              + f"; {n['known_files']} file(s) already journaled"
              + (f"; {n['too_recent']} candidate(s) written too recently, left to publish" if n["too_recent"] else "")
              + (f"; {n['left_to_agent']} candidate(s) already queued, left to the agent" if n["left_to_agent"] else ""))
    log.info("baseline done in %.1f s", time.monotonic() - t0)
    return EXIT_OK


class _RootStatus(BaseModel):
    """What `status` reads of a root in ``status.json`` (the agent may write more)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    path: str = ""
    up: bool = True
    rescans: int = 0
    last_rescan_reason: str | None = None


class _AgentStatus(BaseModel):
    """What `status` reads of ``status.json`` (the agent may write more)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)
    agent: str
    time: float
    queue: int = 0
    settling_files: int = 0
    publishing: int = 0
    stopped: bool = False
    roots: dict[str, _RootStatus] = Field(default_factory=dict)


def _agent_status(state_dir: Path) -> dict[str, Any] | None:
    """The agent's ``status.json`` when it has the shape `status` reads; a damaged one (a
    hand edit, a disk fault) is said in one line on stderr and taken as no status at all: the
    running agent rewrites it every few seconds."""
    from pydantic import ValidationError

    from . import health
    from .config import key_path

    path = state_dir / "status.json"
    data = health.read_status(state_dir)
    if data is None:
        if path.exists():
            print(f"watcher: {path}: not a JSON object (damaged); ignored until the agent writes it again",
                  file=sys.stderr)
        return None
    try:
        checked = _AgentStatus.model_validate(data)
    except ValidationError as exc:
        err = exc.errors(include_url=False, include_input=False)[0]
        print(f"watcher: {path}: {key_path(tuple(err['loc']))}: {err['msg']} (damaged); ignored until the agent "
              "writes it again", file=sys.stderr)
        return None
    # the checked values, typed, under the agent's own keys (`--json` shows everything it wrote)
    return {**data, **checked.model_dump(include={"agent", "time", "queue", "settling_files", "publishing",
                                                  "stopped"}),
            "roots": {n: {**data["roots"][n], **r.model_dump(include={"path", "up", "rescans", "last_rescan_reason"})}
                      for n, r in checked.roots.items()}}


def cmd_status(args: argparse.Namespace) -> int:
    from . import health, webhooks

    settings = _settings(args, check_paths=False)
    assert settings.state_dir is not None
    counts: dict[str, int] = {"pending": 0, "publishing": 0, "published": 0, "failed": 0}
    oldest, hooks = None, None
    if not _journal_missing(settings):
        j = _journal(settings)
        try:
            counts, oldest, hooks = j.counts(), j.oldest_pending(), webhooks.summary(j.db)
        finally:
            j.close()
    agent = _agent_status(settings.state_dir)
    if agent is not None:
        agent["age_seconds"] = round(time.time() - float(agent.get("time", 0)), 1)
    v = health.verdict(agent, counts, oldest, hooks, settings.health.max_pending_age,
                       fail_on_failed=settings.health.fail_on_failed)
    out = {**v, "journal": counts, "webhooks": hooks, "state_dir": str(settings.state_dir), "agent": agent}
    if args.json:
        print(json.dumps(out, indent=2, default=str))
    else:
        print("healthy" if v["ok"] else f"UNHEALTHY: {', '.join(v['failed'])}")
        for name, c in v["checks"].items():
            print(f"  {'ok  ' if c['ok'] else 'FAIL'} {name}: {c['reason']}")
        print("journal: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
        if hooks and any(hooks[k] for k in ("pending", "delivered", "failed")):
            print(f"webhooks: pending {hooks['pending']}, delivered {hooks['delivered']}, failed {hooks['failed']}"
                  + (f" (last error: {hooks['last_error']['url']}: {hooks['last_error']['error']})"
                     if hooks["last_error"] else ""))
        if agent and v["checks"]["agent"]["ok"]:
            print(f"agent {agent['agent']} (status written {agent['age_seconds']} s ago): queue {agent['queue']}, "
                  f"settling {agent['settling_files']} file(s), publishing {agent['publishing']}")
            for n, r in agent["roots"].items():
                print(f"  root {n}: {'up' if r['up'] else 'DOWN'} {r['path']} rescans {r['rescans']}"
                      + (f" (last: {r['last_rescan_reason']})" if r["last_rescan_reason"] else "")
                      + (f"; {r['down_reason']}" if not r["up"] and r.get("down_reason") else "")
                      + (f"; standing by: agent {r['standby_for']} watches it" if r.get("standby_for") else ""))
    return EXIT_OK if v["ok"] else EXIT_FAIL


def cmd_unmatched(args: argparse.Namespace) -> int:
    from .desk import local_time
    from .unmatched import entries, summary

    settings = _settings(args, check_paths=False)
    j = _journal(settings)
    try:
        found = entries(j.db, root=args.root, since=args.since)
        totals = summary(j.db)
    finally:
        j.close()
    if args.json:
        print(json.dumps([e.to_json() for e in found], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not found:
        print("no unmatched or ignored files" + (f" in root {args.root}" if args.root else "")
              + (" in that time" if args.since is not None else ""))
    now = time.time()
    for e in found:
        # one_line: a newline in a file name must not forge entries in this listing
        print(f"{one_line(e.path)}\n  root:      {e.root}   arrived {local_time(e.arrived_at, now)}"
              + (f"\n  closest:   {one_line(e.closest)}" if e.closest else "")
              + (f"\n  skipped:   {one_line(e.reason)}" if e.ignored else f"\n  no match:  {one_line(e.reason)}"))
    for root, t in sorted(totals.items()):
        if t["dropped"] and args.root in (None, root):
            print(f"root {root}: {t['dropped']} older entries were dropped to keep the list bounded", file=sys.stderr)
    return EXIT_OK


def cmd_agents(args: argparse.Namespace) -> int:
    settings = _settings(args, check_paths=False)
    j = _journal(settings)
    try:
        found = j.agents(settings.agent_timeout_seconds)
    finally:
        j.close()
    now = time.time()
    shown = found if args.all else [a for a in found if a["live"]]
    if args.json:
        print(json.dumps(shown, indent=2))
        return EXIT_OK
    if not shown:
        print("no live agent" + ("" if args.all else " (--all shows stopped and silent ones)"))
    for a in shown:
        state = "live" if a["live"] else ("stopped" if a["stopped_at"] else "SILENT")
        print(f"{a['agent']}  {state}  host {a['host']} pid {a['pid']}  roots {', '.join(a['roots']) or '-'}"
              + (f" (the one watching {', '.join(a['watching'])})" if a["watching"] else "")
              + f"  heartbeat {now - a['heartbeat_at']:.0f} s ago  publishing {a['publishing']}")
    return EXIT_OK


def cmd_desk(args: argparse.Namespace) -> int:
    from .config import parse_http_address
    from .desk import DeskApp, needs_token, read_token, serve

    settings = _settings(args, check_paths=False)
    try:
        host, port = parse_http_address(args.http)
    except ValueError as exc:
        raise ConfigError(f"--http: {exc}") from None
    token_file = args.token_file or getattr(settings, "http_token_file", None)
    token = None
    if args.token_file or needs_token(host):
        if not token_file:
            print(f"watcher desk: {args.http} is not a loopback address, so the page needs a token: set "
                  "http_token_file in the config or pass --token-file FILE", file=sys.stderr)
            return EXIT_USAGE
        token = read_token(token_file)
    stop = threading.Event()
    _install_signals(stop)
    j = _journal(settings)
    try:
        try:
            server = serve(DeskApp(settings, j, read_only=True, token=token), host, port)
        except OSError as exc:
            print(f"watcher desk: cannot listen on {args.http}: {exc.strerror or exc}", file=sys.stderr)
            return EXIT_FAIL
        shown = f"[{host}]" if ":" in host else host
        print(f"watcher desk: http://{shown}:{server.server_port}/ (read-only view of journal {j.url}"
              + ("; token required" if token else "") + "); Ctrl-C to stop", flush=True)
        t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="desk-http", daemon=True)
        t.start()
        try:
            while not stop.wait(1.0):
                pass
        finally:
            server.shutdown()
            server.server_close()
            t.join(5.0)
    finally:
        j.close()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import make_demo

    cfg = make_demo(Path(args.dir))
    print(f"demo: config {cfg}; watching {cfg.parent / 'shows'} on the local registry and the SQLite journal")
    ns = argparse.Namespace(config=str(cfg), log_level=getattr(args, "log_level", None),
                            log_format=getattr(args, "log_format", None), dry_run=False, json=False, timeout=120,
                            verify=False, http=None)
    if args.once:
        rc = cmd_scan(ns)
        cmd_publishes(argparse.Namespace(config=str(cfg), log_level=None, log_format=None, json=False,
                                         status=None, limit=None, root=None, entity=None, path=None, since=None))
        return rc
    print("demo: drop more files under the root (see README), list them with "
          f"`watcher -c {cfg} publishes`; Ctrl-C to stop")
    return cmd_run(ns)


COMMANDS = {"init": cmd_init, "run": cmd_run, "scan": cmd_scan, "explain": cmd_explain, "publishes": cmd_publishes,
            "retry": cmd_retry, "check": cmd_check, "status": cmd_status, "demo": cmd_demo,
            "unmatched": cmd_unmatched, "desk": cmd_desk, "agents": cmd_agents, "baseline": cmd_baseline}

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
