"""The template files shipped in templates/: they load cleanly and publish what they say."""
from __future__ import annotations

from pathlib import Path

import pytest

from watcher.match import PublishSpec, load_templates

TEMPLATES = Path(__file__).resolve().parents[1] / "templates"


@pytest.mark.parametrize("name", ["studio.yml", "toolkit-default2.yml", "vendor-flat.yml"])
def test_loads_without_warnings(name: str) -> None:
    ts = load_templates(TEMPLATES / name)
    assert ts.warnings == []
    assert ts.names


@pytest.mark.parametrize("path,spec", [
    ("sequences/sq01/sh010/comp/publish/renders/beauty/v003/beauty.1001.exr",
     PublishSpec("Shot", "sh010", "comp", "sh010_beauty", 3, "Rendered Image")),
    ("sequences/sq01/sh010/comp/publish/nuke/sh010_main_v012.nk",
     PublishSpec("Shot", "sh010", "comp", "sh010_main", 12, "Nuke Script")),
    ("sequences/sq01/sh010/plates/bg01/v001/sh010_bg01_v001.1001.dpx",
     PublishSpec("Shot", "sh010", "plate", "sh010_bg01", 1, "Plate")),
    ("sequences/sq01/sh010/fx/publish/caches/smoke/v002/sh010_smoke_v002.1001.vdb",
     PublishSpec("Shot", "sh010", "fx", "sh010_smoke", 2, "VDB Cache")),
    ("sequences/sq01/sh010/anim/review/playblast/main/v004/sh010_main_v004.0101.jpg",
     PublishSpec("Shot", "sh010", "anim", "sh010_main", 4, "Playblast")),
    ("assets/char/hero/surf/publish/textures/diffuse/v004/hero_diffuse_v004.1001.tif",
     PublishSpec("Asset", "hero", "surf", "hero_diffuse", 4, "Texture")),
    ("assets/char/hero/model/publish/maya/hero_body_v012.mb",
     PublishSpec("Asset", "hero", "model", "hero_body", 12, "Maya Scene")),
    ("assets/prop/lamp/lookdev/review/turntable/v002/lamp_tt_v002.0001.png",
     PublishSpec("Asset", "lamp", "lookdev", "lamp_tt", 2, "Turntable")),
])
def test_studio_publishes(path: str, spec: PublishSpec) -> None:
    m = load_templates(TEMPLATES / "studio.yml").match(path)
    assert m and m.publish == spec


@pytest.mark.parametrize("path", [
    "sequences/sq01/sh010/comp/work/nuke/sh010_main_v012.nk",
    "sequences/sq01/sh010/anim/work/maya/sh010_layout_v002.ma",
    "sequences/sq01/sh010/comp/work/renders/beauty/v007/beauty.1001.exr",
    "assets/char/hero/model/work/maya/hero_body_v012.ma",
])
def test_studio_work_files_match_but_do_not_publish(path: str) -> None:
    ts = load_templates(TEMPLATES / "studio.yml")
    m = ts.match(path)
    assert m and m.publish is None
    assert "*_work" in ts.explain(path)["note"]


def test_toolkit_default2_publishes_with_defaults() -> None:
    ts = load_templates(TEMPLATES / "toolkit-default2.yml")
    assert ts.match("sequences/sq01/sh010/comp/publish/nuke/scene.v003.nk").publish == \
        PublishSpec("Shot", "sh010", "comp", "scene", 3, "Nuke Script")
    assert ts.match("assets/char/hero/model/publish/maya/hero.v012.ma").publish == \
        PublishSpec("Asset", "hero", "model", "hero", 12, "Maya Scene")
    assert ts.match("editorial/publish/cut_v002.mov").publish == PublishSpec(None, None, None, "cut", 2, "Movie")
    assert ts.match("sequences/sq01/sh010/comp/work/nuke").publish is None  # a folder template
    assert ts.templates["editorial_cut"].root_name == "primary"


def test_vendor_flat_entity_from_shot() -> None:
    ts = load_templates(TEMPLATES / "vendor-flat.yml")
    m = ts.match("ABC0010_comp_main_v003.1001.exr")
    assert m.publish == PublishSpec("Shot", "ABC0010", "comp", "ABC0010_comp_main", 3, "Rendered Image")
    assert m.pattern == "ABC0010_comp_main_v003.%04d.exr"
    assert ts.match("delivery_0305/ABC0010_comp_main_v003.mov").publish == \
        PublishSpec("Shot", "ABC0010", "comp", "ABC0010_comp_main", 3, "Movie")
