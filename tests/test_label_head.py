"""The label map options for zero-shot transfer (GLiDREConfig.label_head / label_anchor_weight /
label_noise): what each promises, checked on tiny random-weight models."""

from __future__ import annotations

import torch

from glidre_core import GLiDRE
from conftest import tiny_config

LABELS = ["founded by", "country", "member of sports team", "spouse"]


def _pooled(model: GLiDRE, labels: list[str]) -> torch.Tensor:
    enc = model.label_encoder
    return enc.projection(enc.pooled([model.config.normalize_label(lab) for lab in labels]))


def test_residual_head_starts_as_the_sentence_embedding():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(label_head="residual")).eval()
    with torch.no_grad():
        vectors = model.encode_labels(LABELS).vectors
        assert torch.allclose(vectors, _pooled(model, LABELS))
        assert model.label_anchor_penalty(LABELS).item() == 0.0


def test_ffn_head_is_unchanged_and_far_from_the_sentence_embedding():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config()).eval()
    with torch.no_grad():
        vectors = model.encode_labels(LABELS).vectors
        assert torch.allclose(vectors, model.label_encoder.ffn(_pooled(model, LABELS)))
        assert model.label_anchor_penalty(LABELS).item() > 0.1


def test_anchor_penalty_measures_the_relative_move_and_has_gradients():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(label_head="residual")).eval()
    with torch.no_grad():
        model.label_encoder.ffn[3].bias.fill_(0.5)
    x = _pooled(model, LABELS).detach()
    expected = (0.25 * x.shape[-1]) / x.pow(2).sum(-1).mean()
    penalty = model.label_anchor_penalty(LABELS)
    assert torch.allclose(penalty, expected, rtol=1e-5)
    penalty.backward()
    assert model.label_encoder.ffn[3].bias.grad is not None
    assert model.label_encoder.ffn[3].bias.grad.abs().sum() > 0


def test_label_noise_only_in_training():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(label_head="residual", label_noise=0.5))
    model.eval()
    with torch.no_grad():
        a = model.encode_labels(LABELS).vectors
        b = model.encode_labels(LABELS).vectors
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c = model.encode_labels(LABELS).vectors
    assert not torch.allclose(a, c)


def test_residual_head_round_trips(tmp_path):
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(label_head="residual", label_anchor_weight=0.3)).eval()
    with torch.no_grad():
        model.label_encoder.ffn[3].weight.normal_()
        before = model.encode_labels(LABELS).vectors
    model.save_pretrained(tmp_path / "m")
    loaded = GLiDRE.from_pretrained(tmp_path / "m").eval()
    assert loaded.config.label_head == "residual" and loaded.config.label_anchor_weight == 0.3
    with torch.no_grad():
        assert torch.allclose(loaded.encode_labels(LABELS).vectors, before, atol=1e-6)
