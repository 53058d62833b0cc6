"""watcher/ type-checks clean as Linux, Windows and macOS code (issue #17): each platform's stubs
see only the code its ``sys.platform`` guards let through, so a Windows-only or POSIX-only API
used unguarded fails here on a Linux machine, long before a studio's Windows workstation. The
settings are pyproject's ``[tool.mypy]``; mypy's default cache (.mypy_cache) keeps reruns short."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("platform", ["linux", "win32", "darwin"])
def test_watcher_type_checks_for(platform: str) -> None:
    r = subprocess.run([sys.executable, "-m", "mypy", "watcher", "--platform", platform],
                       cwd=REPO, capture_output=True, text=True, timeout=110)
    assert r.returncode == 0, f"mypy watcher --platform {platform} failed:\n{r.stdout}{r.stderr}"
