"""Path templates and matching: Toolkit-compatible ``templates.yml`` files (keys, paths with
``@refs`` and optional ``[sections]``, strings) plus our ``publishes:`` rules.

    ts = load_templates(Path("templates/studio.yml"))   # raises TemplateError
    m = ts.match("sequences/sq01/sh010/comp/publish/renders/beauty/v003/beauty.1001.exr")
    if m: m.template, m.fields, m.frame, m.pattern, m.publish
    else: m.reason, m.closest, m.ambiguous
"""
from __future__ import annotations

from . import keys
from .loader import load_templates
from .matcher import Match, Miss, TemplateSet
from .publish import PublishRule, PublishSpec

__all__ = ["load_templates", "TemplateSet", "Match", "Miss", "PublishRule", "PublishSpec", "keys"]
