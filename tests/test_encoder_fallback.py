"""Non-BERT-like encoders take the eager-attention fallback path and still work end to end."""

from __future__ import annotations

import torch

from conftest import tiny_config
from glidre_core import GLiDRE, parse_document

TINY_DISTILBERT = {
    "model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64,
    "vocab_size": 30522, "max_position_embeddings": 512,
}


def test_distilbert_encoder_uses_eager_fallback_and_predicts():
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(encoder_config=TINY_DISTILBERT))
    assert not model.encoder.bert_like
    model.eval()
    doc = parse_document({"doc_id": "d", "text": "Marie Curie was born in Warsaw .", "entities": [
        {"id": "a", "mentions": [{"start": 0, "end": 11}]},
        {"id": "b", "mentions": [{"start": 24, "end": 30}]},
    ]})
    prepared = [model.prepare(doc)]
    labels = model.encode_labels(["place of birth", "country"])
    scores = model.score_documents(prepared, labels)[0]
    assert scores.logits.shape == (2, 2)
    # the attention used for localized context is a real probability distribution over the words
    encoded = model.encoder.encode([prepared[0].tokens])[0]
    rows = torch.cat([b.rows for b in encoded.attention])
    assert torch.all(rows >= 0) and torch.all(rows.sum(-1) <= 1 + 1e-5) and torch.all(rows.sum(-1) > 0.1)
