"""No traceback at the user-facing edges (issue 11): hostile configs, environments, state files
and arguments, each through a real `python -m watcher` process. Every failure is one line naming
the file, key or variable; exit 2 for configuration, 1 for runtime."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from .agent import DATA
from .test_cli import REPO, cli, make_config


def assert_one_line(r: subprocess.CompletedProcess, code: int, *words: str) -> str:
    """The process ended with ``code`` and a message (its last stderr line) holding ``words``."""
    assert "Traceback" not in r.stderr and "internal error" not in r.stderr, r.stderr
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    line = r.stderr.strip().splitlines()[-1]
    for w in words:
        assert w in line, (w, line)
    return line


# ---- configuration ---------------------------------------------------------------------------

def test_roots_from_the_environment_not_json_names_the_variable_and_the_fix(tmp_path):
    cfg = make_config(tmp_path)
    r = cli("-c", str(cfg), "check", env={"WATCHER_ROOTS": "notjson"})
    line = assert_one_line(r, 2, "WATCHER_ROOTS (environment)", "roots:", "JSON", "WATCHER_ROOTS__0")
    assert str(cfg) not in line  # the variable is to blame, not the file
    r = cli("-c", str(cfg), "check", env={"WATCHER_ROOTS": '[{"name": "x"'})  # JSON cut short
    assert_one_line(r, 2, "WATCHER_ROOTS (environment)", "JSON")


def test_config_that_is_not_utf8_names_the_file_and_the_line(tmp_path):
    cfg = make_config(tmp_path)
    text = cfg.read_bytes() + b"# caf\xe9 in latin-1\n"
    cfg.write_bytes(text)
    lines = text.count(b"\n")
    assert_one_line(cli("-c", str(cfg), "check"), 2, str(cfg), "not UTF-8", f"line {lines}", "0xe9")


def test_a_path_holding_a_nul_character_names_the_key(tmp_path):
    cfg = make_config(tmp_path)
    cfg.write_text(cfg.read_text().replace("path: root,", 'path: "ro\\0ot",'))
    assert_one_line(cli("-c", str(cfg), "check"), 2, str(cfg), "roots[0].path: holds a NUL character")


def test_secret_and_token_files_that_are_not_utf8_name_the_setting_and_the_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cfg = make_config(tmp_path)
    binary = tmp_path / "key.bin"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    base = cfg.read_text().replace("tracker:\n  backend: local\n", "")
    cases = [("webhook_secret_file", f"on_publish: [http://127.0.0.1:9/x]\nwebhook_secret_file: {binary}\n"
                                     "tracker:\n  backend: local\n"),
             ("http_token_file", f"http: 0.0.0.0:0\nhttp_token_file: {binary}\ntracker:\n  backend: local\n"),
             ("tracker.api_key_file", f"tracker:\n  backend: ftrack\n  server_url: http://127.0.0.1:9\n"
                                      f"  api_user: u\n  api_key_file: {binary}\n")]
    for i, (_, extra) in enumerate(cases):
        (tmp_path / f"c{i}.yml").write_text(base + extra)
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda i: cli("-c", str(tmp_path / f"c{i}.yml"), "check"), range(len(cases))))
    for (setting, _), r in zip(cases, runs):
        assert_one_line(r, 2, f"{setting}: {binary}", "not UTF-8")


BAD_ENV = [
    ("WATCHER_SETTLE_SECONDS", "abc", "settle_seconds: Input should be a valid number"),
    ("WATCHER_SETTLE_SECONDS", "inf", "settle_seconds: Input should be a finite number"),
    ("WATCHER_MAX_WAIT", "nan", "max_wait"),
    ("WATCHER_TRACKER__BACKEND", "nope", "tracker.backend: unknown backend 'nope'"),
    ("WATCHER_ROOTS__0__OBSERVER", "inotify", "roots[0].observer"),
    ("WATCHER_ROOTS__0__PATH", "/no/such/folder", "roots[0].path: /no/such/folder does not exist"),
    ("WATCHER_HEALTH__MAX_PENDING_AGE", "-1", "health.max_pending_age"),
]


def test_a_bad_environment_override_blames_the_variable_not_the_file(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    cfg = make_config(tmp_path)
    with ThreadPoolExecutor(3) as pool:
        runs = list(pool.map(lambda case: cli("-c", str(cfg), "check", env={case[0]: case[1]}), BAD_ENV))
    for (var, _value, words), r in zip(BAD_ENV, runs):
        line = assert_one_line(r, 2, f"{var} (environment)", words)
        assert str(cfg) not in line


def test_an_empty_template_file_fails_check_naming_it(tmp_path):
    cfg = make_config(tmp_path)
    empty = tmp_path / "empty.yml"
    empty.write_text("")
    cfg.write_text(cfg.read_text().replace(str(DATA / "pipeline.yml"), str(empty)))
    r = cli("-c", str(cfg), "check")
    assert "Traceback" not in r.stderr and r.returncode == 1, (r.stdout, r.stderr)
    [fail] = [line for line in r.stdout.splitlines() if line.startswith("FAIL")]
    assert "root shows" in fail and str(empty) in fail and "no path templates" in fail


@pytest.mark.parametrize("second", ["./root/", "root/../root", "link-to-root", "root/seq"])
def test_overlapping_roots_are_a_config_error_at_check_and_at_start(tmp_path, second):
    cfg = make_config(tmp_path)
    (tmp_path / "root/seq").mkdir()
    os.symlink(tmp_path / "root", tmp_path / "link-to-root")
    cfg.write_text(cfg.read_text().replace(
        "roots:\n", f"roots:\n  - {{name: other, path: '{second}', templates: {DATA / 'pipeline.yml'}}}\n"))
    for command in ("check", "scan") if second == "./root/" else ("check",):
        r = cli("-c", str(cfg), command)
        assert_one_line(r, 2, str(cfg), "roots[1].path", "'shows'", "'other'", "overlap", "published twice")
    assert not (tmp_path / "journal.db").exists()  # refused before anything started


def test_a_nested_root_kept_out_by_the_outer_roots_ignore_is_allowed(tmp_path):
    cfg = make_config(tmp_path)
    (tmp_path / "root/drop").mkdir()
    cfg.write_text(cfg.read_text().replace(
        "roots:\n  - {name: shows, path: root,",
        f"roots:\n  - {{name: vendor, path: root/drop, templates: {DATA / 'pipeline.yml'}}}\n"
        "  - {name: shows, path: root, ignore: ['drop/'],"))
    r = cli("-c", str(cfg), "check")
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert "ok   root vendor" in r.stdout and "ok   root shows" in r.stdout


# ---- runtime ---------------------------------------------------------------------------------

def test_status_into_a_closed_pipe_ends_quietly(tmp_path):
    """`watcher status | head -0`: the reader is gone before anything is written."""
    cfg = make_config(tmp_path)
    for args in (("status",), ("publishes", "--json"), ("check",)):
        r, w = os.pipe()
        os.close(r)
        try:
            done = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), *args], stdout=w,
                                  stderr=subprocess.PIPE, text=True, cwd=REPO, timeout=120)
        finally:
            os.close(w)
        assert done.stderr == "" and done.returncode in (0, 1), (args, done.returncode, done.stderr)


def test_retry_with_an_id_beyond_64_bits_is_a_usage_error(tmp_path):
    cfg = make_config(tmp_path)
    assert cli("-c", str(cfg), "scan").returncode == 0  # a journal to look in
    r = cli("-c", str(cfg), "retry", "99999999999999999999999")
    assert_one_line(r, 2, "99999999999999999999999", "not a publish id")
    assert_one_line(cli("-c", str(cfg), "retry", "0"), 2, "not a publish id")
    assert_one_line(cli("-c", str(cfg), "retry", "x1"), 2, "'x1' is not a publish id")


DAMAGED = [
    ("{bad json", "not a JSON object"),
    ("[1, 2]", "not a JSON object"),
    ('{"agent": "h:1:1", "time": "noon", "roots": {}}', "time:"),
    ('{"agent": "h:1:1", "time": 1e999}', "time:"),
    ('{"agent": "h:1:1", "time": 5, "roots": {"shows": 3}}', "roots.shows:"),
]


def test_a_damaged_status_file_is_named_and_ignored(tmp_path):
    cfg = make_config(tmp_path)
    (tmp_path / "state").mkdir()
    status = tmp_path / "state/status.json"
    for content, words in DAMAGED:
        status.write_text(content)
        r = cli("-c", str(cfg), "status")
        assert_one_line(r, 1, str(status), words, "ignored")  # unhealthy: no agent it can trust
        assert "no agent has written a status" in r.stdout
    r = cli("-c", str(cfg), "status", "--json")
    assert_one_line(r, 1, str(status), "ignored")
    assert json.loads(r.stdout)["agent"] is None  # the JSON contract still holds
    assert cli("-c", str(cfg), "scan").returncode == 0
    r = cli("-c", str(cfg), "retry", "--failed")  # says whether an agent will pick the work up
    assert r.returncode == 0 and "Traceback" not in r.stderr and "no agent is running" in r.stdout, r.stderr
