"""The latency cost of pace-awareness (issue #12): a sequence written at a steady pace is held
until it stops arriving, so its publish comes later than the configured sequence window. This
prints, per pace, the time from the last frame's close to its publish beside the configured
window and the stretched one (pace_factor x the gap between frames).

    python bench/pace.py            # paces 0.25, 1 and 2 s, 12 frames each, ~1.5 min
    python bench/pace.py --quick    # paces 0.25 and 1 s, 6 frames

The agent is ``python -m watcher run`` in a subprocess (local backend, SQLite journal), as in
bench/pipeline.py; the writer is this process. A report, not a test: exits 0."""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import pipeline as P  # noqa: E402  (the bench's own helpers: Agent, Report, mmm)

SEQ_WINDOW = 1.0
PACE_FACTOR = 3.0


def one(base: Path, pace: float, frames: int) -> dict:
    root = base / "root"
    d = root / "seq/sq01/sh001/comp/render/main/v001"
    d.mkdir(parents=True)
    agent = P.Agent(base / "agent", root, settle=0.2, seq=SEQ_WINDOW, rescan_interval=0, pace_factor=PACE_FACTOR,
                    first_frame_wait=max(2.0, 3 * pace)).start()
    try:
        agent.warm("seq/sq00/sh000/comp/work/sh000_warm_v001.nk")
        last = 0.0
        for i in range(frames):
            if i:
                time.sleep(pace)
            with open(d / P.FRAME_FMT.format(frame=1001 + i), "wb") as f:
                f.write(P.PAYLOAD)
            last = time.time()
        P.wait_until(lambda: any(x["template"] == "render" and x["status"] == "published"
                                 for x in agent.publishes()), 60 + 10 * pace, 0.05, "paced publish")
        [pub] = [x for x in agent.publishes() if x["template"] == "render"]
    finally:
        agent.stop()
    return {"latency": pub["published_at"] - last, "frames": pub.get("frame_count"),
            "stretched": max(SEQ_WINDOW, PACE_FACTOR * pace)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    paces, frames = ([0.25, 1.0], 6) if args.quick else ([0.25, 1.0, 2.0], 12)
    rep = P.Report()
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="watcher-pace-") as tmp:
        for pace in paces:
            r = one(Path(tmp) / f"p{pace}", pace, frames)
            print(f"  pace {pace} s: last frame -> published {r['latency']:.2f} s (window {SEQ_WINDOW} s, "
                  f"stretched {r['stretched']:.2f} s), {r['frames']} frames", flush=True)
            rep.add("pace", f"{frames} frames, one every {pace} s: last frame's close -> published",
                    f"{r['latency']:.2f} s, {r['frames']} of {frames} frames in one publish",
                    f"one publish, whole; about the stretched window",
                    f"configured window {SEQ_WINDOW} s; stretched {r['stretched']:.2f} s (pace_factor {PACE_FACTOR})",
                    P.verdict(r["frames"] == frames))
    rep.note("the extra latency of pace-awareness is the stretched window minus the configured one: a farm writing "
             "a frame every 2 s publishes about 6 s after its last frame instead of 1 s, and never as a partial "
             "sequence; a done_marker or expect_frames ends the wait at once.")
    rep.print_results(f"{time.monotonic() - t0:.0f} s, one run per pace", args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
