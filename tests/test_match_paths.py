"""A table of real-world paths: each is created as a real file, found again by walking the tree,
and matched. Expected: template and typed fields, or a miss (with words of the reason), or an
ambiguity naming both templates."""
from __future__ import annotations

import datetime as dt
import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from watcher.match import Match, Miss, TemplateSet, load_templates
from watcher.match.matcher import _ext_of

REPO = Path(__file__).resolve().parents[1]
FILES = {
    "studio": REPO / "templates" / "studio.yml",
    "tk": REPO / "templates" / "toolkit-default2.yml",
    "vendor": REPO / "templates" / "vendor-flat.yml",
    "amb": REPO / "tests" / "data" / "match" / "ambiguous.yml",
    "keys": REPO / "tests" / "data" / "match" / "keys.yml",
}


@lru_cache(maxsize=None)
def ts(name: str) -> TemplateSet:
    return load_templates(FILES[name])


class Hit(NamedTuple):
    template: str
    fields: dict[str, Any]
    frame: int | None = None
    padding: int = 0
    placeholder: bool = False


class No(NamedTuple):
    words: tuple[str, ...] = ()  # must all appear in the reason


class Amb(NamedTuple):
    a: str
    b: str


SH = {"Sequence": "sq01", "Shot": "sh010", "Step": "comp"}
SHOT = "sequences/sq01/sh010/comp"
ASSET = "assets/char/hero/surf"
AS = {"AssetType": "char", "Asset": "hero", "Step": "surf"}
TK = {"Sequence": "sq01", "Shot": "sh010", "Step": "comp"}
TKA = {"sg_asset_type": "char", "Asset": "hero", "Step": "model"}

CASES: list[tuple[str, str, Any]] = [
    # ---- studio: renders with frames --------------------------------------------------------
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.1001.exr",
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": 1001, "extension": "exr"}, 1001, 4)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty_diffuse.1001.exr",  # optional [_{aov}]
     Hit("shot_render", {**SH, "name": "beauty", "aov": "diffuse", "version": 3, "SEQ": 1001, "extension": "exr"},
         1001, 4)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.0000.exr",
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": 0, "extension": "exr"}, 0, 4)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.10001.exr",  # 5 digits, still the 4-padded sequence
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": 10001, "extension": "exr"}, 10001, 4)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.5.exr",  # unpadded
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": 5, "extension": "exr"}, 5, 0)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.-5.dpx",  # negative, unpadded
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": -5, "extension": "dpx"}, -5, 0)),
    ("studio", "sequences/sq01/sh010/plates/bg01/v001/sh010_bg01_v001.-0010.dpx",  # negative, padded
     Hit("shot_plate", {"Sequence": "sq01", "Shot": "sh010", "plate": "bg01", "version": 1, "SEQ": -10,
                        "extension": "dpx"}, -10, 5)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.%04d.exr",
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": "%04d", "extension": "exr"}, None, 4, True)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.####.exr",
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": "####", "extension": "exr"}, None, 4, True)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.$F4.exr",
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": "$F4", "extension": "exr"}, None, 4, True)),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.@@@@.png",
     Hit("shot_render", {**SH, "name": "beauty", "version": 3, "SEQ": "@@@@", "extension": "png"}, None, 4, True)),
    ("studio", f"{SHOT}/work/renders/beauty/v007/beauty.1001.exr",
     Hit("shot_render_work", {**SH, "name": "beauty", "version": 7, "SEQ": 1001, "extension": "exr"}, 1001, 4)),
    ("studio", f"{SHOT}/publish/elements/fg/v002/2048x1152/sh010_fg_v002.1001.exr",
     Hit("shot_precomp", {**SH, "name": "fg", "version": 2, "width": 2048, "height": 1152, "SEQ": 1001,
                          "extension": "exr"}, 1001, 4)),
    ("studio", "sequences/sq01/sh010/fx/publish/caches/smoke/v002/sh010_smoke_v002.1001.bgeo.sc",
     Hit("shot_cache_frames", {**SH, "Step": "fx", "name": "smoke", "version": 2, "SEQ": 1001,
                               "extension": "bgeo.sc"}, 1001, 4)),
    ("studio", "sequences/sq01/sh010/fx/publish/caches/smoke/v002/sh010_smoke_v002.1001.vdb",
     Hit("shot_cache_frames", {**SH, "Step": "fx", "name": "smoke", "version": 2, "SEQ": 1001, "extension": "vdb"},
         1001, 4)),
    ("studio", "sequences/sq01/sh010/anim/publish/caches/char/v004/sh010_char_v004.abc",
     Hit("shot_cache_abc", {**SH, "Step": "anim", "name": "char", "version": 4})),
    ("studio", "sequences/sq01/sh010/anim/review/playblast/main/v004/sh010_main_v004.0101.jpg",
     Hit("shot_playblast", {**SH, "Step": "anim", "name": "main", "version": 4, "SEQ": 101}, 101, 4)),
    ("studio", f"{SHOT}/review/sh010_main_v003.mov",
     Hit("shot_review", {**SH, "name": "main", "version": 3, "extension": "mov"})),
    ("studio", f"{SHOT}/review/sh010_main_v003.mp4",
     Hit("shot_review", {**SH, "name": "main", "version": 3, "extension": "mp4"})),
    # ---- studio: scenes, versions ---------------------------------------------------------
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v001.nk", Hit("nuke_shot_publish", {**SH, "name": "main", "version": 1})),
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v999.nk", Hit("nuke_shot_publish", {**SH, "name": "main", "version": 999})),
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v1000.nk",
     Hit("nuke_shot_publish", {**SH, "name": "main", "version": 1000})),
    ("studio", f"{SHOT}/work/nuke/sh010_main_v012.nk", Hit("nuke_shot_work", {**SH, "name": "main", "version": 12})),
    ("studio", "sequences/sq01/sh010/anim/publish/maya/sh010_layout_v002.mb",
     Hit("maya_shot_publish", {**SH, "Step": "anim", "name": "layout", "version": 2, "extension": "mb"})),
    ("studio", "sequences/sq01/sh010/anim/work/maya/sh010_layout_v002.ma",
     Hit("maya_shot_work", {**SH, "Step": "anim", "name": "layout", "version": 2, "extension": "ma"})),
    ("studio", "sequences/sq01/sh010/fx/publish/houdini/sh010_pyro_v010.hipnc",
     Hit("houdini_shot_publish", {**SH, "Step": "fx", "name": "pyro", "version": 10, "extension": "hipnc"})),
    # ---- studio: unicode, spaces ----------------------------------------------------------
    ("studio", "sequences/第一場/鏡頭010/comp/publish/nuke/鏡頭010_合成_v003.nk",
     Hit("nuke_shot_publish", {"Sequence": "第一場", "Shot": "鏡頭010", "Step": "comp", "name": "合成", "version": 3})),
    ("studio", "sequences/sq01/sh010/comp/publish/nuke/sh010_héros_v003.nk",
     Hit("nuke_shot_publish", {**SH, "name": "héros", "version": 3})),
    ("studio", "sequences/sq01/sh 010/comp/publish/nuke/sh 010_main_v003.nk",  # Shot is a free str: spaces ok
     Hit("nuke_shot_publish", {**SH, "Shot": "sh 010", "name": "main", "version": 3})),
    ("studio", f"{SHOT}/publish/nuke/sh010_my main_v003.nk", No(("name", "my main"))),  # name: letters/digits only
    # ---- studio: assets, UDIM -------------------------------------------------------------
    ("studio", f"{ASSET}/publish/textures/diffuse/v004/hero_diffuse_v004.1001.tif",
     Hit("asset_texture", {**AS, "name": "diffuse", "version": 4, "UDIM": 1001, "extension": "tif"}, 1001, 4)),
    ("studio", f"{ASSET}/publish/textures/diffuse/v004/hero_diffuse_v004.1012.tx",
     Hit("asset_texture", {**AS, "name": "diffuse", "version": 4, "UDIM": 1012, "extension": "tx"}, 1012, 4)),
    ("studio", f"{ASSET}/publish/textures/diffuse/v004/hero_diffuse_v004.<UDIM>.exr",
     Hit("asset_texture", {**AS, "name": "diffuse", "version": 4, "UDIM": "<UDIM>", "extension": "exr"}, None, 4,
         True)),
    ("studio", f"{ASSET}/publish/textures/diffuse/v004/hero_diffuse_v004.0999.tif", No(("UDIM",))),
    ("studio", "assets/char/hero/model/publish/maya/hero_body_v012.mb",
     Hit("maya_asset_publish", {**AS, "Step": "model", "name": "body", "version": 12, "extension": "mb"})),
    ("studio", "assets/prop/lamp/lookdev/review/turntable/v002/lamp_tt_v002.0001.png",
     Hit("asset_turntable", {"AssetType": "prop", "Asset": "lamp", "Step": "lookdev", "name": "tt", "version": 2,
                             "SEQ": 1, "extension": "png"}, 1, 4)),
    ("studio", "assets/creature/hero/model/publish/maya/hero_body_v012.mb", No(("AssetType", "creature"))),
    # ---- studio: near misses --------------------------------------------------------------
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v003.nk~", No(("nuke_shot_publish", "~"))),
    ("studio", f"{SHOT}/publish/nuke/.DS_Store", No(("DS_Store",))),
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v01a.nk", No(("version", "01a"))),
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v0100.nk", No(("version", "0100", "format 03"))),
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v03.nk", No(("version", "03"))),
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v003.nk.bak", No(("bak",))),
    ("studio", f"{SHOT}/publish/nuke/sh010_main_v003.txt", No(("txt",))),
    ("studio", f"{SHOT}/publish/nuke/old/sh010_main_v003.nk", No(("levels",))),  # extra directory level
    ("studio", f"{SHOT}/publish/nuke/sh020_main_v003.nk", No(("Shot", "sh010", "sh020"))),  # repeated key differs
    ("studio", f"{SHOT}/publish/elements/fg/v002/2048x1152/sh010_fg_v003.1001.exr", No(("version",))),
    ("studio", f"{SHOT}/publish/renders/beauty/v003/beauty.1001.EXR", No(("EXR",))),  # case-sensitive
    ("studio", "Sequences/sq01/sh010/comp/publish/nuke/sh010_main_v003.nk", No(("sequences",))),
    ("studio", f"{SHOT}/review/sh010_main_v003.avi", No(("avi",))),
    # a *file* named like a folder template: it matches shot_root, which never publishes by itself
    ("studio", "sequences/sq09/sh090/comp", Hit("shot_root", {"Sequence": "sq09", "Shot": "sh090", "Step": "comp"})),
    # ---- toolkit-default2 style -----------------------------------------------------------
    ("tk", "sequences/sq01/sh010/comp/publish/nuke/scene.v003.nk",
     Hit("nuke_shot_pub", {**TK, "name": "scene", "version": 3})),
    ("tk", "sequences/sq01/sh010/comp/publish/elements/comp/v003/2048x1152/sh010_comp_main_left_v003.1001.exr",
     Hit("nuke_shot_render_pub_stereo", {**TK, "name": "comp", "version": 3, "width": 2048, "height": 1152,
                                         "output": "main", "eye": "left", "SEQ": 1001}, 1001, 4)),
    ("tk", "sequences/sq01/sh010/comp/publish/elements/comp/v003/2048x1152/sh010_comp_main_v003.1001.exr",
     Hit("nuke_shot_render_pub_mono_exr", {**TK, "name": "comp", "version": 3, "width": 2048, "height": 1152,
                                           "output": "main", "SEQ": 1001}, 1001, 4)),
    ("tk", "sequences/sq01/sh010/comp/publish/elements/comp/v003/2048x1152/sh010_comp_main_center_v003.1001.exr",
     No(("eye",))),
    ("tk", "sequences/sq01/sh010/light/work/images/beauty/mantra1/v002/1920x1080/sh010_beauty_v002.1001.exr",
     Hit("houdini_shot_render", {**TK, "Step": "light", "name": "beauty", "node": "mantra1", "version": 2,
                                 "width": 1920, "height": 1080, "SEQ": 1001}, 1001, 4)),
    ("tk", "sequences/sq01/sh010/light/work/images/beauty/mantra1/spec/v002/1920x1080/sh010_beauty_v002.1001.exr",
     Hit("houdini_shot_extra_plane", {**TK, "Step": "light", "name": "beauty", "node": "mantra1", "aov_name": "spec",
                                      "version": 2, "width": 1920, "height": 1080, "SEQ": 1001}, 1001, 4)),
    ("tk", "assets/char/hero/surf/publish/mari/hero_diffuse_base.v003.1001.tif",
     Hit("asset_mari_texture_tif", {**TKA, "Step": "surf", "name": "hero", "channel": "diffuse", "layer": "base",
                                    "version": 3, "UDIM": 1001}, 1001, 4)),
    ("tk", "assets/char/hero/surf/publish/mari/hero_diffuse.v003.1001.tif",  # the optional layer left out
     Hit("asset_mari_texture_tif", {**TKA, "Step": "surf", "name": "hero", "channel": "diffuse", "version": 3,
                                    "UDIM": 1001}, 1001, 4)),
    ("tk", "assets/char/hero/model/publish/archive/hero.v0012.zip",  # version_four, aliased to "version"
     Hit("asset_archive", {**TKA, "name": "hero", "version": 12})),
    ("tk", "assets/char/hero/model/publish/maya/hero.v012.mb",
     Hit("maya_asset_publish", {**TKA, "name": "hero", "version": 12, "extension": "mb"})),
    ("tk", "sequences/sq01/sh010/editorial/2024_03_05/plates/sh010_A001C003.mov",
     Hit("hiero_plate_path", {"Sequence": "sq01", "Shot": "sh010", "YYYY": 2024, "MM": 3, "DD": 5,
                              "segment_name": "A001C003"})),
    ("tk", "sequences/sq01/sh010/comp/work/nuke/snapshots/scene.v003.2024-01-01-10-00-00.nk",
     Hit("nuke_shot_snapshot", {**TK, "name": "scene", "version": 3, "timestamp": "2024-01-01-10-00-00"})),
    ("tk", "editorial/publish/cut_v002.mov", Hit("editorial_cut", {"name": "cut", "version": 2})),
    ("tk", "sequences/sq01/sh010/comp/review/sh010_comp_main_v003.mov",
     Hit("nuke_shot_render_movie", {**TK, "name": "comp", "output": "main", "version": 3})),
    # ---- vendor-flat ----------------------------------------------------------------------
    ("vendor", "ABC0010_comp_main_v003.1001.exr",
     Hit("vendor_frames", {"Shot": "ABC0010", "Step": "comp", "name": "main", "version": 3, "SEQ": 1001,
                           "extension": "exr"}, 1001, 4)),
    ("vendor", "20240305_vendorX/ABC0010_roto_fg_clean_v012.0990.dpx",
     Hit("vendor_frames", {"package": "20240305_vendorX", "Shot": "ABC0010", "Step": "roto", "name": "fg_clean",
                           "version": 12, "SEQ": 990, "extension": "dpx"}, 990, 4)),
    ("vendor", "ABC0010_comp_main_v003.mov",
     Hit("vendor_movie", {"Shot": "ABC0010", "Step": "comp", "name": "main", "version": 3, "extension": "mov"})),
    ("vendor", "ABC0010_comp_main_v003.nk", Hit("vendor_script", {"Shot": "ABC0010", "Step": "comp", "name": "main",
                                                                 "version": 3})),
    ("vendor", "pkg/sub/ABC0010_comp_main_v003.nk", No(("levels",))),
    ("vendor", "ABC0010_comp_main.1001.exr", No(("vendor_frames",))),
    # ---- ambiguity and specificity --------------------------------------------------------
    ("amb", "renders/beauty.1001.exr", Amb("render_frames", "render_versions")),
    ("amb", "renders/beauty.-5.exr", Hit("render_frames", {"name": "beauty", "SEQ": -5}, -5, 0)),
    ("amb", "renders/beauty.12.exr", Hit("render_frames", {"name": "beauty", "SEQ": 12}, 12, 0)),
    ("amb", "renders/hero.1001.exr", Hit("render_hero", {"SEQ": 1001}, 1001, 4)),
    ("amb", "renders/beauty.%04d.exr", Hit("render_frames", {"name": "beauty", "SEQ": "%04d"}, None, 4, True)),
    ("amb", "takes/intro_t3.mov", Amb("take_a", "take_b")),
    # ---- key features ---------------------------------------------------------------------
    ("keys", "shots/ab123/comp/ab123_ABCD.txt",
     Hit("custom_filter", {"Shot": "ab123", "Step": "comp", "code": "ABCD"})),
    ("keys", "shots/ab1234/comp/ab1234_ABCD.txt", No(("filter_by",))),
    ("keys", "shots/ab123/tmp/ab123_ABCD.txt", No(("excluded",))),
    ("keys", "shots/ab123/TMP/ab123_ABCD.txt", No(("excluded",))),
    ("keys", "shots/ab123/comp/ab123_ABC.txt", No(("4 characters",))),
    ("keys", "daily/20240229/plate_t7_r2.00001.png",
     Hit("dated", {"stamp": dt.datetime(2024, 2, 29), "letters": "plate", "take": 7, "rev": 2, "frame": 1}, 1, 5)),
    ("keys", "daily/20240301/plate_t007_r2.00001.png",  # strict_matching: false takes any width
     Hit("dated", {"stamp": dt.datetime(2024, 3, 1), "letters": "plate", "take": 7, "rev": 2, "frame": 1}, 1, 5)),
    ("keys", "daily/20240230/plate_t7_r2.00001.png", No(("20240230",))),
    ("keys", "daily/20240301/plate_t7_r4.00001.png", No(("rev",))),
    ("keys", "daily/20240301/pl4te_t7_r2.00001.png", No(("letters",))),
    ("keys", "flame/clip.00001001.dpx", Hit("flame", {"letters": "clip", "fframe": 1001}, 1001, 8)),
    ("keys", "deep/a/a/x.txt", Hit("nested_dirs", {"dir": "a", "letters": "x"})),
    ("keys", "deep/a/b/x.txt", No(("dir",))),
    ("keys", "tags/abc_x.txt", Hit("tagged", {"tag": "abc", "letters": "x"})),
    ("keys", "tags/123_x.txt", Hit("tagged", {"tag": "123", "letters": "x"})),
    ("keys", "tags/a_b_x.txt", No(("tagged",))),  # the regex proposes tag='a_b'; the filter refuses it
    ("keys", "tags/ab1_x.txt", No(("filter_by",))),
]


@pytest.fixture(scope="module")
def walked(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, str]]:
    """Every table path as a real file; relpaths come back from walking the trees."""
    found: dict[str, dict[str, str]] = {}
    for name in FILES:
        root = tmp_path_factory.mktemp(name)
        for set_name, rel, _ in CASES:
            if set_name == name:
                p = root / rel
                p.parent.mkdir(parents=True, exist_ok=True)
                p.write_bytes(b"x")
        seen = {}
        for dirpath, _, files in os.walk(root):
            for f in files:
                rel = os.path.relpath(os.path.join(dirpath, f), root).replace(os.sep, "/")
                seen[rel] = rel
        found[name] = seen
    return found


def test_table_is_big_enough() -> None:
    assert len(CASES) >= 60
    assert len({(s, p) for s, p, _ in CASES}) == len(CASES)


@pytest.mark.parametrize("set_name,relpath,expected", CASES, ids=[f"{s}:{p}" for s, p, _ in CASES])
def test_path(walked: dict[str, dict[str, str]], set_name: str, relpath: str, expected: Any) -> None:
    rel = walked[set_name][relpath]  # found on disk, not just the literal
    m = ts(set_name).match(rel)
    if isinstance(expected, Hit):
        assert m, f"{rel}: {m.reason}"
        assert isinstance(m, Match)
        assert (m.template, m.fields) == (expected.template, expected.fields)
        assert (m.frame, m.padding, m.placeholder) == (expected.frame, expected.padding, expected.placeholder)
        assert m.relpath == rel
        if m.frame_key is None:
            assert m.frame_span is None and m.pattern == rel
        else:
            s, e = m.frame_span
            assert m.pattern == rel[:s].replace("%", "%%") + (f"%0{m.padding}d" if m.padding else "%d") \
                + rel[e:].replace("%", "%%")
            if m.frame is not None:
                assert int(rel[s:e]) == m.frame
                assert m.pattern % m.frame == rel  # printf writes the file name back exactly
    elif isinstance(expected, Amb):
        assert not m and isinstance(m, Miss)
        assert set(m.ambiguous) == {expected.a, expected.b}
        assert expected.a in m.reason and expected.b in m.reason and "ambiguous" in m.reason
    else:
        assert not m and isinstance(m, Miss), f"{rel} matched {m}"
        assert bool(m) is False
        for w in expected.words:
            assert w in m.reason, f"{w!r} not in {m.reason!r}"


@pytest.mark.parametrize("set_name,relpath,expected", CASES, ids=[f"{s}:{p}" for s, p, _ in CASES])
def test_exact_matcher_agrees(set_name: str, relpath: str, expected: Any) -> None:
    """The regex index and the exact slow matcher decide the same for every table path."""
    t = ts(set_name)
    fast = t.match(relpath)
    slow = t._slow(relpath, t._groups.get(_ext_of(relpath), t._wild)) if (t._groups.get(_ext_of(relpath)) or t._wild) \
        else t._miss(relpath)
    assert bool(fast) == bool(slow)
    if fast:
        assert fast == slow
    else:
        assert set(fast.ambiguous) == set(slow.ambiguous)


@pytest.mark.parametrize("set_name,relpath,expected", CASES, ids=[f"{s}:{p}" for s, p, _ in CASES])
def test_explain_is_json(set_name: str, relpath: str, expected: Any) -> None:
    d = ts(set_name).explain(relpath)
    json.dumps(d)  # JSON-able as is
    assert d["matched"] is isinstance(expected, Hit)
    if isinstance(expected, Hit):
        assert d["template"] == expected.template and d["frame"] == expected.frame
    else:
        assert d["reason"] and isinstance(d["ambiguous"], list)
