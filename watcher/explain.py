"""How one path fares: the root, the pipeline's admission, the template, the typed fields and the
publish it would make, or where matching stopped. Shared by `watcher explain` and the I/O desk's
"try a path" box, so that both say the same words."""
from __future__ import annotations

import os
from typing import Any, Sequence

from .names import decodable, one_line, stored
from .roots import Refusal, RootRuntime, file_kind
from .paths import RootPath


def explain_path(roots: Sequence[RootRuntime], raw: str) -> dict[str, Any]:
    """JSON-able answer for one path (relative paths resolve against the current directory)."""
    path = os.path.abspath(raw)
    if not any(r.relative(path) is not None for r in roots):
        for r in roots:  # named by the real path of a root configured through a symlinked mount
            rel = RootPath.of(r.real).relative(path, normalise=False) if r.real != r.path else None
            if rel is not None:
                path = os.path.join(r.path, *rel.split("/"))
                break
    res: dict[str, Any] = {"path": stored(path)}  # JSON and a terminal hold no undecodable bytes
    for r in roots:
        rel = r.relative(path)
        if rel is None:
            continue
        res["root"] = r.name
        res["relative_path"] = stored(rel)
        # the pipeline's own admission; a path not on disk yet is explained as if it were a file
        verdict = r.admit(rel, path) if os.path.lexists(path) or r.ignorer.ignored(rel) or not decodable(rel) else None
        if isinstance(verdict, Refusal):
            reason = verdict.value
            if verdict is Refusal.ESCAPES:
                reason = f"resolves to {stored(os.path.realpath(path))}, outside the root: never published"
            elif verdict is Refusal.NOT_REGULAR:
                reason = f"{_kind(path)}: {reason}"
            res.update(matched=False, refused=verdict.name.lower(), reason=reason)
        else:
            res.update(r.templates.explain(rel))
            if res.get("placeholder"):  # matches, but the pipeline refuses it
                res.update(matched=False, refused=Refusal.PLACEHOLDER.name.lower(), closest=res.get("template"),
                           reason=Refusal.PLACEHOLDER.value)
            pub = res.get("publish")
            if pub and r.scope.project:
                pub["project"] = r.scope.project
            if pub and r.scope.entity:
                pub["entity"] = {"type": r.scope.entity.type, "name": r.scope.entity.name}
            if res.get("frame") is not None and res.get("pattern"):
                res.update(_frames_on_disk(r, res["pattern"]))
        break
    else:
        res.update(matched=False, root=None,
                   reason="not under any configured root (" + ", ".join(f"{r.name}: {r.path}" for r in roots) + ")")
    return res


def _frames_on_disk(r: RootRuntime, pattern: str) -> dict[str, Any]:
    """The frames of this path's sequence found beside it, and the holes between them."""
    folder, _, name = os.path.join(r.path, pattern).rpartition("/")
    head, _, tail = name.partition("%")
    tail = tail[tail.index("d") + 1:] if "d" in tail else ""
    frames = []
    try:
        with os.scandir(folder) as it:
            for e in it:
                mid = e.name[len(head):len(e.name) - len(tail)] if tail else e.name[len(head):]
                if e.name.startswith(head) and e.name.endswith(tail) and mid.lstrip("-").isdigit() \
                        and e.is_file(follow_symlinks=False):  # what admission takes: no FIFO, link or folder
                    frames.append(int(mid))
    except OSError:
        return {}
    if not frames:
        return {}
    from .candidate import frame_ranges, split_strays

    kept, strays = split_strays(frames)
    full, holes = frame_ranges(kept)
    out: dict[str, Any] = {"frames_on_disk": full, "missing_frames": holes}
    if strays:
        out["stray_frames"] = strays
    return out


def _kind(path: str) -> str:
    try:
        return file_kind(os.lstat(path).st_mode)
    except OSError:
        return "gone"


def explain_text(res: dict[str, Any]) -> str:
    """The human form of ``explain_path``'s answer (what `watcher explain` prints). Names are
    escaped (a control character in a name cannot fake a line)."""
    lines = [one_line(res["path"])]
    if res.get("root"):
        lines.append(f"  root:      {res['root']}")
    if res.get("matched"):
        lines.append(f"  template:  {res.get('template')}")
        fields = res.get("fields") or {}
        lines.append("  fields:    " + ", ".join(f"{k}={v!r}" for k, v in fields.items()))
        pub = res.get("publish")
        if pub:
            ent = pub.get("entity")
            if isinstance(ent, dict):
                ent = f"{ent.get('type')} {ent.get('name')}"
            elif ent is None and pub.get("entity_type"):
                ent = f"{pub.get('entity_type')} {pub.get('entity_name')}"
            lines.append(f"  publish:   {ent or '-'} / task {pub.get('task') or '-'} / name {pub.get('name')} / "
                         f"v{pub.get('version') if pub.get('version') is not None else '-'} / {pub.get('publish_type')}")
        else:
            lines.append("  publish:   none (the template has no publishes rule)")
        if res.get("frame") is not None or res.get("pattern") not in (None, res.get("relative_path")):
            lines.append(f"  frame:     {res.get('frame')}   sequence: {one_line(str(res.get('pattern')))}")
        if res.get("frames_on_disk"):
            lines.append(f"  on disk:   {res['frames_on_disk']}"
                         + (f", missing {res['missing_frames']}" if res.get("missing_frames") else ", no holes"))
        if res.get("stray_frames"):
            lines.append(f"  strays:    {', '.join(map(str, res['stray_frames']))} (too far from the rest: left out of "
                         f"the sequence's publish)")
    else:
        if res.get("closest"):
            lines.append(f"  closest:   {res['closest']}")
        if res.get("ambiguous"):
            lines.append(f"  ambiguous: {', '.join(res['ambiguous'])}")
        lines.append(f"  {'refused:   ' if res.get('refused') else 'no match:  '}{one_line(str(res.get('reason')))}")
    return "\n".join(lines)
