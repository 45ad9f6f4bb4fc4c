"""Head and encoder precision at inference: which dtype 'auto' picks, and what bf16 heads (and a
bf16 encoder) change."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from glidre_core import GLiDRE, parse_document
from glidre_core.cli import main
from glidre_core.modeling import precision
from glidre_core.modeling.precision import encoder_dtype, head_dtype

from conftest import tiny_config

TEXT = "Anna Schmidt works for Siemens in Munich and lives near Augsburg with Paul Weber ."
NAMES = ["Anna Schmidt", "Siemens", "Munich", "Augsburg", "Paul Weber"]
LABELS = ["employer", "residence", "spouse", "located in"]


def _doc():
    ents = []
    for i, n in enumerate(NAMES):
        s = TEXT.index(n)
        ents.append({"id": f"e{i}", "mentions": [{"start": s, "end": s + len(n)}]})
    return parse_document({"doc_id": "d", "text": TEXT, "entities": ents})


def test_explicit_precisions_and_unknown_name():
    cpu = torch.device("cpu")
    assert head_dtype("float32", cpu) is torch.float32
    assert head_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown head precision 'half'"):
        head_dtype("half", cpu)


@pytest.mark.parametrize("native", [True, False])
def test_auto_uses_bf16_only_where_the_cpu_has_it(monkeypatch, native):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    assert head_dtype("auto", torch.device("cpu")) is (torch.bfloat16 if native else torch.float32)


def test_cpu_flag_detection_reads_cpuinfo():
    flags = open("/proc/cpuinfo").read()
    assert precision.cpu_has_native_bf16() == ("avx512_bf16" in flags or "amx_bf16" in flags)


def _logits(model: GLiDRE, prec: str | None = None) -> torch.Tensor:
    if prec is not None:
        model.config.head_precision = prec
    batch, _ = model.collate([model.prepare(_doc())])
    labels = model.encode_labels(LABELS)
    with torch.no_grad():
        return model(batch, labels).relation_logits


def test_bf16_heads_are_close_to_fp32_and_return_fp32():
    torch.manual_seed(4)
    model = GLiDRE(tiny_config(hidden_size=32))
    model.eval()
    full = _logits(model, "float32")
    half = _logits(model, "bfloat16")
    assert full.dtype == half.dtype == torch.float32
    assert full.shape == half.shape == (20, 4)
    diff = (full - half).abs().max()
    assert 0 < float(diff) < 0.05 * float(full.abs().max()) + 1e-3  # rounded, not a different function
    assert torch.allclose(torch.sigmoid(full), torch.sigmoid(half), atol=0.01)


def test_bf16_span_head_is_close_to_fp32_and_returns_fp32():
    torch.manual_seed(4)
    model = GLiDRE(tiny_config(hidden_size=32, span_head=True, max_span_width=4))
    model.eval()
    batch, _ = model.collate([model.prepare(_doc())])
    types = model.encode_entity_types(["person", "organization", "location"])
    out = {}
    for prec in ("float32", "bfloat16"):
        model.config.head_precision = prec
        with torch.no_grad():
            out[prec] = model(batch, None, types).span_logits
    full, half = out["float32"], out["bfloat16"]
    assert full.dtype == half.dtype == torch.float32
    assert full.shape == half.shape == (1, len(batch.span_grid), 3)
    diff = (full - half).abs().max()
    assert 0 < float(diff) < 0.05 * float(full.abs().max()) + 1e-3
    assert torch.allclose(torch.sigmoid(full), torch.sigmoid(half), atol=0.01)


def test_encoder_precision_resolution(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert encoder_dtype("float32", cuda) is torch.float32
    assert encoder_dtype("bfloat16", cpu) is torch.bfloat16
    with pytest.raises(ValueError, match="unknown encoder precision 'half'"):
        encoder_dtype("half", cpu)
    # auto: fp32 on the CPU even where it has native bf16 (the evaluated numbers stay exact) ...
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert encoder_dtype("auto", cpu) is torch.float32
    assert head_dtype("auto", cpu) is torch.bfloat16  # ... unlike the heads
    # ... and bf16 on a GPU that has it
    for supported in (True, False):
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: supported)
        expected = torch.bfloat16 if supported else torch.float32
        assert encoder_dtype("auto", cuda) is expected
        assert head_dtype("auto", cuda) is expected
    assert head_dtype("auto", torch.device("meta")) is torch.float32


def test_bf16_encoder_is_close_to_fp32_and_only_at_inference():
    torch.manual_seed(4)
    model = GLiDRE(tiny_config(hidden_size=32))
    model.eval()
    full = _logits(model)
    batch, _ = model.collate([model.prepare(_doc())])
    with torch.no_grad():
        words_full = model.encode(batch).words
    model.config.encoder_precision = "bfloat16"
    half = _logits(model)
    with torch.no_grad():
        words_half = model.encode(batch).words
    # the heads get fp32 word vectors back whatever the encoder ran in
    assert words_half.dtype == full.dtype == half.dtype == torch.float32
    assert 0 < float((words_full - words_half).abs().max()) < 0.1 * float(words_full.abs().max())
    assert 0 < float((full - half).abs().max()) < 0.05 * float(full.abs().max()) + 1e-3
    # training follows the trainer's own bf16 flag, not encoder_precision
    model.train()
    torch.manual_seed(0)
    a = model.encode(batch).words
    model.config.encoder_precision = "float32"
    torch.manual_seed(0)
    b = model.encode(batch).words
    assert torch.equal(a, b)


def test_training_mode_ignores_head_precision():
    torch.manual_seed(4)
    model = GLiDRE(tiny_config(hidden_size=32))
    model.train()
    torch.manual_seed(0)  # the same dropout masks in both runs
    a = _logits(model, "float32")
    torch.manual_seed(0)
    b = _logits(model, "bfloat16")
    assert torch.equal(a, b)


def test_evaluate_cli_records_the_head_dtype(tmp_path):
    torch.manual_seed(5)
    model = GLiDRE(tiny_config())
    model.save_pretrained(tmp_path / "m")
    data = tmp_path / "d.jsonl"
    ents = [{"id": e.id, "mentions": [{"start": m.start, "end": m.end} for m in e.mentions]} for e in _doc().entities]
    row = {"doc_id": "d", "text": TEXT, "entities": ents,
           "relations": [{"head": "e0", "label": "employer", "tail": "e1"}]}
    data.write_text(json.dumps(row) + "\n")
    for prec, expected in [("float32", "float32"), ("bfloat16", "bfloat16")]:
        out = tmp_path / f"{prec}.json"
        res = CliRunner().invoke(main, ["evaluate", "--model", str(tmp_path / "m"), "--data", str(data),
                                        "--format", "jsonl", "--head-precision", prec, "--encoder-precision", prec,
                                        "--output-json", str(out)])
        assert res.exit_code == 0, res.output + repr(res.exception)
        got = json.loads(out.read_text())
        assert got["head_dtype"] == got["encoder_dtype"] == expected


def test_bf16_head_copies_are_cached_refreshed_and_never_saved():
    torch.manual_seed(6)
    model = GLiDRE(tiny_config(hidden_size=32, head_precision="bfloat16"))
    model.eval()
    keys = set(model.state_dict())
    cpu = torch.device("cpu")
    scorer, span_head, precision = model._inference_heads(cpu)
    assert scorer is not model.scorer and span_head is None  # the tiny model has no span head
    with precision:  # bf16 autocast casts the fp32 activations for the bf16 weights
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") is torch.bfloat16
    assert all(p.dtype is torch.bfloat16 and not p.requires_grad for p in scorer.parameters())
    assert model._inference_heads(cpu)[0] is scorer  # cached
    before = _logits(model, "bfloat16")
    with torch.no_grad():  # what an optimizer step or load_weights does: an in-place update
        model.scorer.pair_ffn[0].weight.mul_(-1)
    fresh = model._inference_heads(cpu)[0]
    assert fresh is not scorer
    assert torch.equal(fresh.pair_ffn[0].weight, model.scorer.pair_ffn[0].weight.to(torch.bfloat16))
    after = _logits(model, "bfloat16")
    assert not torch.allclose(before, after)
    # matches fp32 on the updated weights: the refreshed copy is really in use
    assert torch.allclose(torch.sigmoid(after), torch.sigmoid(_logits(model, "float32")), atol=0.01)
    assert set(model.state_dict()) == keys  # the copies are not parameters of the model
    model.train()
    scorer, _, precision = model._inference_heads(cpu)
    assert scorer is model.scorer
    with precision:
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_encoder_is_a_cached_cast_copy_run_without_autocast():
    """In bf16 the encoder runs as a bf16 copy (no per-batch autocast casts): cached, refreshed
    when the weights change, sharing the tokenizer, never saved; fp32 and training use the
    module itself."""
    torch.manual_seed(7)
    model = GLiDRE(tiny_config(hidden_size=32, encoder_precision="bfloat16"))
    model.eval()
    keys = set(model.state_dict())
    cpu = torch.device("cpu")
    enc = model.inference_encoder(cpu)
    assert enc is not model.encoder and enc.tokenizer is model.encoder.tokenizer
    assert all(p.dtype is torch.bfloat16 and not p.requires_grad for p in enc.parameters())
    assert all(p.dtype is torch.float32 for p in model.encoder.parameters())
    assert model.inference_encoder(cpu) is enc  # cached
    batch, _ = model.collate([model.prepare(_doc())])
    seen = []
    hook = enc.model.encoder.layer[0].register_forward_hook(
        lambda m, i, o: seen.append((torch.is_autocast_enabled("cpu"), (o[0] if isinstance(o, tuple) else o).dtype)))
    with torch.no_grad():
        words = model.encode(batch).words
    hook.remove()
    assert seen == [(False, torch.bfloat16)] and words.dtype is torch.float32
    before = _logits(model)
    with torch.no_grad():  # an optimizer step or load_weights: an in-place update
        model.encoder.model.encoder.layer[0].output.dense.weight.mul_(-1)
    assert model.inference_encoder(cpu) is not enc
    assert not torch.allclose(before, _logits(model))
    assert set(model.state_dict()) == keys
    model.config.encoder_precision = "float32"
    assert model.inference_encoder(cpu) is model.encoder
    model.config.encoder_precision = "bfloat16"
    model.train()
    assert model.inference_encoder(cpu) is model.encoder


@pytest.mark.parametrize("slot", ["head_precision", "encoder_precision"])
def test_cast_copies_follow_a_fused_optimizer_step(slot):
    """torch's fused AdamW updates weights without bumping their version counters, so the cache
    key alone cannot see the step: entering training mode drops the copies. Without that, every
    dev evaluation of a training run after the first scored with the first one's bf16 heads."""
    torch.manual_seed(8)
    from glidre_core.modeling.targets import joint_loss, training_batch

    model = GLiDRE(tiny_config(hidden_size=32, **{slot: "bfloat16"}))
    model.eval()
    _logits(model)  # builds and caches the bf16 copies, as a dev evaluation does
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=0.05, fused=True)
    versions = [p._version for p in params]
    model.train()
    doc = parse_document({**_doc().model_dump(), "relations": [{"head": "e0", "tail": "e1", "label": "employer"}]})
    batch = training_batch(model, [model.prepare(doc)], LABELS, None)
    joint_loss(model, batch, model(batch, model.encode_labels(LABELS))).backward()
    optimizer.step()
    assert [p._version for p in params] == versions  # the step the cache key cannot see
    model.eval()
    after_step = _logits(model)
    fresh = GLiDRE(model.config)
    fresh.load_state_dict(model.state_dict())
    fresh.eval()
    assert torch.equal(after_step, _logits(fresh))
