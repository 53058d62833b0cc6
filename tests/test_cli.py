"""The CLI as a user (or automation) calls it: real subprocesses, exit codes, JSON contracts."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from .agent import DATA, write_frames

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "watcher", *args], capture_output=True, text=True, cwd=cwd or REPO,
                          env={**os.environ, **(env or {})}, timeout=120)


def make_config(tmp: Path, backend_extra: str = "") -> Path:
    root = tmp / "root"
    root.mkdir(exist_ok=True)
    cfg = tmp / "watcher.yml"
    cfg.write_text(f"roots:\n  - {{name: shows, path: root, templates: {DATA / 'pipeline.yml'}}}\n"
                   f"settle_seconds: 0.2\njournal: sqlite:///{tmp}/journal.db\nstate_dir: state\n"
                   f"tracker:\n  backend: local\n{backend_extra}")
    return cfg


def test_scan_publishes_and_publishes_json_contract(tmp_path):
    cfg = make_config(tmp_path)
    root = tmp_path / "root"
    write_frames(root / "seq/sq01/sh010/comp/render/beauty/v003", "beauty", [1001, 1002, 1004])
    (root / "seq/sq01/sh010/comp/work").mkdir(parents=True)
    (root / "seq/sq01/sh010/comp/work/sh010_slap_v002.nk").write_text("x")
    (root / "seq/sq01/sh010/comp/work/notes.txt").write_text("no template")

    dry = cli("-c", str(cfg), "scan", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert sorted(d["path"].rsplit("/", 1)[1] for d in json.loads(dry.stdout)) == ["beauty.%04d.exr", "sh010_slap_v002.nk"]
    assert json.loads(cli("-c", str(cfg), "publishes", "--json").stdout) == []  # dry run changed nothing

    r = cli("-c", str(cfg), "scan")
    assert r.returncode == 0, r.stderr
    out = json.loads(cli("-c", str(cfg), "publishes", "--json").stdout)
    assert len(out) == 2
    seq = next(o for o in out if o["frames"])
    assert set(seq) >= {"id", "root", "template", "path", "frames", "missing_frames", "name", "version", "entity",
                        "task", "publish_type", "status", "tracker", "tracker_id", "error", "created_at",
                        "published_at"}
    assert seq["path"] == str(root / "seq/sq01/sh010/comp/render/beauty/v003/beauty.%04d.exr")
    assert (seq["frames"], seq["missing_frames"], seq["version"], seq["status"]) == ("1001-1004", "1003", 3, "published")
    assert seq["entity"] == {"type": "Shot", "name": "sh010"} and seq["task"] == "comp" and seq["tracker"] == "local"
    assert seq["tracker_id"] and seq["published_at"] and seq["error"] is None
    nk = next(o for o in out if not o["frames"])
    assert nk["frames"] is None and nk["missing_frames"] is None and nk["path"].endswith("sh010_slap_v002.nk")

    again = cli("-c", str(cfg), "scan")  # a second pass publishes nothing twice
    assert again.returncode == 0 and "0 new candidate" in again.stdout
    assert len(json.loads(cli("-c", str(cfg), "publishes", "--json").stdout)) == 2
    only = json.loads(cli("-c", str(cfg), "publishes", "--json", "--status", "failed").stdout)
    assert only == []


def test_explain_match_and_miss(tmp_path):
    cfg = make_config(tmp_path)
    root = tmp_path / "root"
    p = root / "seq/sq01/sh010/comp/render/beauty/v003/beauty.1001.exr"
    r = cli("-c", str(cfg), "explain", str(p), "--json")
    assert r.returncode == 0, r.stderr
    [res] = json.loads(r.stdout)
    assert res["matched"] and res["root"] == "shows" and res["template"] == "render"
    assert res["fields"]["Shot"] == "sh010" and res["fields"]["version"] == 3
    miss = cli("-c", str(cfg), "explain", str(root / "seq/sq01/sh010/comp/render/beauty/v0x3/beauty.1001.exr"))
    assert miss.returncode == 1 and "no match" in miss.stdout
    outside = cli("-c", str(cfg), "explain", "/etc/passwd")
    assert outside.returncode == 1 and "not under any configured root" in outside.stdout
    text = cli("-c", str(cfg), "explain", str(p))
    assert "template:  render" in text.stdout and "sh010" in text.stdout


def test_retry_and_usage_errors(tmp_path):
    cfg = make_config(tmp_path)
    assert cli("-c", str(cfg), "retry").returncode == 2
    assert cli("-c", str(cfg), "nosuchcommand").returncode == 2
    r = cli("-c", str(cfg), "retry", "999")
    assert r.returncode == 1 and "not failed" in r.stderr
    assert cli("-c", str(tmp_path / "missing.yml"), "run").returncode == 2


def test_init_writes_a_config_that_runs_as_is(tmp_path):
    r = cli("init", str(tmp_path / "w"))
    assert r.returncode == 0, r.stderr
    cfg = tmp_path / "w/watcher.yml"
    assert "settle_seconds" in cfg.read_text()
    check = cli("-c", str(cfg), "check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert cli("init", str(tmp_path / "w")).returncode == 2  # never overwrites


def test_check_reports_backend(tmp_path):
    cfg = make_config(tmp_path)
    r = cli("-c", str(cfg), "check")
    assert r.returncode == 0 and "local registry" in r.stdout


def test_status(tmp_path):
    cfg = make_config(tmp_path)
    r = cli("-c", str(cfg), "status", "--json")
    out = json.loads(r.stdout)
    assert out["journal"]["published"] == 0
    # no agent has ever run for this config: not healthy, and the JSON says which check failed
    assert r.returncode == 1 and out["ok"] is False and out["failed"] == ["agent"]
    assert not (tmp_path / "journal.db").exists()  # status reads; it never creates the journal


def test_scan_verify_finds_a_file_rewritten_while_the_agent_was_down(tmp_path):
    cfg = make_config(tmp_path)
    # amend_window 0: outside the amend window the root's republish policy decides
    cfg.write_text(cfg.read_text().replace("templates: ", "republish: new_version, templates: ") + "amend_window: 0\n")
    work = tmp_path / "root/seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    script = work / "sh010_slap_v002.nk"
    script.write_text("x")
    assert cli("-c", str(cfg), "scan").returncode == 0
    script.write_text("rewritten in place")
    assert "0 new candidate" in cli("-c", str(cfg), "scan").stdout  # a plain scan skips known files
    r = cli("-c", str(cfg), "scan", "--verify")
    assert r.returncode == 0, r.stderr
    out = json.loads(cli("-c", str(cfg), "publishes", "--json").stdout)
    assert [(o["version"], o["status"]) for o in out] == [(3, "published"), (2, "published")]  # newest first


def test_dry_run_admits_what_the_pipeline_admits(tmp_path):
    cfg = make_config(tmp_path)
    work = tmp_path / "root/seq/sq01/sh010/comp/work"
    work.mkdir(parents=True)
    (tmp_path / "outside.nk").write_text("x")
    (work / "sh010_evil_v001.nk").symlink_to(tmp_path / "outside.nk")
    (work / "sh010_real_v001.nk").write_text("y")
    r = cli("-c", str(cfg), "scan", "--dry-run", "--json")
    assert r.returncode == 0, r.stderr
    assert [d["path"] for d in json.loads(r.stdout)] == [str(work / "sh010_real_v001.nk")]
    assert "outside root" in r.stderr
