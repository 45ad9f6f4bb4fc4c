"""save_pretrained / from_pretrained: safetensors only, strict, offline, config round trip."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from glidre_core import GLiDRE, GLiDREConfig
from glidre_core.model_loading import load_model
from glidre_core.modeling.persistence import WEIGHTS_NAME

from conftest import tiny_config

TEXT = "Angela Merkel was born in Hamburg , Germany , and led the CDU in Berlin ."
NAMES = ["Angela Merkel", "Hamburg", "Germany", "CDU", "Berlin"]
ENTITIES = [
    {"id": f"e{i}", "mentions": [{"start": TEXT.index(n), "end": TEXT.index(n) + len(n)}]}
    for i, n in enumerate(NAMES)
]
LABELS = ["place of birth", "country", "member of political party"]


def _rows(model: GLiDRE, threshold=1e-6):
    return model.predict_relations(TEXT, ENTITIES, LABELS, threshold=threshold)


def _scores(rows):
    return {(r["head_id"], r["relation"], r["tail_id"]): r["score"] for r in rows}


@pytest.fixture
def trained_tiny(tmp_path) -> tuple[GLiDRE, Path]:
    torch.manual_seed(11)
    cfg = tiny_config(threshold=0.37, labels=["Country", "place of birth"], label_casing="preserve",
                      pooling="logsumexp", max_length=32, window_overlap=8)
    model = GLiDRE(cfg)
    model.eval()
    out = tmp_path / "saved"
    model.save_pretrained(out)
    return model, out


def test_round_trip_predictions_and_config(trained_tiny):
    model, path = trained_tiny
    loaded = GLiDRE.from_pretrained(path)
    assert not loaded.training
    cfg = loaded.config
    assert cfg.threshold == 0.37
    assert cfg.labels == ["Country", "place of birth"]
    assert cfg.label_casing == "preserve"
    assert cfg.pooling == "logsumexp"
    assert (cfg.max_length, cfg.window_overlap) == (32, 8)
    assert cfg.model_dump() == model.config.model_dump()
    a, b = _scores(_rows(model)), _scores(_rows(loaded))
    assert len(a) == 5 * 4 * 3
    assert a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-6)
    # every tensor identical (float32 save dtype)
    own, other = model.state_dict(), loaded.state_dict()
    assert own.keys() == other.keys()
    assert all(torch.equal(own[k], other[k]) for k in own)
    # the stored labels are used when none are given, with the stored threshold
    rows = loaded.predict_relations(TEXT, ENTITIES)
    assert {r["relation"] for r in rows} <= {"Country", "place of birth"}
    assert all(r["score"] > 0.37 for r in rows)


def test_load_model_resolves_directories(trained_tiny):
    model, path = trained_tiny
    loaded = load_model(str(path))
    assert loaded.config.threshold == 0.37
    with pytest.raises(FileNotFoundError):
        load_model(str(path / "nope"))


def test_saved_file_is_safetensors_not_pickle(trained_tiny):
    _, path = trained_tiny
    files = sorted(p.name for p in path.iterdir())
    assert files == ["config.json", WEIGHTS_NAME]
    raw = (path / WEIGHTS_NAME).read_bytes()
    assert not raw.startswith(b"PK") and not raw.startswith(b"\x80")  # not a torch zip / pickle
    (header_len,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + header_len])
    assert header["__metadata__"]["glidre"] == "delta"
    assert all(v["dtype"] == "F32" for k, v in header.items() if k != "__metadata__")
    with safe_open(str(path / WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
    assert "scorer.pair_ffn.0.weight" in keys
    # random encoders have no pip base: they are stored in full
    assert any(k.startswith("encoder.model.embeddings") for k in keys)
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["threshold"] == 0.37 and cfg["encoder_sha256"] is None


def test_save_dtype_bfloat16(tmp_path):
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(save_dtype="bfloat16"))
    model.eval()
    model.save_pretrained(tmp_path / "m")
    stored = load_file(str(tmp_path / "m" / WEIGHTS_NAME))
    assert {v.dtype for v in stored.values() if v.is_floating_point()} == {torch.bfloat16}
    loaded = GLiDRE.from_pretrained(tmp_path / "m")
    assert next(loaded.parameters()).dtype == torch.float32
    a, b = _scores(_rows(model)), _scores(_rows(loaded))
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=0.05)


def _rewrite(path: Path, edit) -> None:
    wpath = path / WEIGHTS_NAME
    tensors = load_file(str(wpath))
    edit(tensors)
    save_file(tensors, str(wpath), metadata={"format": "pt", "glidre": "delta"})


def test_missing_tensor_fails(trained_tiny):
    _, path = trained_tiny
    _rewrite(path, lambda t: t.pop("scorer.pair_ffn.0.weight"))
    with pytest.raises(ValueError, match=r"missing tensors.*scorer\.pair_ffn\.0\.weight"):
        GLiDRE.from_pretrained(path)


def test_unexpected_tensor_fails(trained_tiny):
    _, path = trained_tiny
    _rewrite(path, lambda t: t.__setitem__("scorer.extra.weight", torch.zeros(2)))
    with pytest.raises(ValueError, match=r"unexpected tensors.*scorer\.extra\.weight"):
        GLiDRE.from_pretrained(path)


def test_wrong_shape_fails(trained_tiny):
    _, path = trained_tiny
    _rewrite(path, lambda t: t.__setitem__("scorer.pair_ffn.0.weight", torch.zeros(3, 3)))
    with pytest.raises(ValueError, match=r"scorer\.pair_ffn\.0\.weight has shape \(3, 3\)"):
        GLiDRE.from_pretrained(path)


def test_missing_config_fails(trained_tiny):
    _, path = trained_tiny
    (path / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        GLiDRE.from_pretrained(path)


def test_missing_weights_or_directory_fails(trained_tiny, tmp_path):
    _, path = trained_tiny
    with pytest.raises(FileNotFoundError, match="not found"):
        GLiDRE.from_pretrained(tmp_path / "does-not-exist")
    (path / WEIGHTS_NAME).unlink()
    with pytest.raises(FileNotFoundError, match=WEIGHTS_NAME):
        GLiDRE.from_pretrained(path)


def test_unknown_config_key_fails(trained_tiny):
    _, path = trained_tiny
    cfg = json.loads((path / "config.json").read_text())
    cfg["surprise"] = 1
    (path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="surprise"):
        GLiDRE.from_pretrained(path)


# -- real MiniLM base: only the delta is stored ---------------------------------------------------

@pytest.mark.slow
def test_minilm_delta_save_and_round_trip(tmp_path):
    torch.manual_seed(0)
    model = GLiDRE(GLiDREConfig(trainable_encoder_layers=1, hidden_size=None, save_dtype="float32",
                                threshold=0.42))
    model.eval()
    last = model.encoder.model.encoder.layer[-1]
    with torch.no_grad():
        last.output.dense.weight.add_(0.01 * torch.randn_like(last.output.dense.weight))
        model.scorer.pair_ffn[0].bias.add_(0.1)
    model.save_pretrained(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / WEIGHTS_NAME), "pt") as f:
        keys = set(f.keys())
    assert "encoder.model.encoder.layer.5.output.dense.weight" in keys
    assert not any(k.startswith("encoder.model.embeddings") for k in keys)
    assert not any(k.startswith("encoder.model.encoder.layer.0.") for k in keys)
    assert not any(k.startswith("label_encoder.model.") for k in keys)
    assert {k for k in keys if k.startswith("encoder.model.")} == {
        "encoder.model.encoder.layer.5.output.dense.weight"
    }
    assert "scorer.pair_ffn.0.bias" in keys and "label_encoder.ffn.0.weight" in keys
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert len(cfg["encoder_sha256"]) == 64 and cfg["threshold"] == 0.42

    loaded = GLiDRE.from_pretrained(tmp_path / "m")
    assert torch.equal(loaded.encoder.model.encoder.layer[-1].output.dense.weight, last.output.dense.weight)
    a, b = _scores(_rows(model)), _scores(_rows(loaded))
    assert len(a) == 60 and a.keys() == b.keys()
    for k in a:
        assert b[k] == pytest.approx(a[k], abs=1e-6)

    # the default float16 save dtype: still only the delta, predictions close
    model.config.save_dtype = "float16"
    model.save_pretrained(tmp_path / "m16")
    with safe_open(str(tmp_path / "m16" / WEIGHTS_NAME), "pt") as f:
        assert set(f.keys()) == keys
        assert f.get_tensor("scorer.pair_ffn.0.weight").dtype == torch.float16
    half = _scores(_rows(GLiDRE.from_pretrained(tmp_path / "m16")))
    for k in a:
        assert half[k] == pytest.approx(a[k], abs=1e-2)

    cfg["encoder_sha256"] = "0" * 64
    (tmp_path / "m" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="sha256"):
        GLiDRE.from_pretrained(tmp_path / "m")


def test_freeze_embeddings_keeps_them_out_of_training(tmp_path):
    """``freeze_embeddings``: every layer trains, the word-piece embeddings do not; since the
    saved delta holds only tensors that differ from the base encoder, they then stay out of it
    (for MiniLM they are 23 MB in fp16, more than the rest of the default model)."""
    from conftest import tiny_config

    free = GLiDRE(tiny_config(trainable_encoder_layers=None))
    frozen = GLiDRE(tiny_config(trainable_encoder_layers=None, freeze_embeddings=True))
    assert any(p.requires_grad for p in free.encoder.model.embeddings.parameters())
    assert not any(p.requires_grad for p in frozen.encoder.model.embeddings.parameters())
    assert all(p.requires_grad for layer in frozen.encoder.model.encoder.layer for p in layer.parameters())
    emb = {id(p) for p in frozen.encoder.model.embeddings.parameters()}
    assert not emb & {id(p) for p in frozen.encoder_parameters()}
    assert {id(p) for p in free.encoder.model.embeddings.parameters()} <= {id(p) for p in free.encoder_parameters()}
    frozen.save_pretrained(tmp_path / "m")
    assert GLiDRE.from_pretrained(tmp_path / "m").config.freeze_embeddings


def test_weights_as_saved_scores_what_the_checkpoint_scores_and_restores(tmp_path):
    """Inside ``weights_as_saved`` the live model gives the reloaded float16 checkpoint's scores
    exactly, and leaves it with its full-precision weights (what the trainer's dev evaluation
    relies on to choose the model it writes)."""
    torch.manual_seed(5)
    model = GLiDRE(tiny_config(save_dtype="float16", trainable_encoder_layers=1))
    with torch.no_grad():  # weights a float16 round trip changes, as training leaves them
        for p in model.parameters():
            if p.requires_grad:
                p.add_(1e-3 * torch.randn_like(p))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    live = _scores(_rows(model))
    model.save_pretrained(tmp_path / "m")
    reloaded = _scores(_rows(GLiDRE.from_pretrained(tmp_path / "m")))
    assert live != reloaded  # the rounding is visible at full precision
    with model.weights_as_saved():
        as_saved = _scores(_rows(model))
        rounded = model.scorer.pair_ffn[0].weight
        assert torch.equal(rounded, rounded.half().float())
    assert as_saved == reloaded
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert _scores(_rows(model)) == live
    # base encoder tensors are not stored, so they are never rounded
    model.config.save_dtype = "float32"
    with model.weights_as_saved():
        assert _scores(_rows(model)) == live


def test_trainable_label_encoder_is_not_memoised():
    """A label encoder that trains must not serve embeddings cached before a step: every dev
    evaluation after the first would score stale labels."""
    model = GLiDRE(tiny_config(train_label_encoder=True))
    model.eval()
    first = model.encode_labels(LABELS).vectors.detach().clone()
    with torch.no_grad():
        for p in model.label_encoder.model.parameters():
            p.mul_(1.5)
    assert not torch.allclose(model.encode_labels(LABELS).vectors, first)
    frozen = GLiDRE(tiny_config())
    frozen.eval()
    frozen.encode_labels(LABELS)
    assert len(frozen.label_encoder._pooled_cache) == len(LABELS)  # a frozen one is memoised
    assert not model.label_encoder._pooled_cache
