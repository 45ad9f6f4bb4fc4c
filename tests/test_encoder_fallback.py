"""Non-BERT-like encoders take the eager-attention fallback path and still work end to end."""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_config
from glidre_core import GLiDRE, parse_document

TINY_DISTILBERT = {
    "model_type": "distilbert", "dim": 32, "n_layers": 2, "n_heads": 2, "hidden_dim": 64,
    "vocab_size": 30522, "max_position_embeddings": 512,
}
TEXT = ("Marie Curie was born in Warsaw . She later worked in Paris with Pierre Curie and won "
        "two Nobel prizes .")


def _doc(doc_id: str = "d", text: str = TEXT, names=("Marie Curie", "Warsaw")):
    ents = [{"id": str(i), "mentions": [{"start": text.index(n), "end": text.index(n) + len(n)}]}
            for i, n in enumerate(names)]
    return parse_document({"doc_id": doc_id, "text": text, "entities": ents})


def _model(**overrides) -> GLiDRE:
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(encoder_config=TINY_DISTILBERT, **overrides))
    model.eval()
    return model


def test_distilbert_encoder_uses_eager_fallback_and_predicts():
    model = _model()
    assert not model.encoder.bert_like
    assert model.encoder.model.config._attn_implementation == "eager"
    prepared = [model.prepare(_doc())]
    labels = model.encode_labels(["place of birth", "country"])
    batch, _ = model.collate(prepared)
    with torch.no_grad():
        out = model(batch, labels)
    assert out.relation_logits.shape == (2, 2)
    assert torch.isfinite(out.relation_logits).all()
    rows = model.predict_documents([_doc()], ["place of birth", "country"], threshold=1e-9)[0]
    assert {(r["head_id"], r["tail_id"]) for r in rows} == {("0", "1"), ("1", "0")}
    assert len(rows) == 4
    # the attention used for localized context is a real probability distribution over the words
    with torch.no_grad():
        _, att = model.encoder(batch)
    rows_ = att[0]
    assert torch.all(rows_ >= 0) and torch.all(rows_.sum(-1) <= 1 + 1e-5) and torch.all(rows_.sum(-1) > 0.1)


def test_fallback_on_windows_matches_the_model_run_per_window():
    """Several windows and a padded batch through the fallback: the word vectors and word
    attention are those of the HF model run on each window alone, stitched with loops."""
    model = _model(max_length=16, window_overlap=4)
    prepared = [model.prepare(_doc("a")), model.prepare(_doc("b", "Bern lies in Switzerland .", ("Bern", "Switzerland")))]
    assert len(prepared[0].tokens.windows) > 1
    batch, _ = model.collate(prepared)
    assert not bool(batch.key_mask.all())
    with torch.no_grad():
        words, att = model.encoder(batch)
    cls_id, sep_id, _ = model.encoder.special_ids
    for b, p in enumerate(prepared):
        t = p.tokens
        n = t.num_words
        token_word = {}
        for w in range(n):
            for k in range(t.word_first_token[w], t.word_token_end[w]):
                token_word[k] = w
        ref_words = torch.zeros(n, words.shape[-1])
        ref_att = torch.zeros(n, n)
        for win in t.windows:
            ids = [cls_id] + t.token_ids[win.tok_start : win.tok_end] + [sep_id]
            with torch.no_grad():
                out = model.encoder.model(input_ids=torch.tensor([ids]), output_attentions=True)
            hidden, a = out.last_hidden_state[0], out.attentions[-1][0].float().mean(0)
            for w in range(n):
                first = t.word_first_token[w]
                if win.own_start <= first < win.own_end:
                    pos = first - win.tok_start + 1
                    ref_words[w] = hidden[pos]
                    for k in range(win.tok_start, win.tok_end):
                        ref_att[w, token_word[k]] += a[pos, k - win.tok_start + 1]
        torch.testing.assert_close(words[b, :n], ref_words, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(att[b, :n, :n], ref_att, atol=1e-6, rtol=1e-5)
        assert float(att[b, :, n:].abs().sum()) == 0.0 and float(words[b, n:].abs().sum()) == 0.0


def test_fallback_encoder_cannot_split_layers():
    model = _model()
    batch, _ = model.collate([model.prepare(_doc())])
    with pytest.raises(ValueError, match="BERT-like"):
        model.encoder.lower(batch, 1)
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="encoder.layer"):  # DistilBERT names its layers transformer.layer
        GLiDRE(tiny_config(encoder_config=TINY_DISTILBERT, trainable_encoder_layers=1))


TINY_MPNET = {
    "model_type": "mpnet", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
    "intermediate_size": 64, "vocab_size": 30527, "max_position_embeddings": 514,
    "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
}


def test_mpnet_encoder_without_sdpa_loads_eager_freezes_layers_and_trains():
    """MPNet (the offline 109M encoder) has no SDPA path in transformers: it loads with eager
    attention, takes the generic path, and still freezes its embeddings and lower layers."""
    torch.manual_seed(0)
    model = GLiDRE(tiny_config(encoder_config=TINY_MPNET, trainable_encoder_layers=1, span_head=True,
                               entity_labels=["person", "location"]))
    assert model.encoder.layered and not model.encoder.bert_like
    assert model.encoder.model.config._attn_implementation == "eager"
    enc = model.encoder.model
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.encoder.layer[1].parameters())
    model.eval()
    rows = model.predict_documents([_doc()], ["place of birth"], threshold=1e-9)[0]
    assert {(r["head_id"], r["tail_id"]) for r in rows} == {("0", "1"), ("1", "0")}
    out = model.extract(TEXT, entity_labels=["person", "location"], relation_labels=["place of birth"])
    assert set(out) >= {"entities", "relations"}
    # gradients reach the trainable top layer only
    model.train()
    batch, _ = model.collate([model.prepare(_doc())])
    model(batch, model.encode_labels(["place of birth"])).relation_logits.sum().backward()
    assert all(p.grad is None for p in enc.encoder.layer[0].parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in enc.encoder.layer[1].parameters())
    # all layers + frozen embeddings also builds
    torch.manual_seed(0)
    full = GLiDRE(tiny_config(encoder_config=TINY_MPNET, freeze_embeddings=True))
    assert not any(p.requires_grad for p in full.encoder.model.embeddings.parameters())
    assert all(p.requires_grad for p in full.encoder.model.encoder.layer[0].parameters())
