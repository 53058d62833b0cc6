"""Toolkit compatibility: the public default2 templates.yml (shared fixture, read in place and
unchanged) loads, reports what it cannot use once, and its publish templates match real paths."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from watcher.match import load_templates

FIXTURE = Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "toolkit" / "tk-config-default2.templates.yml"

SH = {"Sequence": "sq01", "Shot": "sh010", "Step": "comp"}

EXAMPLES: list[tuple[str, str, dict[str, Any], dict[str, Any]]] = [
    # template, path, fields, publish (subset; None: matches, does not publish by default)
    ("nuke_shot_publish", "sequences/sq01/sh010/comp/publish/nuke/scene.v003.nk",
     {**SH, "name": "scene", "version": 3},
     {"entity_type": "Shot", "entity_name": "sh010", "task": "comp", "name": "scene", "version": 3,
      "publish_type": "Nuke Script"}),
    ("maya_asset_publish", "assets/char/hero/model/publish/maya/hero.v012.mb",
     {"sg_asset_type": "char", "Asset": "hero", "Step": "model", "name": "hero", "version": 12, "extension": "mb"},
     {"entity_type": "Asset", "entity_name": "hero", "task": "model", "version": 12, "publish_type": "Maya Scene"}),
    ("nuke_shot_render_pub_mono_dpx",
     "sequences/sq01/sh010/comp/publish/elements/comp/v003/2048x1152/sh010_comp_main_v003.1001.dpx",
     {**SH, "name": "comp", "version": 3, "width": 2048, "height": 1152, "output": "main", "SEQ": 1001},
     {"entity_name": "sh010", "version": 3, "publish_type": "Rendered Image"}),
    ("nuke_shot_render_pub_stereo",
     "sequences/sq01/sh010/comp/publish/elements/comp/v003/2048x1152/sh010_comp_main_left_v003.1001.exr",
     {**SH, "name": "comp", "version": 3, "width": 2048, "height": 1152, "output": "main", "eye": "left",
      "SEQ": 1001},
     {"entity_name": "sh010", "publish_type": "Rendered Image"}),
    ("houdini_shot_publish", "sequences/sq01/sh010/fx/publish/houdini/pyro.v010.hip",
     {**SH, "Step": "fx", "name": "pyro", "version": 10}, {"task": "fx", "publish_type": "Houdini Scene"}),
    ("asset_alembic_cache", "assets/char/hero/rig/publish/caches/hero.v004.abc",
     {"sg_asset_type": "char", "Asset": "hero", "Step": "rig", "name": "hero", "version": 4},
     {"entity_type": "Asset", "publish_type": "Alembic Cache"}),
    ("photoshop_shot_publish", "sequences/sq01/sh010/paint/publish/photoshop/matte.v002.psd",
     {**SH, "Step": "paint", "name": "matte", "version": 2}, {"publish_type": "Photoshop Image"}),
    ("aftereffects_shot_render_pub_mono",
     "sequences/sq01/sh010/comp/publish/elements/slap/v001/1920x1080/sh010_slap_main_v001.1001.tif",
     {**SH, "name": "slap", "version": 1, "width": 1920, "height": 1080, "comp": "main", "SEQ": 1001},
     {"publish_type": "Rendered Image"}),
    ("asset_mari_texture_tif", "assets/char/hero/surf/publish/mari/hero_diffuse_base.v003.1001.tif",
     {"sg_asset_type": "char", "Asset": "hero", "Step": "surf", "name": "hero", "channel": "diffuse",
      "layer": "base", "version": 3, "UDIM": 1001}, {"entity_name": "hero", "version": 3}),
    ("vred_asset_render_sequence_publish",
     "assets/veh/car/lookdev/publish/images/turntable/v002/car_turntable_v002-beauty-00001.png",
     {"sg_asset_type": "veh", "Asset": "car", "Step": "lookdev", "name": "turntable", "version": 2,
      "vred.render_pass": "beauty", "SEQ": 1, "vred.render_extension": "png"}, {"publish_type": "Rendered Image"}),
    ("flame_shot_render_exr", "sequences/sq01/sh010/finishing/renders/grade_v002/sh010_grade_v002.00001001.exr",
     {"Sequence": "sq01", "Shot": "sh010", "segment_name": "grade", "version": 2, "flame.frame": 1001},
     None),  # a Flame export render: no 'publish' folder, no *_pub name, so it matches but does not publish
    ("hiero_render_path", "sequences/sq01/sh010/editorial/2024_03_05/renders/proj_sh010.1001.dpx",
     {"Sequence": "sq01", "Shot": "sh010", "YYYY": 2024, "MM": 3, "DD": 5, "project": "proj", "SEQ": 1001},
     None),
    ("max_asset_publish", "assets/prop/lamp/model/publish/3dsmax/lamp.v003.max",
     {"sg_asset_type": "prop", "Asset": "lamp", "Step": "model", "name": "lamp", "version": 3},
     {"publish_type": "3dsmax Scene"}),
    ("alias_asset_catpart_publish", "assets/veh/car/model/publish/alias/translations/body.v007.CATPart",
     {"sg_asset_type": "veh", "Asset": "car", "Step": "model", "name": "body", "version": 7},
     {"publish_type": "CATPART File"}),
]


@pytest.fixture(scope="module")
def tk():
    return load_templates(FIXTURE)


def test_fixture_loads_unchanged(tk) -> None:
    assert FIXTURE.is_file()
    assert len(tk.names) == 137  # every paths entry, folder roots included
    assert "shot_root" in tk.names and "nuke_shot_publish" in tk.names
    assert set(tk.strings) == {"nuke_shot_version_name", "nuke_quick_shot_version_name", "nuke_asset_version_name",
                               "nuke_quick_asset_version_name", "hiero_version", "mari_asset_project_name"}
    # everything in the public file is supported; whatever is reported, is reported once
    assert len(tk.warnings) == len(set(tk.warnings))
    assert tk.warnings == []


def test_fixture_keys_keep_toolkit_semantics(tk) -> None:
    assert tk.keys["nuke.output"].field == "output"
    assert tk.keys["maya_extension"].choices == ["ma", "mb"]  # mapping form: the keys are the values
    assert tk.keys["flame.frame"].width == 8
    assert tk.keys["UDIM"].udim
    assert tk.keys["asset_name"].shotgun_entity_type == "Asset"
    assert tk.templates["maya_shot_publish"].definition == \
        "sequences/{Sequence}/{Shot}/{Step}/publish/maya/{name}.v{version}.{maya_extension}"


@pytest.mark.parametrize("template,path,fields,publish", EXAMPLES, ids=[e[0] for e in EXAMPLES])
def test_publish_templates_match(tk, template: str, path: str, fields: dict[str, Any],
                                 publish: dict[str, Any] | None) -> None:
    m = tk.match(path)
    assert m, m.reason
    assert m.template == template
    assert m.fields == fields
    if publish is None:
        assert m.publish is None and "not a publish template" in tk.explain(path)["note"]
        return
    assert m.publish is not None
    got = m.publish.to_dict()
    assert {k: got[k] for k in publish} == publish
    assert m.frame_key is None or m.pattern % m.frame == path


def test_flame_frames_keep_eight_digits(tk) -> None:
    m = tk.match("sequences/sq01/sh010/finishing/renders/grade_v002/sh010_grade_v002.00001001.exr")
    assert (m.frame_key, m.frame, m.padding) == ("flame.frame", 1001, 8)
    assert m.pattern.endswith("sh010_grade_v002.%08d.exr")


def test_folder_templates_match_but_do_not_publish(tk) -> None:
    m = tk.match("sequences/sq01/sh010/comp/work/nuke")  # a file named like Toolkit's work area folder
    assert m and m.template == "shot_work_area_nuke" and m.publish is None
    assert "directory template" in tk.explain("sequences/sq01/sh010/comp/work/nuke")["note"]


def test_strings_are_kept_but_not_matched_unless_asked(tk) -> None:
    assert not tk.match("sh010_comp_main_v003.12")  # a strings definition, not a path
    m = tk.match_string("sh010_comp_main_v003.12", "nuke_shot_version_name")
    assert m and m.fields == {"Shot": "sh010", "name": "comp", "output": "main", "version": 3, "iteration": 12}


def test_unsupported_entries_are_reported_once(tmp_path: Path) -> None:
    """The fixture plus entries we cannot use: each is named once, the rest still works."""
    extra = """
    subset_key:
        type: str
        subset: '([A-Z])[a-z]* ([A-Z])[a-z]*'
"""
    text = FIXTURE.read_text(encoding="utf-8").replace("\nkeys:\n", "\nkeys:\n" + extra, 1)
    text = text.replace("\npaths:\n", """
paths:
    uses_subset_a: 'users/{subset_key}/a.v{version}.nk'
    uses_subset_b: 'users/{subset_key}/b.v{version}.nk'
    broken_ref: '@no_such_root/{name}.v{version}.nk'
    nested_sections: 'x/{name}[_[{Step}]].v{version}.nk'
    not_a_definition: [1, 2]
""", 1)
    f = tmp_path / "templates.yml"
    f.write_text(text, encoding="utf-8")
    ts = load_templates(f)
    assert len(ts.warnings) == 4, ts.warnings
    assert len(ts.warnings) == len(set(ts.warnings))
    by = {name: [w for w in ts.warnings if name in w] for name in
          ("subset_key", "broken_ref", "nested_sections", "not_a_definition")}
    assert all(len(v) == 1 for v in by.values()), by
    assert "subset" in by["subset_key"][0] and "no_such_root" in by["broken_ref"][0]
    assert {"broken_ref", "nested_sections", "not_a_definition"}.isdisjoint(ts.names)
    assert ts.match("users/John Smith/a.v001.nk").template == "uses_subset_a"
    assert ts.match("sequences/sq01/sh010/comp/publish/nuke/scene.v003.nk").template == "nuke_shot_publish"


# The stock config has no publishes: section. What an artist's day leaves on disk, and whether
# watcher publishes it by default: work files, snapshots and work renders never; the files in
# publish areas (Toolkit's own publishes) always.
TS = "2024-03-05-14-30-00"
DEFAULT_PUBLISH: list[tuple[str, str, bool]] = [
    ("nuke_shot_work", "sequences/sq01/sh010/comp/work/nuke/scene.v003.nk", False),
    ("nuke_shot_snapshot", f"sequences/sq01/sh010/comp/work/nuke/snapshots/scene.v003.{TS}.nk", False),
    ("maya_shot_work", "sequences/sq01/sh010/anim/work/maya/scene.v003.ma", False),
    ("maya_shot_snapshot", f"sequences/sq01/sh010/anim/work/maya/snapshots/scene.v003.{TS}.ma", False),
    ("houdini_shot_work", "sequences/sq01/sh010/fx/work/houdini/pyro.v010.hip", False),
    ("houdini_shot_snapshot", f"sequences/sq01/sh010/fx/work/houdini/snapshots/pyro.v010.{TS}.hip", False),
    ("houdini_shot_render", "sequences/sq01/sh010/fx/work/images/pyro/mantra1/v010/1920x1080/sh010_pyro_v010.1001.exr",
     False),
    ("houdini_shot_work_alembic_cache",
     "sequences/sq01/sh010/fx/work/houdini/cache/alembic/pyro/rop1/v010/sh010_pyro_v010.abc", False),
    ("nuke_shot_render_mono_dpx", "sequences/sq01/sh010/comp/work/images/comp/v003/2048x1152/sh010_comp_main_v003.1001.dpx",
     False),
    ("maya_asset_work", "assets/char/hero/model/work/maya/hero.v012.ma", False),
    ("photoshop_shot_snapshot", f"sequences/sq01/sh010/paint/work/photoshop/snapshots/matte.v002.{TS}.psd", False),
    ("nuke_shot_publish", "sequences/sq01/sh010/comp/publish/nuke/scene.v003.nk", True),
    ("maya_shot_publish", "sequences/sq01/sh010/anim/publish/maya/scene.v003.ma", True),
    ("maya_asset_publish", "assets/char/hero/model/publish/maya/hero.v012.mb", True),
    ("houdini_shot_publish", "sequences/sq01/sh010/fx/publish/houdini/pyro.v010.hip", True),
    ("nuke_shot_render_pub_mono_dpx",
     "sequences/sq01/sh010/comp/publish/elements/comp/v003/2048x1152/sh010_comp_main_v003.1001.dpx", True),
    ("nuke_shot_render_pub_stereo",
     "sequences/sq01/sh010/comp/publish/elements/comp/v003/2048x1152/sh010_comp_main_left_v003.1001.exr", True),
    ("asset_alembic_cache", "assets/char/hero/rig/publish/caches/hero.v004.abc", True),
    ("asset_mari_texture_tif", "assets/char/hero/surf/publish/mari/hero_diffuse_base.v003.1001.tif", True),
]


@pytest.mark.parametrize("template,path,publishes", DEFAULT_PUBLISH, ids=[e[0] for e in DEFAULT_PUBLISH])
def test_stock_config_publishes_only_publish_templates(tk, template: str, path: str, publishes: bool) -> None:
    m = tk.match(path)
    assert m, m.reason
    assert m.template == template
    assert (m.publish is not None) is publishes
    info = tk.explain(path)
    if publishes:
        assert info["publish"] is not None and "note" not in info
    else:
        assert info["publish"] is None
        assert "not a publish template" in info["note"] and "publishes: section" in info["note"]


def test_stock_config_publishing_templates_are_the_publish_ones(tk) -> None:
    """What `watcher check` lists: every template that publishes by default says so in its name
    or folders, and no work template is among them."""
    publishing = [n for n in tk.names if tk.publish_rule(n) is not None]
    assert "nuke_shot_publish" in publishing and "nuke_shot_work" not in publishing
    assert not [n for n in publishing if "_work" in n or "snapshot" in n]
    assert all("_pub" in n or "/publish/" in tk.templates[n].definition for n in publishing)
