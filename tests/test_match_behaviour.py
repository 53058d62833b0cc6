"""Match/Miss objects, publishes rules and defaults, the frame cache, keys and frames."""
from __future__ import annotations

import dataclasses
import random
import textwrap
import threading
from pathlib import Path

import pytest

from watcher.match import Match, Miss, PublishRule, PublishSpec, load_templates
from watcher.match.keys import format_frame, frame_padding, placeholder_padding
from watcher.match.publish import default_name, publish_type_for

REPO = Path(__file__).resolve().parents[1]
STUDIO = REPO / "templates" / "studio.yml"


def write(tmp_path: Path, body: str) -> Path:
    f = tmp_path / "templates.yml"
    f.write_text(textwrap.dedent(body), encoding="utf-8")
    return f


# ---- Match / Miss ----------------------------------------------------------------------------

def test_match_is_a_frozen_dataclass_and_cached_matches_are_equal() -> None:
    ts = load_templates(STUDIO)
    p = "sequences/sq01/sh010/comp/publish/renders/beauty/v003/beauty.%04d.exr"
    first = ts.match(p % 1001)
    second = ts.match(p % 1002)  # served by the frame cache
    assert dataclasses.is_dataclass(Match) and isinstance(first, Match)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.frame = 3  # type: ignore[misc]
    rebuilt = Match(**{f.name: getattr(second, f.name) for f in dataclasses.fields(Match)})
    assert rebuilt == second and second.frame == 1002 and second.fields["SEQ"] == 1002
    assert first.fields["SEQ"] == 1001  # the cached entry did not leak the later frame
    assert second.publish == first.publish and isinstance(second.publish, PublishSpec)
    second.fields["SEQ"] = 0  # a caller mutating its fields does not touch the cache
    assert ts.match(p % 1003).fields["SEQ"] == 1003


def test_miss_is_falsy_and_explains_lazily() -> None:
    ts = load_templates(STUDIO)
    m = ts.match("sequences/sq01/sh010/comp/publish/nuke/sh010_main_v0x3.nk")
    assert isinstance(m, Miss) and not m and bool(m) is False
    assert m.closest == "nuke_shot_publish"
    assert "'0x3' is not a valid value for key version (int, format 03)" in m.reason
    assert m.ambiguous == ()
    assert str(m) == m.reason  # so a logger can format it lazily


def test_miss_reason_is_only_worked_out_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    ts = load_templates(STUDIO)
    calls = []
    real = ts._diagnose
    monkeypatch.setattr(ts, "_diagnose", lambda rel: calls.append(rel) or real(rel))
    m = ts.match("sequences/sq01/sh010/comp/publish/nuke/.DS_Store")
    assert not m and calls == []
    assert "DS_Store" in m.reason and "DS_Store" in m.reason and len(calls) == 1


def test_absolute_and_empty_paths_are_misses() -> None:
    ts = load_templates(STUDIO)
    assert "relative" in ts.match("/sequences/sq01/sh010/comp/publish/nuke/sh010_main_v003.nk").reason
    assert not ts.match("")


def test_percent_in_a_path_is_escaped_in_the_pattern() -> None:
    ts = load_templates(STUDIO)
    p = "sequences/sq01/sh 100%/comp/publish/renders/beauty/v003/beauty.1001.exr"
    m = ts.match(p)
    assert m and m.pattern == "sequences/sq01/sh 100%%/comp/publish/renders/beauty/v003/beauty.%04d.exr"
    assert m.pattern % 1001 == p


# ---- publishes rules and defaults ------------------------------------------------------------

KEYS = """
keys:
  Episode: {type: str}
  Sequence: {type: str}
  Shot: {type: str}
  shot: {type: str}
  Asset: {type: str}
  Step: {type: str}
  task_name: {type: str}
  Project: {type: str}
  name: {type: str, filter_by: alphanumeric}
  version: {type: int, format_spec: "03"}
  SEQ: {type: sequence, format_spec: "04"}
  aov: {type: str, filter_by: alphanumeric}
"""


def test_defaults_without_publishes_section(tmp_path: Path) -> None:
    ts = load_templates(write(tmp_path, KEYS + """
paths:
  shot_frames_pub: 'shots/{Shot}/{Step}/{Shot}_{Step}_v{version}.{SEQ}.exr'
  shot_task_pub: 'shots/{Shot}/{Step}/{task_name}/{name}.v{version}.nk'
  lower_publish: 'lower/{shot}/{name}.abc'
  seq_level: 'seq/{Sequence}/publish/{name}_v{version}.mov'
  episode_pub: 'ep/{Episode}/{Sequence}/notes.txt'
  asset_pub: 'assets/{Asset}/{Project}/{name}.v{version}.bgeo.sc'
  project_level_pub: 'editorial/cut_v{version}.xml'
  shot_work: 'work/{Shot}/{Step}/{name}.v{version}.nk'
  folder: 'shots/{Shot}/{Step}'
"""))
    spec = ts.match("shots/sh010/comp/sh010_comp_v003.1001.exr").publish
    assert spec == PublishSpec("Shot", "sh010", "comp", "sh010_comp.exr", 3, "Rendered Image", None)
    spec = ts.match("shots/sh010/comp/roto/main.v002.nk").publish
    assert (spec.task, spec.name, spec.publish_type) == ("roto", "main", "Nuke Script")  # task_name beats Step
    assert ts.match("lower/sh020/cam.abc").publish == PublishSpec("Shot", "sh020", None, "cam", None, "Alembic Cache")
    assert ts.match("seq/sq01/publish/edit_v004.mov").publish.entity_type == "Sequence"  # a publish folder
    assert ts.match("ep/ep01/sq01/notes.txt").publish.entity_type == "Sequence"  # Sequence comes before Episode
    spec = ts.match("assets/hero/proj/fx.v001.bgeo.sc").publish
    assert (spec.entity_type, spec.project, spec.publish_type) == ("Asset", "proj", "Houdini Cache")
    spec = ts.match("editorial/cut_v012.xml").publish
    assert (spec.entity_type, spec.entity_name, spec.name, spec.version, spec.publish_type) == \
        (None, None, "cut.xml", 12, "XML File")
    assert ts.match("shots/sh010/comp").publish is None  # folder-like templates never publish by default
    # neither *_pub* nor a publish folder: a work file matches but never publishes, and explain says why
    assert ts.match("work/sh010/comp/main.v002.nk").publish is None
    assert "not a publish template" in ts.explain("work/sh010/comp/main.v002.nk")["note"]


def test_rules_literals_formats_patterns_and_false(tmp_path: Path) -> None:
    ts = load_templates(write(tmp_path, KEYS + """
paths:
  render_pub: 'pub/{Shot}/{name}/v{version}/{name}[_{aov}].{SEQ}.exr'
  render_work: 'work/{Shot}/{name}/v{version}/{name}.{SEQ}.exr'
  script_pub: 'pub/{Shot}/{Step}/{name}.v{version}.nk'
  script_work: 'work/{Shot}/{Step}/{name}.v{version}.nk'
  unnamed: 'misc/{Shot}/{name}.txt'
publishes:
  "*_work": false
  "render_*": {entity: {type: Shot, key: Shot}, task: "=lighting", name: "{Shot}_{name}[_{aov}]", type: Render,
               project: "=demo"}
  "*_pub": {entity: Shot, task: Step}
  script_pub: {entity: {type: Shot, key: "=sh999"}, name: "=script", version: version}
"""))
    p = ts.match("pub/sh010/beauty/v003/beauty_spec.1001.exr").publish
    assert p == PublishSpec("Shot", "sh010", "lighting", "sh010_beauty_spec", 3, "Render", "demo")
    assert ts.match("pub/sh010/beauty/v003/beauty.1001.exr").publish.name == "sh010_beauty"
    p = ts.match("pub/sh010/comp/main.v002.nk").publish  # exact name beats the patterns
    assert p == PublishSpec("Shot", "sh999", "comp", "script", 2, "Nuke Script", None)  # task: the default
    for work in ("work/sh010/beauty/v003/beauty.1001.exr", "work/sh010/comp/main.v002.nk"):
        m = ts.match(work)
        assert m and m.publish is None  # first matching pattern wins: *_work is false
        assert "is false" in ts.explain(work)["note"]
    m = ts.match("misc/sh010/readme.txt")
    assert m and m.publish is None
    assert ts.explain("misc/sh010/readme.txt")["note"] == "matches unnamed, which has no publishes rule"
    assert ts.publish_rule("render_pub") == PublishRule("render_*", True, "Shot", "Shot", "=lighting",
                                                        "{Shot}_{name}[_{aov}]", "Render", None, "=demo")


def test_default_name_and_types() -> None:
    assert default_name("sh010_comp_v003.%04d.exr", (16, 20)) == "sh010_comp.exr"
    assert default_name("sh010_comp_v003.1001.exr", (16, 20)) == "sh010_comp.exr"
    assert default_name("scene.v001.ma", None) == "scene.ma"
    assert default_name("smoke_v002.0100.bgeo.sc", (11, 15)) == "smoke.bgeo.sc"
    assert default_name("plate.1001.dpx", (6, 10)) == "plate.dpx"
    assert default_name("notes.txt", None) == "notes.txt"
    expected = {"a.exr": "Rendered Image", "a.dpx": "Rendered Image", "a.jpg": "Rendered Image",
                "a.png": "Rendered Image", "a.tif": "Rendered Image", "a.nk": "Nuke Script", "a.ma": "Maya Scene",
                "a.mb": "Maya Scene", "a.hip": "Houdini Scene", "a.hipnc": "Houdini Scene", "a.abc": "Alembic Cache",
                "a.mov": "Movie", "a.mp4": "Movie", "a.psd": "Photoshop Image", "a.1001.bgeo.sc": "Houdini Cache",
                "a.vdb": "VDB Cache", "a.usd": "USD File", "a.EXR": "Rendered Image", "README": "File"}
    assert {f: publish_type_for(f) for f in expected} == expected


# ---- the frame cache never changes an answer ---------------------------------------------------

def test_frame_cache_agrees_with_the_exact_matcher() -> None:
    ts = load_templates(STUDIO)
    frames = list(range(-12, 12)) + list(range(990, 1010)) + list(range(9995, 10005)) + [123456]
    rnd = random.Random(3)
    pads = ["%04d", "%d", "%05d"]
    paths = []
    for f in frames:
        for pad in pads:
            paths.append(("sequences/sq01/sh010/comp/publish/renders/beauty/v003/beauty." + pad + ".exr") % f)
            paths.append(("assets/char/hero/surf/publish/textures/diffuse/v004/hero_diffuse_v004." + pad + ".tif") % f)
            paths.append(("sequences/sq01/sh010/plates/bg01/v001/sh010_bg01_v001." + pad + ".dpx") % f)
    rnd.shuffle(paths)
    for p in paths + paths:  # the second pass is served from the cache
        fast = ts.match(p)
        slow = ts._slow(p, ts._groups[p.rsplit(".", 1)[1]])
        assert bool(fast) == bool(slow), p
        if fast:
            assert fast == slow, p
            assert fast.pattern % fast.frame == p
    assert ts._fcache  # and it was used


def test_frame_cache_stays_away_when_digit_values_decide(tmp_path: Path) -> None:
    """Same width, same leading digit, different answer: such groups are never cached."""
    ts = load_templates(write(tmp_path, """
keys:
  name: {type: str, filter_by: alphanumeric}
  SEQ: {type: sequence, format_spec: "04"}
  tile: {type: int, choices: [1001, 1002]}
paths:
  frames: 'r/{name}.{SEQ}.exr'
  tiles: 'r/{name}.{tile}.exr'
  one_prefixed: 'p/{name}.1{SEQ}.exr'
  plain: 'p/{name}.{SEQ}.exr'
"""))
    assert ts.match("r/a.1003.exr").template == "frames"
    assert ts.match("r/a.1004.exr").template == "frames"
    assert ts.match("r/a.1001.exr").ambiguous == ("frames", "tiles")
    assert ts.match("p/a.20001.exr").template == "plain"
    m = ts.match("p/a.10001.exr")
    assert m.template == "one_prefixed" and m.frame == 1  # literal text wins
    assert not ts._fcache


def test_threads_share_a_template_set() -> None:
    ts = load_templates(STUDIO)
    paths = [f"sequences/sq01/sh{s:03d}/comp/publish/renders/beauty/v003/beauty.{f:04d}.exr"
             for s in range(10, 15) for f in range(1001, 1201)]
    fresh = load_templates(STUDIO)
    expected = [fresh.match(p) for p in paths]
    errors: list[str] = []

    def worker(offset: int) -> None:
        for i in range(len(paths)):
            j = (i + offset) % len(paths)
            if ts.match(paths[j]) != expected[j]:
                errors.append(paths[j])

    threads = [threading.Thread(target=worker, args=(k * 97,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


# ---- frames ----------------------------------------------------------------------------------

@pytest.mark.parametrize("width", [0, 4, 5, 8])
def test_frame_padding_writes_the_text_back(width: int) -> None:
    for frame in list(range(-1200, 1200, 7)) + [99999, 100000, -100000]:
        for text in {str(frame), f"{frame:0{width}d}" if width else str(frame), f"{frame:05d}", f"{frame:08d}"}:
            p = frame_padding(text, width)
            assert format_frame(int(text), p) == text, (text, width, p)


def test_placeholder_widths() -> None:
    assert [placeholder_padding(t) for t in ("%04d", "####", "@@@@", "$F4", "<UDIM>", "%d", "#", "$F")] == \
        [4, 4, 4, 4, 4, 0, 0, 0]


def test_review_rule_option(tmp_path):
    from watcher.errors import TemplateError
    from watcher.match import load_templates

    f = tmp_path / "t.yml"
    f.write_text("keys:\n  Shot: {type: str}\n  version: {type: int, format_spec: '03'}\n"
                 "paths:\n  mov: '{Shot}/{Shot}_v{version}.mov'\n  nk: '{Shot}/{Shot}_v{version}.nk'\n"
                 "publishes:\n  mov: {type: Movie, review: true}\n  nk: {type: Nuke Script}\n")
    ts = load_templates(f)
    assert ts.match("sh010/sh010_v001.mov").publish.review is True
    assert ts.match("sh010/sh010_v001.nk").publish.review is False
    f.write_text(f.read_text().replace("review: true", "review: yes please"))
    with pytest.raises(TemplateError, match="review must be true or false"):
        load_templates(f)


def test_name_style_publish2_names_like_tk_multi_publish2(tmp_path: Path) -> None:
    """``toolkit`` (the default) names a publish by its ``name`` field, as register_publish's
    documentation does; ``publish2`` by the file name without version and frame, extension kept,
    as tk-multi-publish2 does, so watcher's versions join the artists' own group in the Loader."""
    ts = load_templates(write(tmp_path, KEYS + """
paths:
  maya_pub: 'pub/{Shot}/{name}.v{version}.ma'
  maya_pub2: 'pub2/{Shot}/{name}.v{version}.ma'
  render_pub2: 'pub2/{Shot}/renders/{name}_v{version}.{SEQ}.exr'
  named_pub2: 'pub3/{Shot}/{name}.v{version}.nk'
publishes:
  maya_pub: {}
  "*_pub2": {name_style: publish2}
  named_pub2: {name_style: publish2, name: "{Shot}_{name}"}
"""))
    assert ts.match("pub/sh010/scene.v001.ma").publish.name == "scene"
    assert ts.match("pub2/sh010/scene.v001.ma").publish.name == "scene.ma"
    assert ts.match("pub2/sh010/renders/beauty_v003.1001.exr").publish.name == "beauty.exr"
    assert ts.match("pub3/sh010/comp.v002.nk").publish.name == "sh010_comp"  # an explicit name wins
    from watcher.errors import TemplateError

    with pytest.raises(TemplateError, match="name_style must be one of toolkit, publish2, got 'tk'"):
        load_templates(write(tmp_path, KEYS + "paths:\n  a_pub: 'a/{name}.v{version}.nk'\n"
                                              "publishes:\n  a_pub: {name_style: tk}\n"))
