"""`watcher demo`: a ready-to-run root with sample files, on the embedded defaults (local
registry, SQLite journal), laid out as the shipped `templates/studio.yml` expects."""
from __future__ import annotations

import os
from pathlib import Path

SAMPLES: dict[str, list[int | None] | None] = {
    # a 24-frame render sequence with one missing frame, reported as a hole
    "sequences/sq010/sh010/comp/publish/renders/beauty/v001/beauty.{frame:04d}.exr": [
        f for f in range(1001, 1025) if f != 1013],
    "sequences/sq010/sh010/comp/publish/nuke/sh010_comp_v001.nk": None,
    "sequences/sq010/sh010/plates/bg01/v001/sh010_bg01_v001.{frame:04d}.dpx": list(range(1001, 1011)),
    "assets/char/hero/model/publish/maya/hero_model_v003.ma": None,
    "sequences/sq010/sh010/comp/work/nuke/sh010_comp_v002.nk": None,  # work file: matched, never published
}


def make_demo(base: Path) -> Path:
    """Create (or reuse) the demo folder and return its config path."""
    from .config import shipped_template

    base = base.resolve()
    shows = base / "shows"
    for pattern, frames in SAMPLES.items():
        for frame in frames or [None]:
            path = shows / (pattern.format(frame=frame) if frame is not None else pattern)
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.exists():
                path.write_bytes(os.urandom(2048) if frame is not None else b"# sample\n" * 32)
    tpl = base / "templates.yml"
    if not tpl.exists():
        tpl.write_text(shipped_template("studio.yml").read_text(encoding="utf-8"), encoding="utf-8")
    cfg = base / "watcher.yml"
    if not cfg.exists():
        cfg.write_text(
            "# The demo config: embedded defaults (local registry, SQLite journal). See README.\n"
            "roots:\n  - name: shows\n    path: shows\n    templates: templates.yml\n"
            "settle_seconds: 2\nsequence_settle_seconds: 3\n"
            "journal: sqlite:///state/journal.db\nstate_dir: state\ntracker:\n  backend: local\n",
            encoding="utf-8")
    return cfg
