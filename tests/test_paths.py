"""The platform path layer (watcher/paths.py), with each OS's rules exercised on Linux:
pyfakefs with Windows and macOS semantics for the disk, ``ntpath``/``PureWindowsPath`` for the
strings, a real second process for the single-instance lock, mountinfo texts for file system
types."""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import textwrap
import unicodedata
from pathlib import Path, PureWindowsPath

import platformdirs.windows
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pyfakefs.fake_filesystem import OSType

from watcher import paths
from watcher.config import default_state_dir
from watcher.errors import ConfigError
from watcher.match import load_templates
from watcher.paths import (AgentDirs, FsKind, InstanceLock, InstanceLockedError, MountState, OSFamily, OSPaths,
                           PathMappingError, RootPath, RootPathError)

W, L, D = OSFamily.WINDOWS, OSFamily.LINUX, OSFamily.DARWIN
REPO = Path(__file__).resolve().parent.parent


def walk_files(top: str) -> list[str]:
    return sorted(os.path.join(d, f) for d, _, files in os.walk(top) for f in files)


# ---- 1. one path model, on a Windows and a macOS disk -------------------------------------------

def test_windows_drive_root_scan_relative_and_join(fs):
    """The old containment (`path[len(root) + 1:]` after `startswith(root + "/")`) published
    nothing from P:\\ and cut the first letter of every name under a drive or share root."""
    fs.os = OSType.WINDOWS
    for p in (r"P:\Seq01\sh010\comp_v001.nk", r"P:\Seq01\sh010\renders\beauty.1001.exr", r"P:\readme.txt"):
        fs.create_file(p)
    root = RootPath.probed("P:\\", W)
    assert root.case_insensitive and root.spelling == "P:\\"
    rels = sorted(root.relative(p) for p in walk_files("P:\\"))
    assert rels == ["Seq01/sh010/comp_v001.nk", "Seq01/sh010/renders/beauty.1001.exr", "readme.txt"]
    for rel in rels:
        assert os.path.isfile(root.join(rel))
    # watchdog's spelling may differ in case or separators from the configured one
    assert root.relative("p:/seq01\\SH010/comp_v001.nk") == "seq01/SH010/comp_v001.nk"
    assert root.relative("Q:\\Seq01\\x.nk") is None and root.relative("P:\\") is None


def test_windows_share_root_keeps_unc_and_matches_long_path_prefix(fs):
    fs.os = OSType.WINDOWS
    fs.create_file(r"\\srv\share\shows\sq01\a.exr")
    fs.create_file(r"\\srv\share\other.txt")
    share = RootPath.probed("\\\\srv\\share\\", W)
    assert share.spelling == "\\\\srv\\share\\"  # never rewritten
    assert sorted(share.relative(p) for p in walk_files("\\\\srv\\share")) == ["other.txt", "shows/sq01/a.exr"]
    deep = RootPath.probed("//srv/share/shows/", W)
    assert deep.spelling == r"\\srv\share\shows"
    assert deep.relative(r"\\SRV\Share\Shows\sq01\a.exr") == "sq01/a.exr"
    assert deep.relative(r"\\?\UNC\srv\share\shows\sq01\a.exr") == "sq01/a.exr"
    assert deep.relative(r"\\srv\share\showsX\a.exr") is None and deep.relative(r"\\srv\other\shows\a") is None
    assert os.path.isfile(deep.join("sq01/a.exr"))
    assert deep.join("sq01/a.exr") == r"\\srv\share\shows\sq01\a.exr"


def test_mapped_drive_spelling_is_kept_not_resolved():
    root = RootPath.of("p:/Shows/", W)
    assert root.spelling == r"p:\Shows"
    assert root.join("sq01/a.exr") == r"p:\Shows\sq01\a.exr"
    assert RootPath.of("P:", W).spelling == "P:\\"  # a bare drive means its root
    for bad in ("shows", r"P:shows", r"\shows", "\\\\srv", "/mnt/shows"):
        with pytest.raises(RootPathError, match="not an absolute Windows path"):
            RootPath.of(bad, W)
    with pytest.raises(RootPathError, match="absolute path"):
        RootPath.of("mnt/shows", L)


def test_case_probe_per_os_semantics(fs):
    fs.create_dir("/shows/empty")
    fs.create_file("/shows/Plate.exr")
    assert paths.probe_case_insensitive("/shows", L) is False
    assert paths.probe_case_insensitive("/shows/empty", L) is False
    fs.os = OSType.MACOS  # a new, empty disk with macOS semantics
    fs.create_dir("/shows/empty")
    fs.create_file("/shows/Plate.exr")
    assert paths.probe_case_insensitive("/shows", D) is True
    assert paths.probe_case_insensitive("/shows/empty", D) is True
    assert os.listdir("/shows/empty") == []  # the write probe cleans up after itself
    fs.is_case_sensitive = True  # APFS (case-sensitive), as some studios format their volumes
    assert paths.probe_case_insensitive("/shows/empty", D) is False
    root = RootPath.probed("/shows", D)
    assert root.relative("/shows/Plate.exr") == "Plate.exr" and root.relative("/SHOWS/Plate.exr") is None


def test_case_probe_windows_existing_names_and_unprobeable_default(fs):
    fs.os = OSType.WINDOWS
    fs.create_file(r"C:\shows\Seq01\a.exr")
    assert paths.probe_case_insensitive(r"C:\shows", W) is True
    assert paths.probe_case_insensitive(r"C:\missing", W) is True  # cannot probe: the OS's rule
    assert paths.probe_case_insensitive(r"C:\missing", L) is False


def test_macos_nfd_names_become_nfc_relative_paths(fs):
    fs.os = OSType.MACOS
    nfd = unicodedata.normalize("NFD", "/Volumes/Café/séq01/plaque_é.exr")
    fs.create_file(nfd)
    root = RootPath.probed("/Volumes/Café", D)  # typed: NFC
    [found] = walk_files("/Volumes")
    rel = root.relative(found)
    assert rel == unicodedata.normalize("NFC", "séq01/plaque_é.exr") and rel != found[len("/Volumes/Café/"):]
    # join gives the NFC spelling (APFS and HFS+ open it; pyfakefs does not model that)
    assert root.join(rel) == unicodedata.normalize("NFC", "/Volumes/Café/séq01/plaque_é.exr")


def test_posix_relative_refuses_dotdot_and_keeps_case():
    root = RootPath.of("/mnt/shows/", L)
    assert root.relative("/mnt/shows//sq01/./a.exr") == "sq01/a.exr"
    assert root.relative("/mnt/shows/../etc/passwd") is None
    assert root.relative("/mnt/Shows/sq01/a.exr") is None
    assert paths.relative(root, "/mnt/shows/a") == "a" and paths.join(root, "a") == "/mnt/shows/a"
    with pytest.raises(ValueError):
        root.join("../x")


_name = st.text(st.characters(exclude_categories=("Cs", "Cc"), exclude_characters='/\\:'),
                min_size=1, max_size=12).filter(lambda s: s not in (".", ".."))


@settings(max_examples=150, deadline=None)
@given(rel=st.lists(_name, min_size=1, max_size=5).map(lambda xs: unicodedata.normalize("NFC", "/".join(xs))),
       spelling=st.sampled_from([("P:\\", W), ("P:\\shows", W), ("\\\\srv\\share\\", W), ("\\\\srv\\share\\a b", W),
                                 ("/", L), ("/mnt/shows", L), ("/Volumes/Café", D)]))
def test_relative_is_the_inverse_of_join(rel, spelling):
    root = RootPath.of(*spelling)
    assert root.relative(root.join(rel)) == rel


# ---- 2. per-OS roots, network file systems, mount markers --------------------------------------

def test_per_os_root_mapping_and_toolkit_keys():
    ours = paths.parse_os_paths("shows", {"linux": "/mnt/shows", "darwin": "/Volumes/shows", "windows": "P:\\shows"})
    assert [paths.root_spelling("shows", ours, f) for f in (L, D, W)] == ["/mnt/shows", "/Volumes/shows", "P:\\shows"]
    toolkit = {"linux_path": "/mnt/shows", "mac_path": None, "windows_path": "\\\\srv\\shows",
               "default": True, "shotgun_storage_id": 3}
    tk = paths.parse_os_paths("primary", toolkit)
    assert tk.get(W) == "\\\\srv\\shows" and tk.get(D) is None and tk.storage_id == 3
    assert paths.root_spelling("shows", "/mnt/shows", L) == "/mnt/shows"  # a plain path, as before
    assert PureWindowsPath(paths.root_spelling("primary", toolkit, W)) == PureWindowsPath(r"\\srv\shows")


def test_per_os_root_errors_name_root_and_key():
    with pytest.raises(RootPathError) as e:
        paths.root_spelling("shows", {"linux_path": "/mnt/shows", "mac_path": None}, D)
    msg = str(e.value)
    assert "root 'shows'" in msg and "'darwin'" in msg and "it has: linux" in msg and "/Volumes/shows" in msg
    assert isinstance(e.value, ConfigError)
    with pytest.raises(RootPathError, match="unknown key 'windwos' \\(did you mean 'windows'\\?\\)"):
        paths.parse_os_paths("shows", {"linux": "/mnt/shows", "windwos": "P:\\"})
    with pytest.raises(RootPathError, match="'linux' and 'linux_path' both give the linux path"):
        paths.parse_os_paths("shows", {"linux": "/mnt/a", "linux_path": "/mnt/b"})
    with pytest.raises(RootPathError, match=r"path.windows: /mnt/x is not an absolute Windows path"):
        paths.parse_os_paths("shows", {"linux": "/mnt/shows", "windows": "/mnt/x"})
    with pytest.raises(RootPathError, match=r"path.linux: .* is not an absolute path"):
        paths.parse_os_paths("shows", {"linux": "P:\\shows"})
    with pytest.raises(RootPathError, match="gives no path for any OS"):
        paths.parse_os_paths("shows", {"mac_path": None})


MOUNTINFO = textwrap.dedent(r"""
    22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
    40 22 0:35 / /mnt/shows rw,relatime shared:20 - nfs4 filer:/export/shows rw,vers=4.2
    41 40 8:17 / /mnt/shows/cache rw,relatime shared:21 - xfs /dev/sdb1 rw
    42 22 0:36 / /mnt/with\040space rw,relatime - cifs //nas/projects rw
    43 22 0:37 / /home/ann/remote rw,nosuid - fuse.sshfs ann@host:/ rw
    44 22 0:38 / /mnt/local rw - tmpfs tmpfs rw
    45 22 0:39 / /mnt/afs rw - afs AFS rw
""").strip()


@pytest.mark.parametrize("path,kind,fstype,mount", [
    ("/mnt/shows/sq01/a.exr", FsKind.NETWORK, "nfs4", "/mnt/shows"),
    ("/mnt/shows", FsKind.NETWORK, "nfs4", "/mnt/shows"),
    ("/mnt/shows/cache/sq01", FsKind.LOCAL, "xfs", "/mnt/shows/cache"),  # a local disk mounted inside
    ("/mnt/showsX/a", FsKind.LOCAL, "ext4", "/"),
    ("/mnt/with space/a.exr", FsKind.NETWORK, "cifs", "/mnt/with space"),
    ("/home/ann/remote/x", FsKind.NETWORK, "fuse.sshfs", "/home/ann/remote"),
    ("/mnt/local/x", FsKind.LOCAL, "tmpfs", "/mnt/local"),
    ("/mnt/afs/cell", FsKind.NETWORK, "afs", "/mnt/afs"),
])
def test_network_fs_from_mountinfo(path, kind, fstype, mount):
    fs_ = paths.linux_filesystem(path, MOUNTINFO)
    assert (fs_.kind, fs_.fstype, fs_.mount_point) == (kind, fstype, mount)
    assert paths.linux_filesystem(path, "garbage\n").kind is FsKind.UNKNOWN


def test_network_fs_windows_and_macos_rules():
    types = {"C:\\": 3, "P:\\": paths.DRIVE_REMOTE, "Z:\\": paths.DRIVE_NO_ROOT_DIR}
    probe = types.__getitem__
    assert paths.windows_filesystem(r"\\srv\share\x", probe).network
    assert paths.windows_filesystem(r"\\?\UNC\srv\share\x", probe).network
    assert paths.windows_filesystem(r"p:\shows\x", probe).network
    assert paths.windows_filesystem(r"C:\shows", probe).kind is FsKind.LOCAL
    assert paths.windows_filesystem(r"\\?\C:\shows", probe).kind is FsKind.LOCAL
    assert paths.windows_filesystem(r"Z:\shows", probe).kind is FsKind.UNKNOWN  # not mapped in this session
    assert paths.darwin_filesystem("smbfs", 0, "/Volumes/shows").network
    assert paths.darwin_filesystem("apfs", paths.MNT_LOCAL, "/").kind is FsKind.LOCAL
    assert paths.darwin_filesystem("macfuse", 0, "/Volumes/x").network  # no MNT_LOCAL: remote
    assert paths._Statfs.__dict__["f_fstypename"].offset == 72
    import ctypes
    assert ctypes.sizeof(paths._Statfs) == 2168  # <sys/mount.h> struct statfs, 64-bit inodes


def test_network_fs_on_this_machine(tmp_path):
    fs_ = paths.filesystem_of(str(tmp_path), L)
    assert fs_.kind is not FsKind.UNKNOWN and fs_.mount_point and not paths.is_network_fs(str(tmp_path), L)


def test_mount_marker(tmp_path, monkeypatch):
    share = tmp_path / "shows"
    root = RootPath.of(str(share), L)
    check = paths.check_mount("shows", root, ".watcher-root")
    assert check.state is MountState.ROOT_MISSING and "root 'shows'" in check.message
    share.write_text("")
    assert "is not a folder" in paths.check_mount("shows", root).message
    share.unlink()
    share.mkdir()  # an empty mount point: the folder is there, the share is not mounted on it
    check = paths.check_mount("shows", root, ".watcher-root")
    assert check.state is MountState.MARKER_MISSING and ".watcher-root" in check.message and not check.ok
    assert paths.check_mount("shows", root).ok  # no marker configured: the folder is enough
    (share / ".watcher-root").touch()
    assert paths.check_mount("shows", root, ".watcher-root").ok

    def stale(_path):
        raise OSError(errno.ESTALE, "Stale file handle")

    monkeypatch.setattr(os, "listdir", stale)  # NFS after the server lost the export
    check = paths.check_mount("shows", root)
    assert check.state is MountState.STALE and "Stale file handle" in check.message and "remount" in check.message
    monkeypatch.setattr(os, "stat", stale)
    assert paths.check_mount("shows", root, ".watcher-root").state is MountState.STALE


# ---- 3. state and log dirs, the single-instance lock -------------------------------------------

def test_agent_dirs_per_os(monkeypatch, tmp_path):
    monkeypatch.setattr(platformdirs.windows, "get_win_folder",
                        lambda csidl: {"CSIDL_LOCAL_APPDATA": r"C:\Users\ann\AppData\Local"}[csidl])
    cfg_w = r"C:\Users\ann\watcher\watcher.yml"
    win = paths.agent_dirs(cfg_w, W)
    tag = paths.config_tag(cfg_w, W)
    assert PureWindowsPath(win.state) == PureWindowsPath(rf"C:\Users\ann\AppData\Local\watcher\{tag}")
    assert PureWindowsPath(win.logs) == PureWindowsPath(rf"C:\Users\ann\AppData\Local\watcher\Logs\{tag}")
    assert "/" not in win.state and tag.startswith("watcher-")
    assert paths.config_tag(r"c:\users\ANN\watcher\WATCHER.yml", W).endswith(tag[-8:])  # one file, any case

    monkeypatch.setenv("HOME", "/Users/ann")
    mac = paths.agent_dirs("/Users/ann/.config/watcher/watcher.yml", D)
    assert mac.state.startswith("/Users/ann/Library/Application Support/watcher/watcher-")
    assert mac.logs.startswith("/Users/ann/Library/Logs/watcher/watcher-")

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    cfg = tmp_path / "cfg" / "show.yml"
    lin = paths.agent_dirs(str(cfg), L)
    assert Path(lin.state) == default_state_dir(cfg)  # the folder Linux agents already use
    assert lin.logs == os.path.join(str(tmp_path / "state"), "watcher", "log", paths.config_tag(str(cfg), L))
    assert paths.agent_dirs(None, L) == AgentDirs(str(tmp_path / "state" / "watcher"),
                                                  str(tmp_path / "state" / "watcher" / "log"))


HOLDER = textwrap.dedent("""
    import sys
    from watcher.paths import InstanceLock, InstanceLockedError
    lock = InstanceLock(sys.argv[1], sys.argv[2])
    try:
        lock.acquire()
    except InstanceLockedError as exc:
        print("LOCKED", exc.pid, exc, flush=True)
        sys.exit(3)
    print("HELD", flush=True)
    sys.stdin.readline()
    lock.release()
    print("RELEASED", flush=True)
""")


def _holder(lock: str, cfg: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-c", HOLDER, lock, cfg], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, cwd=str(REPO))


def test_instance_lock_against_a_real_second_process(tmp_path):
    cfg = str(tmp_path / "watcher.yml")
    lock_file = paths.lock_path(str(tmp_path), cfg, L)
    child = _holder(lock_file, cfg)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "HELD"
        with pytest.raises(InstanceLockedError) as e:
            InstanceLock(lock_file, cfg).acquire()
        assert e.value.pid == child.pid and f"pid {child.pid}" in str(e.value) and cfg in str(e.value)
        child.stdin.write("\n")  # a clean release lets the next agent in
        child.stdin.flush()
        assert child.stdout.readline().strip() == "RELEASED"
        assert child.wait(10) == 0
    finally:
        child.kill()
        child.wait()
    with InstanceLock(lock_file, cfg) as mine:
        assert mine.held and mine.holder() == os.getpid()
        second = _holder(lock_file, cfg)
        out, _ = second.communicate(timeout=20)
        assert second.returncode == 3 and out.startswith(f"LOCKED {os.getpid()} ") and "already runs" in out
    assert not mine.held


def test_instance_lock_freed_when_holder_is_killed(tmp_path):
    cfg = str(tmp_path / "watcher.yml")
    lock_file = paths.lock_path(str(tmp_path), cfg, L)
    child = _holder(lock_file, cfg)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "HELD"
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    finally:
        child.kill()
        child.wait()
    lock = InstanceLock(lock_file, cfg).acquire()  # the stale file with a dead pid does not block
    try:
        assert lock.holder() == os.getpid()
    finally:
        lock.release()


def test_instance_lock_unwritable_state_dir(tmp_path):
    with pytest.raises(paths.InstanceLockError, match="cannot create the lock file .*set state_dir"):
        InstanceLock(str(tmp_path / "missing" / "x.lock"), "watcher.yml").acquire()


# ---- 4. junk names and the Windows lint --------------------------------------------------------

@pytest.mark.parametrize("name", ["Thumbs.db", "THUMBS.DB", "desktop.ini", "Desktop.INI", ".DS_Store", "~$shot.docx",
                                  "render.TMP", "render.tmp", "Icon\r", "._plate.1001.exr", "~WRL0003.tmp"])
def test_junk_names(name):
    assert paths.is_junk(name)


@pytest.mark.parametrize("name", ["plate.1001.exr", "Icon", "thumbs.db.exr", "shot~$.nk", "tmp.exr"])
def test_not_junk(name):
    assert not paths.is_junk(name)


def test_junk_dirs():
    assert paths.is_junk_dir("$Recycle.Bin") and paths.is_junk_dir("System Volume Information")
    assert not paths.is_junk_dir("renders")


def test_windows_names_and_paths():
    assert paths.windows_name_problems("sh010_comp_v001.nk") == []
    for bad in ("CON", "con.exr", "Nul.tar.gz", "COM1", "lpt9.txt", "COM¹", "AUX .nk"):
        assert any("reserved device name" in p for p in paths.windows_name_problems(bad)), bad
    assert not paths.windows_name_problems("CONSOLE.nk") and not paths.windows_name_problems("COM10")
    assert "':'" in paths.windows_name_problems("a:b.exr")[0]
    assert "'<', '>'" in paths.windows_name_problems("a<b>.exr")[0]
    assert "dot or a space" in paths.windows_name_problems("take. ")[0]
    deep = "/".join(["d" * 50] * 5)  # 254 characters
    assert paths.windows_path_problems(deep) == []
    assert "263 characters with the root" in paths.windows_path_problems(deep, "P:\\shows\\")[0]


def test_template_lint_names_the_template():
    problems = [str(p) for p in paths.lint_template(
        "shot_render", "sq/{Shot}/aux.{ext}/{name}[_{aov}]:v.exr", "P:\\")]
    assert problems == ["template 'shot_render': 'aux.{ext}' is a reserved device name on Windows",
                        "template 'shot_render': '{name}_{aov}:v.exr' holds ':', which Windows forbids in names"]
    assert paths.lint_template("t", "{Shot}/{name}.{ext}") == []  # keys are not judged
    assert "ends with a dot" in str(paths.lint_template("t", "seq./{Shot}.exr")[0])
    assert "write folders with /" in str(paths.lint_template("t", "seq\\{Shot}.exr")[0])
    [long] = paths.lint_template("deep", "x" * 240 + "/{Shot}/{name}.exr", r"\\server\share\shows")
    assert "at least 269 characters with the root" in str(long)


@pytest.mark.parametrize("name", ["studio.yml", "toolkit-default2.yml", "vendor-flat.yml"])
def test_shipped_templates_are_windows_clean(name):
    ts = load_templates(REPO / "templates" / name)
    assert ts.templates
    assert [str(p) for t in ts.templates.values() for p in paths.lint_template(t.name, t.definition, "P:\\shows")] == []


# ---- 5. tracker paths per OS -------------------------------------------------------------------

STORAGES = [
    {"id": 1, "code": "primary", "linux_path": "/mnt/shows", "mac_path": "/Volumes/shows", "windows_path": "P:\\"},
    {"id": 2, "code": "renders", "linux_path": "/mnt/shows/renders", "mac_path": None,
     "windows_path": "\\\\render01\\renders"},
]


def test_shotgrid_path_from_windows_and_linux_spellings():
    win = paths.shotgrid_path(STORAGES[0], r"p:\sq01\SH010\comp_v001.nk", W)
    assert win is not None and win.relative_path == "sq01/SH010/comp_v001.nk"
    assert win.local_paths == {L: "/mnt/shows/sq01/SH010/comp_v001.nk", D: "/Volumes/shows/sq01/SH010/comp_v001.nk",
                               W: r"P:\sq01\SH010\comp_v001.nk"}
    lin = paths.shotgrid_path(STORAGES[0], "/mnt/shows/sq01/SH010/comp_v001.nk", L)
    assert lin is not None and lin.relative_path == win.relative_path
    assert paths.shotgrid_path(STORAGES[1], "/Volumes/shows/renders/a.exr", D) is None  # no mac_path
    assert paths.shotgrid_path(STORAGES[0], r"Q:\sq01\a.nk", W) is None
    nfd = paths.shotgrid_path(STORAGES[0], unicodedata.normalize("NFD", "/Volumes/shows/Séq/a.nk"), D)
    assert nfd is not None and nfd.relative_path == unicodedata.normalize("NFC", "Séq/a.nk")


def test_shotgrid_storage_matched_through_per_os_roots():
    root = OSPaths(by_os={L: "/mnt/shows/renders/sq01", W: r"\\render01\renders\sq01"})
    assert paths.shotgrid_storage_for(STORAGES, "renders", root, L)["code"] == "renders"  # deepest wins
    assert paths.shotgrid_storage_for(STORAGES, "renders", root, W)["code"] == "renders"
    primary_only = OSPaths(by_os={L: "/mnt/shows/sq01", W: "P:\\sq01"})
    assert paths.shotgrid_storage_for(STORAGES, "shows", primary_only, W)["code"] == "primary"
    assert paths.shotgrid_storage_for(STORAGES, "shows", OSPaths(by_os={L: "/srv/x"}), L) is None
    wrong = OSPaths(by_os={L: "/mnt/shows/sq01", W: r"P:\sq02"})
    with pytest.raises(PathMappingError,
                       match=r"'primary' holds root 'shows'.*windows_path P:.*P:\\\\sq02 at the same place"):
        paths.shotgrid_storage_for(STORAGES[:1], "shows", wrong, L)


def test_ftrack_identifiers_are_the_same_on_every_os():
    prefixes = {W: "P:\\projects", L: "/mnt/projects", D: "/Volumes/projects"}
    ident = paths.ftrack_identifier(prefixes[W], r"P:\Projects\sq01\a.exr", W)
    assert ident == "sq01/a.exr"
    assert paths.ftrack_identifier(prefixes[L], "/mnt/projects/sq01/a.exr", L) == ident
    assert paths.ftrack_path(prefixes[W], ident, W) == r"P:\projects\sq01\a.exr"
    assert paths.ftrack_path(prefixes[D], ident, D) == "/Volumes/projects/sq01/a.exr"
    with pytest.raises(PathMappingError, match="not under the ftrack location prefix"):
        paths.ftrack_identifier(prefixes[L], "/mnt/other/a.exr", L)


def test_kitsu_path_is_mount_point_plus_posix_relative():
    assert paths.kitsu_path("/mnt/prod/", "sq01/a.exr") == "/mnt/prod/sq01/a.exr"
    assert paths.kitsu_path("P:\\prod", "sq01/a.exr") == "P:/prod/sq01/a.exr"
    out = paths.kitsu_path("/mnt/prod", unicodedata.normalize("NFD", "séq/é.exr"))
    assert out == unicodedata.normalize("NFC", "/mnt/prod/séq/é.exr")
    with pytest.raises(PathMappingError):
        paths.kitsu_path("/mnt/prod", "../etc/passwd")


def test_render_path_per_os():
    assert paths.render_path("\\\\srv\\share\\", "a/b.exr", W) == r"\\srv\share\a\b.exr"
    assert PureWindowsPath(paths.render_path("P:/shows", "a/b.exr", W)) == PureWindowsPath(r"P:\shows\a\b.exr")
    assert paths.render_path("/mnt/shows/", "a/b.exr", L) == "/mnt/shows/a/b.exr"


# ---- the platform layer type-checks as Windows and macOS code ----------------------------------

@pytest.mark.parametrize("platform", ["win32", "darwin"])
def test_paths_type_checks_for_other_platforms(platform, tmp_path):
    """The msvcrt/fcntl/ctypes.windll branches are only type-checked when mypy is told the
    platform: a Windows-only call that Linux never imports is caught here."""
    done = subprocess.run([sys.executable, "-m", "mypy", "--platform", platform, "--follow-imports=silent",
                           "--cache-dir", str(tmp_path / "mypy"), "--no-error-summary", "watcher/paths.py"],
                          cwd=str(REPO), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
