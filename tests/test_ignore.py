from __future__ import annotations

import os

import pytest

from watcher.ignore import Ignorer, inside


@pytest.mark.parametrize("rel", [
    "shots/sh010/comp/beauty.1001.exr.tmp", "a/b/file.part", "a/file.filepart", "a/script.nk~",
    "a/.nfs000000000123", "a/.beauty.1001.exr.Xa8d2f", "a/.DS_Store", "a/download.crdownload",
    "a/#script.nk#", ".hidden/beauty.1001.exr", "a/.git/config", "a/script.nk.swp", "a/.watcher-cookie-1-2",
])
def test_temp_hidden_and_partial_names_are_ignored(rel):
    assert Ignorer().ignored(rel)


@pytest.mark.parametrize("rel", [
    "shots/sh010/comp/beauty.1001.exr", "a/b/sh010_comp_v001.nk", "a/tmp/file.exr", "a/part/x.abc",
    "ünïcödé/shot 010/beauty.1001.exr",
])
def test_real_names_are_kept(rel):
    assert not Ignorer().ignored(rel)


def test_user_globs():
    ig = Ignorer(["*.bak", "scratch/**", "**/cache/*.bgeo", "renders/tmp/"])
    assert ig.ignored("a/b/c.bak") and ig.ignored("c.bak")
    assert ig.ignored("scratch/x/y.exr") and not ig.ignored("a/scratch/y.exr")
    assert ig.ignored("a/b/cache/x.bgeo") and ig.ignored("cache/x.bgeo") and not ig.ignored("a/cache/x.abc")
    assert ig.ignored("renders/tmp/a.exr") and not ig.ignored("renders/tmp2/a.exr")
    assert ig.ignored_dir("scratch") and not ig.ignored_dir("a/scratch")  # prunes the walk below it
    assert ig.ignored_dir("renders/tmp")


def test_inside_follows_symlinks(tmp_path):
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (tmp_path / "out.txt").write_text("x")
    (root / "a/in.txt").write_text("x")
    os.symlink(tmp_path / "out.txt", root / "a/link_out")
    os.symlink(root / "a/in.txt", root / "a/link_in")
    real = os.path.realpath(root)
    assert inside(real, str(root / "a/in.txt")) and inside(real, str(root / "a/link_in"))
    assert not inside(real, str(root / "a/link_out"))
    assert not inside(real, str(root / "a/../../out.txt"))


def test_user_globs_follow_gitignore_rules():
    """The root's globs read as a .gitignore does: a folder pattern takes everything in it, a
    `!` line takes a path back, a `#` line is a comment, a leading `/` anchors at the root."""
    ig = Ignorer(["# scratch areas", "wip/", "*.exr", "!hero.*.exr", "/notes.txt"])
    assert ig.ignored("sh010/wip/a/b.nk") and ig.ignored_dir("sh010/wip")
    assert ig.ignored("sh010/beauty.1001.exr") and not ig.ignored("sh010/hero.1001.exr")
    assert ig.ignored("notes.txt") and not ig.ignored("sh010/notes.txt")
    assert not ig.ignored("sh010/comp.nk")
