"""The shared ``{label: value}`` loader behind label phrasings and label descriptions."""

from pathlib import Path

import pytest

from glidre_core.label_mapping import load_label_mapping


def _upper(value: object) -> str | None:
    return value.upper() if isinstance(value, str) else None


def test_named_set_json_and_yaml_load_through_convert(tmp_path: Path):
    as_json = tmp_path / "m.json"
    as_json.write_text('{"spouse": "married to"}')
    as_yaml = tmp_path / "m.yaml"
    as_yaml.write_text("spouse: married to\n")
    named = {"mine": as_json}
    for source in ("mine", as_json, as_yaml):
        assert load_label_mapping(source, named, "test mapping", _upper, "a string") == {"spouse": "MARRIED TO"}


@pytest.mark.parametrize("name,text,message", [
    ("bad.json", "{not json", r"test mapping .*bad\.json: not valid JSON"),
    ("bad.yaml", "a: [b\n", r"test mapping .*bad\.yaml: not valid YAML"),
    ("list.yaml", "- spouse\n", r"list\.yaml: expected a mapping of label to a string"),
    ("value.yaml", "spouse: 3\n", r"value\.yaml: entry 'spouse' must map a label to a string"),
    ("key.json", '{" ": "x"}', r"key\.json: entry ' ' must map"),
])
def test_malformed_files_name_the_file_and_entry(tmp_path: Path, name: str, text: str, message: str):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_label_mapping(path, {}, "test mapping", _upper, "a string")


def test_missing_source_lists_the_named_sets(tmp_path: Path):
    with pytest.raises(ValueError, match=r"no such file \(named sets: \['a', 'b'\]\)"):
        load_label_mapping(tmp_path / "nope.json", {"b": tmp_path, "a": tmp_path}, "test mapping", _upper, "x")
