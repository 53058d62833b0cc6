from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from watcher.config import load_settings
from watcher.errors import ConfigError

TEMPLATES = "keys:\n  Shot: {type: str}\npaths:\n  render: '{Shot}/out.exr'\n"


def write(tmp: Path, text: str) -> Path:
    (tmp / "tpl.yml").write_text(TEMPLATES)
    (tmp / "shows").mkdir(exist_ok=True)
    cfg = tmp / "watcher.yml"
    cfg.write_text(text)
    return cfg


def test_minimal_config_from_the_issue_loads(tmp_path):
    cfg = write(tmp_path, "roots:\n  - name: shows\n    path: shows\n    templates: tpl.yml\nsettle_seconds: 5\n"
                          f"journal: sqlite:///{tmp_path}/j.db\ntracker:\n  backend: local\n")
    s = load_settings(cfg)
    assert s.roots[0].path == (tmp_path / "shows").resolve()
    assert s.roots[0].templates == (tmp_path / "tpl.yml").resolve()
    assert s.settle_seconds == 5 and s.tracker.backend == "local"
    assert s.journal_url() == f"sqlite:///{tmp_path}/j.db"
    assert s.settle_for(s.roots[0]) == (5, 5)


def test_missing_root_path_names_file_key_and_reason(tmp_path):
    cfg = write(tmp_path, "roots:\n  - {name: a, path: shows, templates: tpl.yml}\n"
                          "  - {name: b, path: /mnt/x-not-here, templates: tpl.yml}\n")
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert str(e.value) == f"{cfg}: roots[1].path: /mnt/x-not-here does not exist"


@pytest.mark.parametrize("body, expected", [
    ("roots: []\n", "roots: List should have at least 1 item"),
    ("roots:\n  - {name: a, path: shows, templates: tpl.yml, observer: inotify}\n", "roots[0].observer: Input should be"),
    ("roots:\n  - {name: a, path: shows, templates: tpl.yml}\nsettle_secs: 3\n", "settle_secs: unknown setting"),
    ("roots:\n  - {name: a, path: shows, templates: tpl.yml}\nsettle_seconds: -1\n", "settle_seconds: Input should be greater"),
    ("roots:\n  - {name: a, path: shows, templates: tpl.yml}\njournal: mysql://u:pw@x\n", "journal: 'mysql://...' is not a journal URL"),
    ("roots:\n  - {name: a, path: shows, templates: nope.yml}\n", "roots[0].templates:"),
    ("roots:\n  - {name: a, path: shows, templates: tpl.yml}\n  - {name: a, path: shows, templates: tpl.yml}\n", "two roots are named 'a'"),
    ("roots: [\n", "invalid YAML"),
])
def test_bad_configs_say_what_is_wrong(tmp_path, body, expected):
    cfg = write(tmp_path, body)
    with pytest.raises(ConfigError) as e:
        load_settings(cfg)
    assert str(e.value).startswith(str(cfg)) and expected in str(e.value)


def test_yaml_error_names_the_line(tmp_path):
    cfg = write(tmp_path, "roots:\n  - name: a\n    path: [unclosed\n")
    with pytest.raises(ConfigError, match=r"line \d+"):
        load_settings(cfg)


def test_environment_overrides_the_file(tmp_path, monkeypatch):
    cfg = write(tmp_path, "roots:\n  - {name: a, path: shows, templates: tpl.yml}\nsettle_seconds: 5\n")
    monkeypatch.setenv("WATCHER_SETTLE_SECONDS", "0.5")
    monkeypatch.setenv("WATCHER_TRACKER__BACKEND", "ftrack")
    monkeypatch.setenv("WATCHER_TRACKER__API_KEY", "s3cret-value")
    s = load_settings(cfg)
    assert s.settle_seconds == 0.5
    assert s.tracker.backend == "ftrack" and s.tracker.options["api_key"] == "s3cret-value"


def test_bad_config_exits_2_with_one_message(tmp_path):
    cfg = write(tmp_path, "roots:\n  - {name: a, path: /mnt/x-not-here, templates: tpl.yml}\n")
    r = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "scan", "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2
    assert r.stderr.strip() == f"watcher: {cfg}: roots[0].path: /mnt/x-not-here does not exist"


def test_unknown_backend_and_bad_backend_setting_exit_2(tmp_path):
    cfg = write(tmp_path, "roots:\n  - {name: a, path: shows, templates: tpl.yml}\n"
                          f"journal: sqlite:///{tmp_path}/j.db\ntracker:\n  backend: nosuch\n")
    r = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "check"], capture_output=True, text=True)
    assert r.returncode == 2 and "tracker.backend: unknown backend 'nosuch'" in r.stderr
    cfg.write_text(cfg.read_text().replace("nosuch", "local\n  colour: blue"))
    r = subprocess.run([sys.executable, "-m", "watcher", "-c", str(cfg), "check"], capture_output=True, text=True)
    assert r.returncode == 2 and "tracker.colour: unknown setting" in r.stderr, r.stderr
