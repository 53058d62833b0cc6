"""Bad template files: a hard error names the file, the entry and (for YAML) the line; an entry
we cannot use is a warning, once, and the rest of the file still loads."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from watcher.errors import ConfigError, TemplateError
from watcher.match import load_templates

KEYS = """
keys:
  Shot: {type: str}
  name: {type: str, filter_by: alphanumeric}
  version: {type: int, format_spec: "03"}
  version_four: {type: int, format_spec: "04", alias: version}
  SEQ: {type: sequence, format_spec: "04"}
"""


def write(tmp_path: Path, body: str, name: str = "templates.yml") -> Path:
    f = tmp_path / name
    f.write_text(textwrap.dedent(body), encoding="utf-8")
    return f


def load_error(tmp_path: Path, body: str) -> str:
    f = write(tmp_path, body)
    with pytest.raises(TemplateError) as e:
        load_templates(f)
    assert isinstance(e.value, ConfigError)  # exit code 2 at start-up
    msg = str(e.value)
    assert str(f) in msg, msg
    return msg


def test_yaml_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    msg = load_error(tmp_path, KEYS + "paths:\n  a: 'x/{name}.nk'\n   b: [unclosed\n")
    assert "YAML syntax error" in msg
    assert re.search(r"line 10\b", msg), msg


def test_undefined_key_names_the_template_and_key(tmp_path: Path) -> None:
    msg = load_error(tmp_path, KEYS + "paths:\n  ok: 'x/{name}.nk'\n  comp_pub: 'shots/{Shot}/{Stpe}/{name}.nk'\n")
    assert "comp_pub" in msg and "{Stpe}" in msg and "line 10" in msg


def test_undefined_key_through_a_reference(tmp_path: Path) -> None:
    msg = load_error(tmp_path, KEYS + "paths:\n  root: 'shots/{Shot}/{Step}'\n  pub: '@root/{name}.nk'\n")
    assert "{Step}" in msg and ("root" in msg or "pub" in msg)


def test_bad_key_type_names_the_key(tmp_path: Path) -> None:
    msg = load_error(tmp_path, KEYS + "  fps: {type: float}\npaths:\n  a: 'x/{name}.nk'\n")
    assert "fps" in msg and "float" in msg and "str, int, sequence, timestamp" in msg


def test_key_without_type_names_the_key(tmp_path: Path) -> None:
    msg = load_error(tmp_path, KEYS + "  take: {format_spec: '03'}\npaths: {}\n")
    assert "take" in msg and "no type" in msg


def test_one_field_filled_by_two_key_types(tmp_path: Path) -> None:
    msg = load_error(tmp_path, KEYS + "paths:\n  both: 'x/v{version}/{name}.v{version_four}.nk'\n")
    assert "both" in msg and "version_four" in msg and "'version'" in msg


def test_key_defined_twice(tmp_path: Path) -> None:
    msg = load_error(tmp_path, KEYS + "  Shot: {type: int}\npaths: {}\n")
    assert "Shot" in msg and "twice" in msg and "lines 3 and 8" in msg


@pytest.mark.parametrize("key,words", [
    ("{type: int, format_spec: 'x3'}", ("bad", "format_spec")),
    ("{type: str, filter_by: '([a-z'}", ("bad", "filter_by")),
    ("{type: int, strict_matching: true}", ("bad", "strict_matching")),
    ("{type: str, choices: [a, b], default: c}", ("bad", "default")),
    ("{type: timestamp, format_spec: '%Y/%m'}", ("bad", "/")),
])
def test_bad_key_options(tmp_path: Path, key: str, words: tuple[str, ...]) -> None:
    msg = load_error(tmp_path, KEYS + f"  bad: {key}\npaths: {{}}\n")
    for w in words:
        assert w in msg, msg


def test_not_a_mapping(tmp_path: Path) -> None:
    msg = load_error(tmp_path, "- just\n- a list\n")
    assert "mapping" in msg


def test_missing_file() -> None:
    with pytest.raises(TemplateError, match="cannot read"):
        load_templates(Path("/nonexistent/templates.yml"))


@pytest.mark.parametrize("rule,words", [
    ("{entiy: Shot}", ("pub", "entiy")),
    ("{entity: {typ: Shot}}", ("pub", "entity")),
    ("[Shot]", ("pub", "mapping")),
    ("{name: '{Shot}[_{name}'}", ("pub", "never closed")),
])
def test_malformed_publishes_rule(tmp_path: Path, rule: str, words: tuple[str, ...]) -> None:
    msg = load_error(tmp_path, KEYS + f"paths:\n  pub: 'x/{{Shot}}/{{name}}.nk'\npublishes:\n  pub: {rule}\n")
    for w in words:
        assert w in msg, msg


def test_broken_entries_are_warnings_reported_once(tmp_path: Path) -> None:
    f = write(tmp_path, KEYS + """\
  odd: {type: str, subset: '(.)', abstract: true}
paths:
  good: 'x/{Shot}/{name}.v{version}.nk'
  uses_odd_1: 'odd/{odd}/a.nk'
  uses_odd_2: 'odd/{odd}/b.nk'
  bad_ref: '@nothing/{name}.nk'
  cycle_a: '@cycle_b/a'
  cycle_b: '@cycle_a/b'
  unbalanced: 'x/{name}].nk'
  empty_section: 'x/{name}[_v].nk'
  no_definition: {root_name: primary}
  absolute: '/abs/{name}.nk'
  good: 'x/{Shot}/{name}.v{version}.nk'
strings:
  label: '{Shot} v{version}'
publishes:
  good: {entity: {type: Shot, key: Shot}}
  missing_template: {type: Plate}
  uses_odd_*: {entity: {type: Shot, key: Shot}}
top_level_thing: 1
""")
    ts = load_templates(f)
    w = ts.warnings
    assert len(w) == len(set(w)), w
    expect = {
        "key odd": ("subset",), "key odd:": ("abstract",), "bad_ref": ("@nothing",), "cycle_a": ("cyclic",), "cycle_b": ("cyclic",),
        "unbalanced": ("]",), "empty_section": ("must contain a key",), "no_definition": ("definition",),
        "absolute": ("relative",), "'good'": ("twice",), "missing_template": ("no loaded template",),
        "uses_odd_1": ("Shot",), "uses_odd_2": ("Shot",), "top_level_thing": ("not supported",),
    }
    for entry, words in expect.items():
        hits = [x for x in w if entry in x and all(word in x for word in words)]
        assert hits, (entry, w)
    assert len([x for x in w if "key odd:" in x]) == 2  # one per ignored option, not one per use
    assert all(str(f) in x for x in w)
    assert ts.names == ["good", "uses_odd_1", "uses_odd_2"]
    assert ts.match("x/sh010/main.v001.nk").publish.entity_name == "sh010"
    m = ts.match("odd/anything/a.nk")
    assert m and m.publish is None and "Shot" in ts.explain("odd/anything/a.nk")["note"]


def test_includes_merge_and_missing_include_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, KEYS, "keys.yml")
    f = write(tmp_path, "include: keys.yml\npaths:\n  a: 'x/{Shot}/{name}.v{version}.nk'\n")
    assert load_templates(f).match("x/sh010/main.v001.nk").template == "a"
    g = write(tmp_path, "include: nope.yml\npaths: {}\n", "other.yml")
    with pytest.raises(TemplateError, match="nope.yml"):
        load_templates(g)
