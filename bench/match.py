"""Matching speed: watcher.match against the naive parse loop, on one core.

    python bench/match.py [--paths 100000] [--runs 3] [--seed 7]

100k relative paths for the 30 templates in bench/templates.yml: 80% are the frames of 20
sequences x 4,000 frames in 20 directories, 20% scattered single files over 5 sequences x 29
shots and 55 assets, a tenth of which (~2% of all) match nothing (``.nk~``, ``.DS_Store``,
backups, logs). Each run matches every path with a fresh TemplateSet (cold caches) and with the
naive loop (results dropped as made, like the pipeline does; the check below keeps them): ``parse.compile`` per template (one-segment string type, key-typed fields), tried
in specificity order until one matches, then the equally specific ones for ambiguity. Prints
paths/s side by side and exits 1 if the two disagree on template or fields for any path.
"""
from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import parse

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from watcher.match import load_templates  # noqa: E402
from watcher.match.keys import IntKey, Key, SequenceKey  # noqa: E402
from watcher.match.matcher import TemplateSet  # noqa: E402

TEMPLATES = HERE / "templates.yml"

SEQ_DIRS = [  # (format of the frame path, template it should match)
    ("sequences/{sq}/{sh}/comp/work/images/{n}/v{v:03d}/1920x1080/{sh}_{n}_main_v{v:03d}.{f:04d}.exr", "nuke_shot_render_work"),
    ("sequences/{sq}/{sh}/comp/publish/elements/{n}/v{v:03d}/2048x1152/{sh}_{n}_main_v{v:03d}.{f:04d}.exr", "nuke_shot_render_pub"),
    ("sequences/{sq}/{sh}/comp/publish/elements/{n}/v{v:03d}/2048x1152/{sh}_{n}_main_v{v:03d}.{f:04d}.dpx", "nuke_shot_render_dpx"),
    ("sequences/{sq}/{sh}/anim/work/playblast/{n}/v{v:03d}/{sh}_{n}_v{v:03d}.{f:04d}.jpg", "maya_shot_playblast"),
    ("sequences/{sq}/{sh}/light/work/images/{n}/v{v:03d}/1920x1080/{sh}_{n}_v{v:03d}.{f:04d}.exr", "houdini_shot_render"),
    ("sequences/{sq}/{sh}/fx/work/houdini/cache/{n}/v{v:03d}/{sh}_{n}_v{v:03d}.{f:04d}.bgeo.sc", "houdini_shot_cache"),
    ("sequences/{sq}/{sh}/plates/{n}/v{v:03d}/{sh}_{n}_v{v:03d}.{f:04d}.exr", "shot_plate"),
    ("sequences/{sq}/{sh}/plates/{n}/v{v:03d}/{sh}_{n}_v{v:03d}.{f:04d}.dpx", "shot_plate_dpx"),
    ("assets/{at}/{a}/lookdev/review/turntable/{n}/v{v:03d}/{a}_{n}_v{v:03d}.{f:04d}.png", "asset_turntable"),
]
SINGLES = [
    "sequences/{sq}/{sh}/comp/work/nuke/{n}.v{v:03d}.nk",
    "sequences/{sq}/{sh}/comp/publish/nuke/{n}.v{v:03d}.nk",
    "sequences/{sq}/{sh}/comp/review/{sh}_{n}_main_v{v:03d}.mov",
    "sequences/{sq}/{sh}/anim/work/maya/{n}.v{v:03d}.ma",
    "sequences/{sq}/{sh}/anim/publish/maya/{n}.v{v:03d}.mb",
    "sequences/{sq}/{sh}/anim/publish/caches/{n}.v{v:03d}.abc",
    "sequences/{sq}/{sh}/fx/work/houdini/{n}.v{v:03d}.hip",
    "sequences/{sq}/{sh}/fx/publish/houdini/{n}.v{v:03d}.hip",
    "sequences/{sq}/{sh}/paint/work/photoshop/{n}.v{v:03d}.psd",
    "sequences/{sq}/{sh}/paint/publish/photoshop/{n}.v{v:03d}.psd",
    "assets/{at}/{a}/model/work/maya/{n}.v{v:03d}.ma",
    "assets/{at}/{a}/model/publish/maya/{n}.v{v:03d}.mb",
    "assets/{at}/{a}/fx/work/houdini/{n}.v{v:03d}.hip",
    "assets/{at}/{a}/fx/publish/houdini/{n}.v{v:03d}.hip",
    "assets/{at}/{a}/comp/work/nuke/{n}.v{v:03d}.nk",
    "assets/{at}/{a}/art/publish/photoshop/{n}.v{v:03d}.psd",
    "assets/{at}/{a}/rig/publish/caches/{n}.v{v:03d}.abc",
    "assets/{at}/{a}/surf/publish/textures/{n}/v{v:03d}/{a}_{n}_v{v:03d}.{u}.tif",
    "assets/{at}/{a}/lookdev/review/{a}_{n}_v{v:03d}.mov",
]
JUNK = [
    "sequences/{sq}/{sh}/comp/work/nuke/{n}.v{v:03d}.nk~",
    "sequences/{sq}/{sh}/comp/work/nuke/.DS_Store",
    "sequences/{sq}/{sh}/anim/work/maya/{n}.v{v:03d}.ma.bak",
    "sequences/{sq}/{sh}/fx/work/houdini/{n}.v{v:03d}_bak1.hip",
    "sequences/{sq}/{sh}/light/work/images/render_{v}.log",
    "assets/{at}/{a}/model/work/maya/incrementalSave/{n}.v{v:03d}.ma",
    "assets/{at}/{a}/surf/publish/textures/{n}/v{v:03d}/Thumbs.db",
    "sequences/{sq}/{sh}/comp/work/nuke/{n}.v{v:03d}.nk.autosave",
]
NAMES = ["main", "comp", "beauty", "fg", "bg", "hero", "layout", "anim", "fxsim", "cloth"]


def make_paths(total: int, seed: int) -> list[str]:
    rnd = random.Random(seed)
    seqs = [f"sq{10 * (i + 1):03d}" for i in range(5)]
    shots = [(sq, f"sh{10 * (j + 1):04d}") for sq in seqs for j in range(29)]
    assets = [(("char", "prop", "env", "veh", "fx")[i % 5], f"asset{i:02d}") for i in range(55)]
    n_frames = total * 8 // 10
    per_seq = n_frames // 20
    paths: list[str] = []
    for i in range(20):
        fmt, _ = SEQ_DIRS[i % len(SEQ_DIRS)]
        sq, sh = shots[(i * 7) % len(shots)]
        at, a = assets[i % len(assets)]
        ctx = dict(sq=sq, sh=sh, at=at, a=a, n=NAMES[i % len(NAMES)], v=1 + i)
        paths.extend(fmt.format(f=f, **ctx) for f in range(1001, 1001 + per_seq))
    singles = total - len(paths)
    for i in range(singles):
        sq, sh = rnd.choice(shots)
        at, a = rnd.choice(assets)
        ctx = dict(sq=sq, sh=sh, at=at, a=a, n=rnd.choice(NAMES), v=rnd.randint(1, 1200), u=rnd.randint(1001, 1020))
        fmt = rnd.choice(JUNK) if i % 10 == 0 else rnd.choice(SINGLES)
        paths.append(fmt.format(**ctx))
    rnd.shuffle(paths)
    return paths


class Naive:
    """Every template variant as a ``parse`` format (string keys: one segment), tried in
    specificity order; the first match wins unless an equally specific one also matches."""

    def __init__(self, ts: TemplateSet) -> None:
        variants = sorted((v for t in ts.templates.values() for v in t.variants), key=lambda v: (v.rank, v.order))
        self.items = []
        for v in variants:
            types: dict[str, Any] = {}
            names: dict[str, str] = {}
            fmt = []
            for t in v.tokens:
                if isinstance(t, str):
                    fmt.append(t.replace("{", "{{").replace("}", "}}"))
                    continue
                fname = names.setdefault(t.field, f"f{len(names)}")
                tname = "T" + fname  # a repeated field must repeat its type too
                types.setdefault(tname, _parse_type(t))
                fmt.append("{%s:%s}" % (fname, tname))
            parser = parse.compile("".join(fmt), extra_types=types, case_sensitive=True)
            back = {f: field for field, f in names.items()}
            self.items.append((v, parser, back))

    def match(self, path: str) -> tuple[str, Any] | None:
        found = None
        for v, parser, back in self.items:
            if found is not None and v.rank != found[0].rank:
                break
            r = parser.parse(path)
            if r is None:
                continue
            if found is None:
                found = (v, {back[k]: val for k, val in r.named.items()})
            elif v.template != found[0].template:
                return ("<ambiguous>", tuple(sorted((found[0].template, v.template))))
        return (found[0].template, found[1]) if found else None


def _parse_type(key: Key) -> Any:
    if isinstance(key, SequenceKey):
        conv = lambda text: key.convert(text, check=False)  # noqa: E731
    elif isinstance(key, IntKey):
        conv = lambda text: int(text)  # noqa: E731
    else:
        conv = lambda text: text  # noqa: E731
    return parse.with_pattern(key.pattern())(conv)


def ours_result(m: Any) -> tuple[str, Any] | None:
    if m:
        return (m.template, m.fields)
    if m.ambiguous:
        return ("<ambiguous>", tuple(sorted(m.ambiguous)))
    return None


def _timed(match: Any, paths: list[str]) -> tuple[float, float]:
    """(wall s, CPU s) to match every path. CPU time is the honest figure on a shared machine:
    it does not count the time other processes held the core. Each result is dropped once made,
    as the pipeline does with all but the first frame of a sequence: keeping 100k results alive
    would mostly time the garbage collector walking them."""
    w0, c0 = time.perf_counter(), time.process_time()
    for p in paths:
        match(p)
    return time.perf_counter() - w0, time.process_time() - c0


def run_ours(paths: list[str]) -> tuple[float, float]:
    return _timed(load_templates(TEMPLATES).match, paths)  # fresh set: cold caches every run


def run_naive(paths: list[str]) -> tuple[float, float]:
    return _timed(Naive(load_templates(TEMPLATES)).match, paths)


def _rates(n: int, times: list[float]) -> str:
    rates = [n / t for t in times]
    return f"{statistics.median(rates):,.0f} ({min(rates):,.0f}-{max(rates):,.0f})"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--paths", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    paths = make_paths(args.paths, args.seed)
    ours_w, ours_c, naive_w, naive_c = [], [], [], []
    for _ in range(args.runs):  # interleaved, like the reference measurements
        w, c = run_ours(paths)
        ours_w.append(w)
        ours_c.append(c)
        w, c = run_naive(paths)
        naive_w.append(w)
        naive_c.append(c)
    # the agreement check, untimed, each from a fresh (cold) matcher
    match = load_templates(TEMPLATES).match
    ours = [match(p) for p in paths]
    naive_match = Naive(load_templates(TEMPLATES)).match
    naive = [naive_match(p) for p in paths]
    diffs = [(p, ours_result(o), n) for p, o, n in zip(paths, ours, naive) if ours_result(o) != n]
    matched = sum(1 for o in ours if o)
    frames = sum(1 for o in ours if o and o.frame is not None)
    n = len(paths)
    print(f"{n} paths ({frames} frames, {matched - frames} single files matched, {n - matched} not matched), "
          f"{len(load_templates(TEMPLATES).names)} templates, {args.runs} interleaved runs, one core\n")
    print("| matcher | paths/s, CPU time: median (min-max) | paths/s, wall clock: median (min-max) | "
          "ratio to naive (CPU, same run) |")
    print("|---|---|---|---|")
    ratios = [nc / oc for oc, nc in zip(ours_c, naive_c)]
    for label, wall, cpu in (("watcher.match (index + frame cache)", ours_w, ours_c),
                             ("naive parse loop", naive_w, naive_c)):
        print(f"| {label} | {_rates(n, cpu)} | {_rates(n, wall)} | "
              f"{'%.2fx' % statistics.median(ratios) if cpu is ours_c else '1'} |")
    print()
    if diffs:
        print(f"DISAGREE on {len(diffs)} path(s); first ones:")
        for p, o, nv in diffs[:10]:
            print(f"  {p}\n    ours:  {o}\n    naive: {nv}")
        return 1
    print(f"agree: template and fields identical for all {n} paths")
    return 0


if __name__ == "__main__":
    sys.exit(main())
