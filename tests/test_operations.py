"""Running it as a service (issue 14), with real agent processes: honest `status` exit codes,
SIGHUP reload, /metrics and /healthz over HTTP, durable signed webhooks, systemd units."""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from watcher.health import verdict
from watcher.agent import new_agent_id

from .agent import DATA, wait_for, write_frames
from .test_cli import REPO, cli, make_config

SHOT = "seq/sq01/sh010/comp"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Agent:
    """`python -m watcher -c CFG run ...` in its own process, its log in a file."""

    def __init__(self, cfg: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.cfg = cfg
        self.log = cfg.parent / f"agent-{time.monotonic_ns()}.log"
        self._fh = open(self.log, "w")
        self.proc = subprocess.Popen([sys.executable, "-m", "watcher", "-c", str(cfg), "run", *args], cwd=REPO,
                                     stdout=self._fh, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def text(self) -> str:
        return self.log.read_text()

    def wait_healthy(self, timeout: float = 30) -> dict:
        def healthy():
            if self.proc.poll() is not None:
                raise AssertionError(f"agent exited {self.proc.returncode}:\n{self.text()}")
            r = cli("-c", str(self.cfg), "status", "--json")
            return json.loads(r.stdout) if r.returncode == 0 else None
        return wait_for(healthy, timeout, every=0.3)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._fh.close()
        return self.proc.returncode


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    started: list[Agent] = []
    yield started
    for a in started:
        a.stop(signal.SIGKILL)


def published(cfg: Path) -> list[dict]:
    return [p for p in json.loads(cli("-c", str(cfg), "publishes", "--json").stdout) if p["status"] == "published"]


# -- 1. honest health ----------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_status_exits_1_once_the_agent_is_killed_or_stopped(tmp_path, agents, sig):
    cfg = make_config(tmp_path)
    a = Agent(cfg)
    agents.append(a)
    out = a.wait_healthy()
    assert out["ok"] and out["failed"] == [] and out["checks"]["agent"]["ok"]
    a.stop(sig)
    t0 = time.monotonic()
    r = wait_for(lambda: (lambda r: r if r.returncode == 1 else None)(cli("-c", str(cfg), "status", "--json")), 10,
                 every=0.2)
    assert time.monotonic() - t0 < 5
    out = json.loads(r.stdout)
    assert out["ok"] is False and out["failed"] == ["agent"]
    assert ("gone" if sig == signal.SIGKILL else "stopped") in out["checks"]["agent"]["reason"]
    text = cli("-c", str(cfg), "status")
    assert text.returncode == 1 and text.stdout.startswith("UNHEALTHY: agent")


def test_verdict_names_each_failed_check():
    now = time.time()
    status = {"agent": new_agent_id(), "time": now,  # this live process
              "roots": {"a": {"up": True}, "b": {"up": False}}}
    v = verdict(status, {"failed": 2}, now - 7200, {"failed": 1}, 3600, now=now)
    assert v["ok"] is False and v["failed"] == ["roots", "publishes", "backlog", "webhooks"]
    assert "b" in v["checks"]["roots"]["reason"] and "2 publish" in v["checks"]["publishes"]["reason"]
    ok = verdict({**status, "roots": {"a": {"up": True}}}, {"failed": 0}, now - 10, {"failed": 0}, 3600, now=now)
    assert ok["ok"] and ok["failed"] == []
    other_host = {"agent": "elsewhere:1:1", "time": now - 60, "roots": {}}
    stale = verdict(other_host, {}, None, None, 3600, now=now)
    assert stale["failed"] == ["agent"] and "60 s" in stale["checks"]["agent"]["reason"]
    assert verdict({**other_host, "time": now - 1}, {}, None, None, 3600, now=now)["ok"]


# -- 2. state per config -------------------------------------------------------------------
def test_state_follows_the_config(tmp_path):
    env = {"XDG_STATE_HOME": str(tmp_path / "xdg"), "STATE_DIRECTORY": ""}
    for name in ("one", "two"):
        assert cli("init", str(tmp_path / name), env=env).returncode == 0
    states = []
    for name in ("one", "two"):
        r = cli("-c", str(tmp_path / name / "watcher.yml"), "check", env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        [line] = [ln for ln in r.stdout.splitlines() if "state_dir" in ln]
        states.append(line.split()[2].rstrip(":"))
        assert "journal" in r.stdout and not list(Path(states[-1]).glob("journal.db"))  # check creates nothing
    assert states[0] != states[1] and all(s.startswith(str(tmp_path / "xdg" / "watcher")) for s in states)
    # under systemd the state follows $STATE_DIRECTORY
    r = cli("-c", str(tmp_path / "one/watcher.yml"), "status", "--json",
            env={**env, "STATE_DIRECTORY": str(tmp_path / "sd")})
    assert json.loads(r.stdout)["state_dir"] == str(tmp_path / "sd")


def test_unwritable_state_dir_is_an_error_at_start_up(tmp_path):
    """A state dir that cannot be written (here a file: root may write anywhere else) stops
    `run` with exit 2 and the reason; `check` reports it."""
    cfg = make_config(tmp_path)
    (tmp_path / "state").write_text("not a folder")
    r = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "run"], capture_output=True, text=True,
                       timeout=60, cwd=REPO)
    assert r.returncode == 2 and "state_dir: cannot write" in r.stderr, r.stderr
    check = cli("-c", str(cfg), "check")
    assert check.returncode == 1 and "FAIL state_dir" in check.stdout


# -- 3. reload -----------------------------------------------------------------------------
def test_sighup_applies_a_valid_config_and_refuses_an_invalid_one(tmp_path, agents):
    cfg = make_config(tmp_path)
    drop = tmp_path / "drop2"
    drop.mkdir()
    a = Agent(cfg)
    agents.append(a)
    a.wait_healthy()
    # a file settling while the reload happens is not lost
    (tmp_path / "root" / SHOT / "work").mkdir(parents=True)
    (tmp_path / "root" / SHOT / "work" / "sh010_before_v001.nk").write_text("x")
    cfg.write_text(cfg.read_text().replace(
        "roots:\n", f"roots:\n  - {{name: second, path: {drop}, templates: {DATA / 'pipeline.yml'}}}\n"))
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "second" in (a.wait_healthy().get("agent") or {}).get("roots", {}), 20, every=0.3)
    (drop / "drop").mkdir()
    (drop / "drop" / "sh020_comp_main_v002.nk").write_text("y")
    wait_for(lambda: {p["root"] for p in published(cfg)} == {"shows", "second"} and len(published(cfg)) == 2, 30,
             every=0.3)
    assert "reload: configuration" in a.text() and "added second" in a.text()

    good = cfg.read_text()
    cfg.write_text(good + "settle_secondz: 3\n")
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "reload refused" in a.text(), 20, every=0.2)
    assert "did you mean 'settle_seconds'" in a.text()
    assert a.proc.poll() is None  # still running, on the old configuration
    status_file = tmp_path / "state" / "status.json"
    t = time.time()
    wait_for(lambda: json.loads(status_file.read_text())["time"] > t, 10, every=0.2)
    assert set(json.loads(status_file.read_text())["roots"]) == {"shows", "second"}
    cfg.write_text(good)  # (the CLI reads the file too)
    (drop / "drop" / "sh020_comp_main_v003.nk").write_text("z")  # and the roots keep publishing
    wait_for(lambda: len(published(cfg)) == 3, 30, every=0.3)

    cfg.write_text(good.replace(f"  - {{name: second, path: {drop}, templates: {DATA / 'pipeline.yml'}}}\n", ""))
    a.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: set(a.wait_healthy()["agent"]["roots"]) == {"shows"}, 20, every=0.3)
    assert a.stop() == 0
    assert "received SIGHUP; reloading" in a.text() and "Traceback" not in a.text()


# -- 4. metrics and health over HTTP -------------------------------------------------------
def _get(url: str, token: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_metrics_after_a_known_burst(tmp_path, agents):
    cfg = make_config(tmp_path)
    port = free_port()
    a = Agent(cfg, "--http", f"127.0.0.1:{port}")
    agents.append(a)
    a.wait_healthy()
    base = f"http://127.0.0.1:{port}"
    root = tmp_path / "root"
    write_frames(root / SHOT / "render/beauty/v001", "beauty", range(1001, 1021))  # one sequence of 20 frames
    work = root / SHOT / "work"
    work.mkdir(parents=True)
    for i in range(1, 6):  # five scripts
        (work / f"sh010_s{i}_v00{i}.nk").write_text("x")
    (work / "notes.txt").write_text("matches nothing")
    wait_for(lambda: len(published(cfg)) == 6, 30, every=0.3)

    def scraped():
        status, body = _get(base + "/metrics")
        assert status == 200
        m = _samples(body.decode())
        return m if m.get(("watcher_publishes_total", (("backend", "local"), ("outcome", "published")))) == 6 else None
    m = wait_for(scraped, 10, every=0.2)
    assert m[("watcher_journal_rows", (("status", "published"),))] == 6
    assert m[("watcher_journal_rows", (("status", "failed"),))] == 0
    assert m[("watcher_publish_latency_seconds_count", (("backend", "local"),))] == 6
    assert m[("watcher_unmatched_files_total", (("root", "shows"),))] >= 1
    events = {dict(k[1])["kind"]: v for k, v in m.items() if k[0] == "watcher_events_total"}
    # 26 files (20 frames, 5 scripts, notes) in new directories: each reported at least once, by an
    # event or by the scan of its new directory
    assert sum(events.get(k, 0) for k in ("created", "closed", "seen")) >= 26, events
    assert events.get("dir_created", 0) >= 1, events
    assert m[("watcher_candidates", (("state", "settling"),))] == 0
    assert m[("watcher_root_up", (("root", "shows"),))] == 1
    assert m[("watcher_healthy", ())] == 1
    status, body = _get(base + "/healthz")
    assert status == 200 and json.loads(body)["ok"] is True
    assert _get(base + "/nothing-here")[0] == 404
    a.stop()


def test_http_off_loopback_needs_a_token_and_checks_it(tmp_path, agents):
    cfg = make_config(tmp_path)
    r = cli("-c", str(cfg), "run", "--http", f"0.0.0.0:{free_port()}")
    assert r.returncode == 2 and "http_token_file" in r.stderr
    token = tmp_path / "token"
    token.write_text("s3cret-token\n")
    port = free_port()
    cfg.write_text(cfg.read_text() + f"http: '0.0.0.0:{port}'\nhttp_token_file: token\n")
    a = Agent(cfg)
    agents.append(a)
    a.wait_healthy()
    base = f"http://127.0.0.1:{port}"
    assert _get(base + "/metrics")[0] == 401
    assert _get(base + "/healthz", "wrong")[0] == 401
    assert _get(base + "/healthz", "s3cret-token")[0] == 200
    status, body = _get(base + "/metrics", "s3cret-token")
    assert status == 200 and b"watcher_journal_rows" in body


def test_listener_mounts_other_apps_and_keeps_its_own_routes():
    from watcher.listener import Listener

    def desk(environ, start_response):
        body = f"desk {environ['SCRIPT_NAME']}|{environ['PATH_INFO']}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    lst = Listener("127.0.0.1", 0, metrics=lambda: b"m 1\n", health=lambda: {"ok": False}, apps={"/": desk})
    lst.mount("/desk", desk)
    with pytest.raises(ValueError):
        lst.mount("/metrics", desk)
    lst.start()
    try:
        base = f"http://127.0.0.1:{lst.port}"
        assert _get(base + "/")[1] == b"desk |/"
        assert _get(base + "/desk/io/today")[1] == b"desk /desk|/io/today"
        assert _get(base + "/metrics")[1] == b"m 1\n"
        assert _get(base + "/healthz")[0] == 503
    finally:
        lst.stop()
    assert not lst.thread.is_alive()


# -- 5. webhooks ---------------------------------------------------------------------------
class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 503 while ``down`` or for the first
    ``fail_first`` requests, and records every request."""

    def __init__(self, fail_first: int = 0) -> None:
        self.fail_first, self.down = fail_first, False
        self.requests: list[tuple[str, bytes, str | None, int]] = []
        self.lock = threading.Lock()
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    fail = outer.down or len(outer.requests) < outer.fail_first
                    code = 503 if fail else 200
                    outer.requests.append((self.headers["X-Watcher-Delivery"], body,
                                           self.headers.get("X-Watcher-Signature"), code))
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-receiver", daemon=True)
        self.thread.start()

    def delivered(self) -> dict[str, dict]:
        with self.lock:
            return {d: json.loads(b) for d, b, _, code in self.requests if code == 200}

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver(fail_first=2)
    yield r
    r.close()


def _hook_config(tmp_path: Path, url: str) -> Path:
    cfg = make_config(tmp_path)
    (tmp_path / "hook.key").write_text("hook-secret\n")
    cfg.write_text(cfg.read_text() + f"on_publish: ['{url}']\nwebhook_secret_file: hook.key\n"
                                     "retry_base_seconds: 0.2\nretry_cap_seconds: 0.5\n")
    return cfg


def _agent_publishing_scripts(tmp_path, agents, receiver, n: int):
    """A real agent with a webhook to ``receiver``, and ``n`` Nuke scripts it has published."""
    cfg = _hook_config(tmp_path, receiver.url)
    a = Agent(cfg)
    agents.append(a)
    a.wait_healthy()
    work = tmp_path / "root" / SHOT / "work"
    work.mkdir(parents=True)
    for i in range(1, n + 1):
        (work / f"sh010_s{i}_v001.nk").write_text("x")
    wait_for(lambda: len(published(cfg)) == n, 30, every=0.3)
    return cfg, a


def test_webhooks_fail_twice_then_deliver_everything_signed(tmp_path, agents, receiver):
    cfg, _a = _agent_publishing_scripts(tmp_path, agents, receiver, 3)
    wait_for(lambda: len(receiver.delivered()) == 3, 30, every=0.2)
    pubs = {p["id"]: p for p in published(cfg)}
    got = receiver.delivered()
    assert sorted(b["id"] for b in got.values()) == sorted(pubs)
    for body in got.values():  # the publish as `publishes --json` shows it
        assert body == {**pubs[body["id"]], "tracker_url": body["tracker_url"]}
    with receiver.lock:
        reqs = list(receiver.requests)
    assert [code for *_, code in reqs[:2]] == [503, 503]
    failed_ids = {d for d, *_ in reqs[:2]}
    assert failed_ids <= set(got)  # the repeats carried the same delivery id
    for d, body, sig, _ in reqs:
        assert sig == "sha256=" + hmac.new(b"hook-secret", body, hashlib.sha256).hexdigest()
    out = json.loads(cli("-c", str(cfg), "status", "--json").stdout)
    assert out["webhooks"]["delivered"] == 3 and out["webhooks"]["failed"] == 0 and out["ok"]


def test_webhook_outage_across_a_restart_loses_nothing(tmp_path, agents, receiver):
    receiver.down = True
    cfg, a = _agent_publishing_scripts(tmp_path, agents, receiver, 2)
    wait_for(lambda: len(receiver.requests) >= 2, 20, every=0.2)
    out = json.loads(cli("-c", str(cfg), "status", "--json").stdout)
    assert out["webhooks"]["pending"] == 2 and "503" in out["webhooks"]["last_error"]["error"]
    assert a.stop(signal.SIGKILL) == -signal.SIGKILL  # the worst restart: nothing flushed
    receiver.down = False
    b = Agent(cfg)
    agents.append(b)
    wait_for(lambda: len(receiver.delivered()) == 2, 60, every=0.2)
    assert sorted(x["id"] for x in receiver.delivered().values()) == sorted(p["id"] for p in published(cfg))
    with receiver.lock:
        ids = {d for d, *_ in receiver.requests}
    assert ids == set(receiver.delivered())  # every attempt, before and after the restart, under 2 ids
    b.stop()


def test_parked_webhook_shows_in_status_and_retry_brings_it_back(tmp_path, agents, receiver):
    receiver.down = True
    cfg = _hook_config(tmp_path, receiver.url)
    cfg.write_text(cfg.read_text() + "webhook_max_attempts: 2\n")
    a = Agent(cfg)
    agents.append(a)
    a.wait_healthy()
    (tmp_path / "root" / SHOT / "work").mkdir(parents=True)
    (tmp_path / "root" / SHOT / "work" / "sh010_s1_v001.nk").write_text("x")
    r = wait_for(lambda: (lambda r: r if r.returncode == 1 else None)(cli("-c", str(cfg), "status", "--json")), 30,
                 every=0.3)
    out = json.loads(r.stdout)
    assert out["failed"] == ["webhooks"] and out["webhooks"]["failed"] == 1
    receiver.down = False
    rr = cli("-c", str(cfg), "retry", "--webhooks")
    assert rr.returncode == 0 and "re-queued 1 webhook" in rr.stdout and "running agent picks them up" in rr.stdout
    wait_for(lambda: len(receiver.delivered()) == 1, 20, every=0.2)
    a.wait_healthy()


# -- 6. systemd ----------------------------------------------------------------------------
@pytest.mark.parametrize("unit, verify_as", [("watcher.service", "watcher.service"),
                                             ("watcher@.service", "watcher@alice.service")])
def test_systemd_units_verify(tmp_path, unit, verify_as):
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    text = (REPO / "contrib" / unit).read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "NoNewPrivileges=yes" in text
    assert "ProtectSystem=strict" in text and "StateDirectory=" in text and "Restart=on-failure" in text
    exe = shutil.which("watcher") or sys.executable
    (tmp_path / verify_as).write_text(text.replace("/usr/local/bin/watcher", exe))
    r = subprocess.run([analyze, "verify", str(tmp_path / verify_as)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr.strip() == "", r.stderr


def test_ready_and_watchdog_reach_the_notify_socket(tmp_path, agents):
    sock_path = str(tmp_path / "notify.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(sock_path)
    srv.settimeout(30)
    try:
        cfg = make_config(tmp_path)
        a = Agent(cfg, env={"NOTIFY_SOCKET": sock_path, "WATCHDOG_USEC": "1000000"})
        agents.append(a)
        seen: list[str] = []
        while not ("READY=1" in seen and seen.count("WATCHDOG=1") >= 2):
            seen += srv.recv(4096).decode().splitlines()
        a.proc.send_signal(signal.SIGHUP)
        while "RELOADING=1" not in seen:
            seen += srv.recv(4096).decode().splitlines()
        assert a.stop() == 0
        while "STOPPING=1" not in seen:
            seen += srv.recv(4096).decode().splitlines()
    finally:
        srv.close()
