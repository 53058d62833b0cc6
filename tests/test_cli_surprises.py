"""A CLI without surprises (issue 14, item 7): real `python -m watcher` processes."""
from __future__ import annotations

import json
import shutil
import ssl
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib.metadata import version
from pathlib import Path

import pytest

from watcher.config import load_settings
from watcher.errors import PermanentError
from watcher.journal.sqlite import SqliteJournal
from watcher.model import Entity, Publish, TrackerRef
from watcher.publish.http import HttpClient

from .agent import DATA
from .test_cli import REPO, cli, make_config


def test_version():
    r = cli("--version")
    assert r.returncode == 0 and r.stdout.strip() == f"watcher {version('watcher')}"


def _fill(cfg: Path, tmp: Path, n: int) -> None:
    """n publishes: ids 1..n, root shows, entity Shot sh{i%3}, project P, every third failed."""
    j = SqliteJournal(f"sqlite:///{tmp}/journal.db")
    try:
        items = [(Publish(key=f"k{i}", root="shows", root_path=str(tmp / "root"), template="nuke",
                          path=str(tmp / f"root/sh{i % 3}/script_{i}.nk"), name=f"script_{i}", publish_type="Nuke Script",
                          version=i, entity=Entity("Shot", f"sh{i % 3}"), project="Proj", task="comp"), [])
                 for i in range(1, n + 1)]
        for chunk in range(0, n, 500):
            j.add_many(items[chunk:chunk + 500])
        agent = "test:1:1"
        while (row := j.claim(agent, time.time(), 60)) is not None:
            if row.id % 3 == 0:
                j.fail(row.id, agent, "refused: no such task")
            else:
                j.published(row.id, agent, "shotgrid", TrackerRef(str(1000 + row.id), f"https://sg.example/detail/{row.id}"))
    finally:
        j.close()


def test_global_options_after_the_subcommand_and_publishes_filters(tmp_path):
    cfg = make_config(tmp_path)
    _fill(cfg, tmp_path, 12)
    for args in (("-c", str(cfg), "publishes", "--json"), ("publishes", "--json", "-c", str(cfg)),
                 ("publishes", "-c", str(cfg), "--log-level", "ERROR", "--json")):
        r = cli(*args)
        assert r.returncode == 0, r.stderr
        assert [p["id"] for p in json.loads(r.stdout)] == list(range(12, 0, -1))  # newest first
    assert cli("-c", "/nonexistent.yml", "publishes", "-c", str(cfg)).returncode == 0  # after wins

    def ids(*extra: str) -> list[int]:
        r = cli("publishes", "-c", str(cfg), "--json", *extra)
        assert r.returncode == 0, r.stderr
        return [p["id"] for p in json.loads(r.stdout)]

    assert ids("--limit", "3") == [12, 11, 10]
    assert ids("--status", "failed", "--limit", "2") == [12, 9]  # the limit counts after the filter
    assert ids("--entity", "Shot:sh1") == [10, 7, 4, 1] and ids("--entity", "sh1") == [10, 7, 4, 1]
    assert ids("--entity", "Asset:sh1") == []
    assert ids("--path", "script_1") == [12, 11, 10, 1] and ids("--path", "*/sh2/*") == [11, 8, 5, 2]
    assert ids("--root", "other") == [] and len(ids("--root", "shows")) == 12
    assert len(ids("--since", "1h")) == 12 and ids("--since", "2999-01-01") == []
    for bad in ("0", "-1", "x"):
        r = cli("publishes", "-c", str(cfg), "--limit", bad)
        assert r.returncode == 2 and "--limit" in r.stderr
    assert cli("publishes", "-c", str(cfg), "--since", "yesterday").returncode == 2

    text = cli("publishes", "-c", str(cfg), "--status", "published", "--limit", "1").stdout
    first = text.splitlines()[0]
    assert first.split()[0] == "11" and "published" in first and "Proj" in first and "Shot sh2" in first
    assert time.strftime("%Y-%m-%d") in first  # when it was published, local time
    assert "https://sg.example/detail/11" in text and "shotgrid 1011" in text
    assert "error: refused: no such task" in cli("publishes", "-c", str(cfg), "--limit", "1").stdout  # 12 failed


def test_closed_pipe_exits_quietly(tmp_path):
    cfg = make_config(tmp_path)
    _fill(cfg, tmp_path, 1500)  # far more than a pipe buffer
    r = subprocess.run(["bash", "-c", f"set -o pipefail; {sys.executable} -m watcher -c {cfg} publishes | head -2"],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 2
    assert r.stderr == "", r.stderr


def test_check_strict_and_warnings_printed_once(tmp_path):
    cfg = make_config(tmp_path)
    tpl = tmp_path / "warn.yml"
    tpl.write_text((DATA / "pipeline.yml").read_text().replace("paths:\n", "paths:\n  broken: '@nosuch/x.exr'\n"))
    cfg.write_text(cfg.read_text().replace(str(DATA / "pipeline.yml"), str(tpl)))
    r = cli("-c", str(cfg), "check")
    assert r.returncode == 0, r.stdout + r.stderr
    assert (r.stdout + r.stderr).count("nosuch") == 1  # once, not once per logger
    strict = cli("check", "--strict", "-c", str(cfg))
    assert strict.returncode == 1 and "--strict" in strict.stderr


def test_check_and_dry_run_do_not_create_the_journal(tmp_path):
    cfg = make_config(tmp_path)
    (tmp_path / "root/seq/sq01/sh010/comp/work").mkdir(parents=True)
    (tmp_path / "root/seq/sq01/sh010/comp/work/sh010_a_v001.nk").write_text("x")
    assert cli("-c", str(cfg), "check").returncode == 0
    dry = cli("-c", str(cfg), "scan", "--dry-run", "--json")
    assert dry.returncode == 0 and len(json.loads(dry.stdout)) == 1
    assert cli("-c", str(cfg), "publishes").stdout.strip() == "no publishes"
    assert not (tmp_path / "journal.db").exists()


def test_environment_errors_name_the_variable(tmp_path):
    cfg = make_config(tmp_path)
    r = cli("-c", str(cfg), "check", env={"WATCHER_SETTLE_SECONDS": "abc"})
    assert r.returncode == 2
    assert r.stderr.startswith("watcher: WATCHER_SETTLE_SECONDS (environment): settle_seconds:"), r.stderr
    assert str(cfg) not in r.stderr
    r = cli("-c", str(cfg), "check", env={"WATCHER_ROOTS__0__PATH": "/no/such/dir"})
    assert r.returncode == 2 and "WATCHER_ROOTS__0__PATH (environment): roots[0].path: /no/such/dir" in r.stderr


def test_nested_list_overrides_work(tmp_path):
    cfg = make_config(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    s = load_settings(cfg, environ={"WATCHER_ROOTS__0__PATH": str(other), "WATCHER_ROOTS__0__OBSERVER": "polling",
                                    "WATCHER_TRACKER__TIMEOUT": "5", "WATCHER_ON_PUBLISH": '["https://h.example/x"]'})
    assert s.roots[0].path == other and s.roots[0].observer == "polling" and s.roots[0].name == "shows"
    assert s.tracker.options == {"timeout": "5"} and s.on_publish == ["https://h.example/x"]
    s = load_settings(cfg, environ={"WATCHER_ROOTS__1__NAME": "more", "WATCHER_ROOTS__1__PATH": str(other),
                                    "WATCHER_ROOTS__1__TEMPLATES": str(DATA / "pipeline.yml")})
    assert [r.name for r in s.roots] == ["shows", "more"]  # the index one past the end appends
    r = cli("-c", str(cfg), "explain", str(other / "x.nk"), "--json", env={"WATCHER_ROOTS__0__PATH": str(other)})
    assert json.loads(r.stdout)[0]["root"] == "shows"


@pytest.mark.parametrize("body, expected", [
    ("settle_secs: 3\n", "settle_secs: unknown setting; did you mean 'settle_seconds'?"),
    ("wrokers: 3\n", "wrokers: unknown setting; did you mean 'workers'?"),
    ("health: {max_pending_ages: 3}\n", "health.max_pending_ages: unknown setting; did you mean 'max_pending_age'?"),
    ("journal: /var/lib/watcher/journal.db\n",
     "journal: '/var/lib/watcher/journal.db' is a path, not a journal URL; write sqlite:////var/lib/watcher/journal.db"),
])
def test_config_mistakes_get_a_useful_message(tmp_path, body, expected):
    cfg = make_config(tmp_path)
    text = cfg.read_text()
    if body.startswith("journal:"):
        text = "\n".join(ln for ln in text.splitlines() if not ln.startswith("journal:")) + "\n"
    cfg.write_text(text + body)
    r = cli("-c", str(cfg), "check")
    assert r.returncode == 2 and expected in r.stderr, r.stderr


def test_root_key_typo_suggests(tmp_path):
    cfg = make_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("templates:", "templtes: x, templates:"))
    r = cli("-c", str(cfg), "check")
    assert r.returncode == 2 and "roots[0].templtes: unknown setting; did you mean 'templates'?" in r.stderr


def test_retry_says_whether_an_agent_runs_and_what_to_run(tmp_path):
    cfg = make_config(tmp_path)
    _fill(cfg, tmp_path, 3)  # row 3 failed
    r = cli("retry", "3", "-c", str(cfg))
    assert r.returncode == 0 and "re-queued 1 publish(es): 3" in r.stdout
    assert "no agent is running" in r.stdout and f"watcher -c {cfg.resolve()} run" in r.stdout


class _TLS:
    """An HTTPS server on 127.0.0.1 with a self-signed certificate nobody trusts."""

    def __init__(self, tmp: Path) -> None:
        openssl = shutil.which("openssl")
        if openssl is None:
            pytest.fail("openssl is needed to make the test certificate (apt-get install openssl)")
        subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(tmp / "k.pem"),
                        "-out", str(tmp / "c.pem"), "-days", "1", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1"],
                       check=True, capture_output=True, timeout=60)
        self.hits = 0
        outer = self

        class H(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                self.send_response(200)
                self.end_headers()

            def log_message(self, *a):
                pass

        self.server = HTTPServer(("127.0.0.1", 0), H)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(tmp / "c.pem", tmp / "k.pem")
        self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, name="test-tls", daemon=True)
        self.thread.start()
        self.url = f"https://127.0.0.1:{self.server.server_port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


def test_tls_certificate_errors_are_permanent_and_say_what_to_set(tmp_path):
    srv = _TLS(tmp_path)
    sleeps: list[float] = []
    try:
        client = HttpClient(srv.url, retries=3, sleep=sleeps.append)
        with pytest.raises(PermanentError) as e:
            client.request("GET", "/api")
        assert "TLS certificate check failed" in str(e.value) and "certificate verify failed" in str(e.value)
        assert "tracker.ca_bundle" in str(e.value) and "verify_tls" in str(e.value)
        assert sleeps == []  # not retried as if transient
        trusted = HttpClient(srv.url, verify=str(tmp_path / "c.pem"))
        assert trusted.request("GET", "/api") is None and srv.hits == 1  # with the CA it works
        client.close()
        trusted.close()
    finally:
        srv.close()
