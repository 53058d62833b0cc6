"""The service templates in contrib/ and the platform CI matrix: each parses with the parser
its OS uses and says what the README promises. The LaunchAgent's shell line is run for real
(with /bin/sh and a stand-in `watcher` on PATH), since launchd would run exactly that."""
from __future__ import annotations

import plistlib
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
PLIST = REPO / "contrib" / "launchd" / "local.watcher.agent.plist"
TASK = REPO / "contrib" / "windows" / "watcher-agent.xml"
WINSW = REPO / "contrib" / "windows" / "watcher-service.xml"
MATRIX = REPO / ".github" / "workflows" / "matrix.yml"
NS = {"t": "http://schemas.microsoft.com/windows/2004/02/mit/task"}


def _plist() -> dict:
    with PLIST.open("rb") as fh:
        return plistlib.load(fh)


def test_launch_agent_plist():
    p = _plist()
    assert p["Label"] == "local.watcher.agent" and PLIST.stem == p["Label"]  # launchctl finds it by name
    args = p["ProgramArguments"]
    assert args[:2] == ["/bin/sh", "-c"] and len(args) == 3
    assert 'exec watcher -c "$HOME/.config/watcher/watcher.yml" run ' in args[2]
    assert "~" not in args[2]  # launchd expands neither ~ nor $HOME; the shell expands $HOME
    assert p["RunAtLoad"] is True and p["KeepAlive"] == {"SuccessfulExit": False}
    assert p["LimitLoadToSessionType"] == "Aqua" and p["ThrottleInterval"] >= 10 and p["ExitTimeOut"] >= 15


def test_launch_agent_command_runs_watcher_run(tmp_path):
    """launchd runs ProgramArguments as they are: run them with a stand-in watcher that records
    its arguments, its environment and what it writes to stderr."""
    home = tmp_path / "Users" / "ann"
    bin_dir = home / ".local" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "watcher"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$HOME/args"\necho "watcher log line" >&2\n')
    fake.chmod(0o755)
    args = _plist()["ProgramArguments"]
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}  # launchd's default PATH
    done = subprocess.run(args, env=env, timeout=30)
    assert done.returncode == 0
    assert (home / "args").read_text().splitlines() == ["-c", f"{home}/.config/watcher/watcher.yml", "run"]
    assert (home / "Library" / "Logs" / "watcher" / "agent.log").read_text() == "watcher log line\n"
    subprocess.run(args, env=env, timeout=30, check=True)  # a restart appends, never truncates
    assert (home / "Library" / "Logs" / "watcher" / "agent.log").read_text().count("watcher log line") == 2


def test_windows_logon_task():
    root = ET.parse(TASK).getroot()
    assert root.tag == f"{{{NS['t']}}}Task"
    [trigger] = root.findall("t:Triggers/*", NS)
    assert trigger.tag == f"{{{NS['t']}}}LogonTrigger" and trigger.findtext("t:Enabled", namespaces=NS) == "true"
    assert trigger.find("t:UserId", NS) is None  # any user's logon: one agent per artist
    [principal] = root.findall("t:Principals/t:Principal", NS)
    assert principal.findtext("t:GroupId", namespaces=NS) == "S-1-5-32-545"  # BUILTIN\Users, by SID
    # elevated, it would not see the drives the artist mapped
    assert principal.findtext("t:RunLevel", namespaces=NS) == "LeastPrivilege"
    assert principal.find("t:LogonType", NS) is None or \
        principal.findtext("t:LogonType", namespaces=NS) == "InteractiveToken"
    actions = root.find("t:Actions", NS)
    assert actions is not None and actions.get("Context") == principal.get("id")
    [exe] = actions.findall("t:Exec", NS)
    assert exe.findtext("t:Command", namespaces=NS).endswith("\\pythonw.exe")  # no console window
    arguments = exe.findtext("t:Arguments", namespaces=NS)
    assert arguments.startswith("-m watcher -c ") and arguments.endswith(" run")
    assert "%APPDATA%" in arguments  # the artist's own config, expanded by the task engine
    settings = root.find("t:Settings", NS)
    assert settings.findtext("t:ExecutionTimeLimit", namespaces=NS) == "PT0S"  # never killed after 72 h
    assert settings.findtext("t:MultipleInstancesPolicy", namespaces=NS) == "IgnoreNew"
    assert settings.findtext("t:DisallowStartIfOnBatteries", namespaces=NS) == "false"
    assert settings.find("t:RestartOnFailure", NS) is not None


def test_windows_service_wrapper():
    root = ET.parse(WINSW).getroot()
    assert root.tag == "service" and root.findtext("id") == "watcher"
    exe = root.findtext("executable")
    assert exe.endswith("\\python.exe")  # a console process: WinSW's Ctrl+C reaches it
    assert root.findtext("arguments").startswith("-m watcher -c ") and " run" in root.findtext("arguments")
    env = {e.get("name"): e.get("value") for e in root.findall("env")}
    assert env["WATCHER_STATE_DIR"].startswith("%ProgramData%")  # not the service account's profile
    assert root.findtext("stoptimeout") and [f.get("action") for f in root.findall("onfailure")] == ["restart"] * 2
    assert root.find("log").get("mode") == "roll-by-size"
    assert "LanmanWorkstation" in [d.text for d in root.findall("depend")]


def test_platform_matrix_workflow():
    wf = yaml.safe_load(MATRIX.read_text())
    triggers = wf.get("on", wf.get(True))  # YAML 1.1 reads a bare `on` as true
    assert "workflow_dispatch" in triggers and "pull_request" in triggers
    job = wf["jobs"]["test"]
    m = job["strategy"]["matrix"]
    assert job["runs-on"] == "${{ matrix.os }}" and job["strategy"]["fail-fast"] is False
    assert any(o.startswith("macos-") for o in m["os"]) and any(o.startswith("windows-") for o in m["os"])
    assert m["python"] == ["3.10", "3.11", "3.13"]  # strings: 3.10 as a number is 3.1
    assert sorted(m["watchdog"]) == ["6", "7"]
    runs = "\n".join(s.get("run", "") for s in job["steps"])
    assert '"watchdog==${{ matrix.watchdog }}.*"' in runs
    assert 'for platform in win32 darwin linux' in runs and 'python -m mypy --platform "$platform" watcher/' in runs
    assert '-m "not linux_only"' in runs
    cross = "\n".join(s.get("run", "") for s in wf["jobs"]["cross-typecheck"]["steps"])
    assert "for platform in win32 darwin linux" in cross

