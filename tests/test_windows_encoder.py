"""Sub-word windows (modeling/windows.py) and the document encoder (modeling/encoder.py).

The encoder recomputes only the last layer's attention by hand (the other layers run with SDPA);
these tests pin that hand computation to Hugging Face's eager attention, check that long
documents are windowed instead of truncated, and that cached frozen layers change nothing.
"""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import AutoModel

from glidre_core import GLiDRE, parse_document
from glidre_core.modeling.windows import plan_windows, tokenize_words
from glidre_core.pretrained import load_tokenizer
from glidre_core.text import split_words

from conftest import tiny_config

LONG_TEXT = (
    "Tokenization of Zürich's municipal archives began in 1998 , when the council of 東京 "
    "asked Dr. Hämäläinen to digitise everything . The unbelievably heterogeneous collection "
    "included maps , letters , photographs and recordings ; cataloguing them took eleven years "
    "and cost roughly 4.5 million francs . Finally the archive opened in Winterthur ."
)


# -- plan_windows -------------------------------------------------------------------------------

def _check_plan(n: int, body: int, overlap: int):
    wins = plan_windows(n, body, overlap)
    owners = [0] * n
    for w in wins:
        assert 0 <= w.tok_start < w.tok_end <= n
        assert w.tok_start <= w.own_start < w.own_end <= w.tok_end  # owns only what it encodes
        assert w.tok_end - w.tok_start == min(body, n)
        for t in range(w.own_start, w.own_end):
            owners[t] += 1
    assert owners == [1] * n  # every token owned exactly once
    # own ranges are contiguous and in order
    assert wins[0].own_start == 0 and wins[-1].own_end == n
    for a, b in zip(wins, wins[1:]):
        assert a.own_end == b.own_start
        assert b.tok_start > a.tok_start
    return wins


@pytest.mark.parametrize(
    "n, body, overlap",
    [(1, 14, 4), (14, 14, 4), (15, 14, 4), (25, 10, 4), (100, 14, 4), (101, 30, 0), (57, 8, 7), (500, 510, 128)],
)
def test_plan_windows_partition(n, body, overlap):
    _check_plan(n, body, overlap)


def test_plan_windows_hand_computed():
    wins = _check_plan(25, 10, 4)
    assert [(w.tok_start, w.tok_end) for w in wins] == [(0, 10), (6, 16), (12, 22), (15, 25)]
    assert [(w.own_start, w.own_end) for w in wins] == [(0, 8), (8, 14), (14, 18), (18, 25)]
    # regular windows overlap by exactly `overlap`; the last one is aligned to the end
    assert wins[0].tok_end - wins[1].tok_start == 4
    assert wins[1].tok_end - wins[2].tok_start == 4
    assert wins[2].tok_end - wins[3].tok_start == 7


def test_plan_windows_overlap_capped_at_half_body():
    wins = _check_plan(40, 10, 9)  # overlap 9 > body // 2 -> 5
    assert [w.tok_start for w in wins] == [0, 5, 10, 15, 20, 25, 30]
    for a, b in zip(wins[:-1], wins[1:]):
        assert a.tok_end - b.tok_start == 5


def test_plan_windows_single_window_when_short():
    assert len(plan_windows(14, 14, 4)) == 1
    (w,) = plan_windows(5, 14, 4)
    assert (w.tok_start, w.tok_end, w.own_start, w.own_end) == (0, 5, 0, 5)


def test_plan_windows_rejects_empty_body():
    with pytest.raises(ValueError):
        plan_windows(10, 0, 0)


# -- tokenize_words ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer(None)


def test_tokenize_words_alignment(tokenizer):
    words = split_words(LONG_TEXT).tokens
    doc = tokenize_words(words, tokenizer, max_length=16, overlap=4)
    assert doc.num_words == len(words)
    assert doc.word_first_token[0] == 0
    assert doc.word_token_end[-1] == len(doc.token_ids)
    for w, word in enumerate(words):
        a, b = doc.word_first_token[w], doc.word_token_end[w]
        assert b > a
        # the sub-words of each word are exactly what the tokenizer makes of it alone
        assert doc.token_ids[a:b] == tokenizer(word, add_special_tokens=False)["input_ids"]
        if w + 1 < len(words):
            assert b == doc.word_first_token[w + 1]  # contiguous, no gaps, no overlaps
    assert any(doc.word_token_end[w] - doc.word_first_token[w] > 1 for w in range(len(words)))
    # windows exclude the two specials: body = max_length - 2
    assert len(doc.windows) > 3
    assert all(w.tok_end - w.tok_start == 14 for w in doc.windows)


def test_tokenize_words_dropped_word_borrows_next_subword(tokenizer):
    # U+FFFD is a word for split_words but the BERT tokenizer drops it entirely
    words = ["alpha", "\ufffd", "beta", "\ufffd"]
    doc = tokenize_words(words, tokenizer, max_length=16, overlap=4)
    assert doc.num_words == 4
    beta_first = doc.word_first_token[2]
    assert doc.word_first_token[1] == beta_first
    assert doc.word_token_end[1] == beta_first + 1
    # a dropped last word takes the last sub-word
    assert doc.word_first_token[3] == len(doc.token_ids) - 1
    assert doc.word_token_end[3] == len(doc.token_ids)


def test_tokenize_words_rejects_empty(tokenizer):
    with pytest.raises(ValueError):
        tokenize_words([], tokenizer, 16, 4)


# -- encoder on windows -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def windowed_model() -> GLiDRE:
    torch.manual_seed(1)
    model = GLiDRE(tiny_config(max_length=16, window_overlap=4))
    model.eval()
    return model


def _eager_copy(hf_model):
    """The same weights with Hugging Face's eager attention (which can return attentions)."""
    cfg = copy.deepcopy(hf_model.config)
    eager = AutoModel.from_config(cfg, attn_implementation="eager")
    missing, unexpected = eager.load_state_dict(hf_model.state_dict(), strict=False)
    assert not unexpected and all("pooler" in k for k in missing)
    eager.eval()
    return eager


def _reference_stitch(tdoc, hidden, attention):
    """Per-word vectors and dense word-level attention rows, with explicit loops."""
    num_words = tdoc.num_words
    token_word = {}
    for w in range(num_words):
        for t in range(tdoc.word_first_token[w], tdoc.word_token_end[w]):
            token_word.setdefault(t, w)
    vectors, rows = {}, {}
    for k, win in enumerate(tdoc.windows):
        for w in range(num_words):
            first = tdoc.word_first_token[w]
            if not win.own_start <= first < win.own_end:
                continue
            pos = first - win.tok_start + 1
            vectors[w] = hidden[k, pos]
            row = torch.zeros(num_words)
            for t in range(win.tok_start, win.tok_end):
                row[token_word[t]] += attention[k][pos, t - win.tok_start + 1]
            rows[w] = (row, k, pos)
    return vectors, rows


def test_long_document_is_windowed_not_truncated(windowed_model):
    model = windowed_model
    words = split_words(LONG_TEXT)
    tdoc = model.encoder.tokenize(words.tokens)
    assert len(tdoc.token_ids) > 3 * 14
    assert len(tdoc.windows) >= 4
    windows = model.encoder.window_ids(tdoc)
    assert all(len(w) <= 16 for w in windows)
    with torch.no_grad():
        (enc,) = model.encoder.encode([tdoc])
        hidden, attention, mask = model.encoder.forward_windows(windows)
    num_words = len(words)
    assert enc.word_vectors.shape == (num_words, model.encoder.hidden_size)
    # one row per word, over all blocks
    row_words = torch.cat([b.row_words for b in enc.attention]).tolist()
    assert sorted(row_words) == list(range(num_words))
    assert len(enc.attention) == len(tdoc.windows)

    ref_vectors, ref_rows = _reference_stitch(tdoc, hidden, attention)
    assert sorted(ref_vectors) == list(range(num_words))
    for w in range(num_words):
        assert torch.allclose(enc.word_vectors[w], ref_vectors[w], atol=1e-6)
        assert enc.word_vectors[w].abs().sum() > 0  # the last words get real vectors too
    for block in enc.attention:
        width = block.col_end - block.col_start
        assert block.rows.shape == (block.row_words.numel(), width)
        assert 0 <= block.col_start < block.col_end <= num_words
        assert width < num_words  # a window sees only part of the document
        for i, w in enumerate(block.row_words.tolist()):
            ref_row, k, pos = ref_rows[w]
            dense = torch.zeros(num_words)
            dense[block.col_start : block.col_end] = block.rows[i]
            assert torch.allclose(dense, ref_row, atol=1e-6)
            # specials dropped: the row sums to 1 minus the mass on [CLS] and [SEP]
            length = int(mask[k].sum())
            specials = attention[k][pos, 0] + attention[k][pos, length - 1]
            s = float(block.rows[i].sum())
            assert s == pytest.approx(1.0 - float(specials), abs=1e-5)
            assert 0.3 < s <= 1.0 + 1e-5
    # the mention at the very end of the document is encoded in the last window
    last = num_words - 1
    assert tdoc.windows[-1].own_start <= tdoc.word_first_token[last] < tdoc.windows[-1].own_end


def test_entity_at_end_of_long_document_is_scored(windowed_model):
    text = LONG_TEXT
    start_a = text.index("Tokenization")
    start_b = text.index("Winterthur")
    doc = parse_document({
        "doc_id": "long",
        "text": text,
        "entities": [
            {"id": "a", "mentions": [{"start": start_a, "end": start_a + len("Tokenization")}]},
            {"id": "b", "mentions": [{"start": start_b, "end": start_b + len("Winterthur")}]},
        ],
    })
    prep = windowed_model.prepare(doc)
    assert prep.mention_spans[1][0][0] == len(split_words(text)) - 2  # "Winterthur ."
    rows = windowed_model.predict_documents([doc], ["located in"], threshold=1e-9)[0]
    assert {(r["head_id"], r["tail_id"]) for r in rows} == {("a", "b"), ("b", "a")}


def test_hand_computed_attention_matches_eager_tiny(windowed_model):
    model = windowed_model
    tdoc = model.encoder.tokenize(split_words(LONG_TEXT).tokens)
    # windows of different lengths so padding is exercised
    windows = model.encoder.window_ids(tdoc)[:2] + [model.encoder.window_ids(tdoc)[0][:7]]
    ids, mask = model.encoder._pad(windows)
    eager = _eager_copy(model.encoder.model)
    with torch.no_grad():
        hidden, attention, mask_out = model.encoder.forward_windows(windows)
        out = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
    ref_attention = out.attentions[-1].float().mean(1)
    valid = mask.bool()
    assert torch.equal(mask_out, mask)
    assert len(attention) == 3
    for i, w in enumerate(windows):
        n = len(w)
        # only the real tokens: rows and columns of padding are never computed
        assert attention[i].shape == (n, n)
        assert torch.allclose(attention[i], ref_attention[i, :n, :n], atol=1e-5)
        # the eager reference puts no mass on padding either: nothing was dropped
        assert float(ref_attention[i, :n, n:].abs().sum()) == 0.0
    assert torch.allclose(hidden[valid], out.last_hidden_state[valid], atol=1e-5)
    # selected rows are the same rows
    rows = [torch.tensor([0, 3]), torch.tensor([5]), torch.tensor([6, 1, 2])]
    with torch.no_grad():
        _, picked, _ = model.encoder.forward_windows(windows, rows)
    for i, pos in enumerate(rows):
        assert torch.allclose(picked[i], attention[i][pos], atol=1e-6)


def test_batching_documents_does_not_mix_them(windowed_model):
    model = windowed_model
    docs = [
        model.encoder.tokenize(split_words(LONG_TEXT).tokens),
        model.encoder.tokenize(split_words("A short one about Paris .").tokens),
        model.encoder.tokenize(split_words(LONG_TEXT[:120]).tokens),
    ]
    with torch.no_grad():
        together = model.encoder.encode(docs)
        alone = [model.encoder.encode([d])[0] for d in docs]
    for a, b in zip(together, alone):
        assert torch.allclose(a.word_vectors, b.word_vectors, atol=1e-5)
        assert len(a.attention) == len(b.attention)
        for x, y in zip(a.attention, b.attention):
            assert torch.equal(x.row_words, y.row_words)
            assert (x.col_start, x.col_end) == (y.col_start, y.col_end)
            assert torch.allclose(x.rows, y.rows, atol=1e-5)


def test_encode_from_cache_equals_encode():
    torch.manual_seed(2)
    model = GLiDRE(tiny_config(max_length=16, window_overlap=4, trainable_encoder_layers=1))
    model.eval()
    assert model.frozen_split == 1
    # the lower layer and the embeddings are frozen, the last layer is not
    enc = model.encoder.model
    assert not any(p.requires_grad for p in enc.embeddings.parameters())
    assert not any(p.requires_grad for p in enc.encoder.layer[0].parameters())
    assert all(p.requires_grad for p in enc.encoder.layer[1].parameters())
    docs = [
        model.encoder.tokenize(split_words(LONG_TEXT).tokens),
        model.encoder.tokenize(split_words("Short text about Bern and Basel .").tokens),
    ]
    with torch.no_grad():
        cached = [model.encoder.lower(model.encoder.window_ids(d), model.frozen_split) for d in docs]
        from_cache = model.encoder.encode_from_cache(docs, cached, model.frozen_split)
        direct = model.encoder.encode(docs)
    assert [len(c) for c in cached] == [len(d.windows) for d in docs]
    for d, c in zip(docs, cached):
        for state, win in zip(c, model.encoder.window_ids(d)):
            assert state.shape == (len(win), model.encoder.hidden_size)  # unpadded
    for a, b in zip(from_cache, direct):
        assert torch.allclose(a.word_vectors, b.word_vectors, atol=1e-5)
        for x, y in zip(a.attention, b.attention):
            assert torch.equal(x.row_words, y.row_words)
            assert torch.allclose(x.rows, y.rows, atol=1e-5)


def test_cached_scores_equal_uncached_scores():
    torch.manual_seed(3)
    model = GLiDRE(tiny_config(max_length=16, window_overlap=4, trainable_encoder_layers=1))
    model.eval()
    text = "Anna Schmidt works for Siemens in Munich and lives near Augsburg ."
    ents = []
    for i, name in enumerate(["Anna Schmidt", "Siemens", "Munich", "Augsburg"]):
        s = text.index(name)
        ents.append({"id": str(i), "mentions": [{"start": s, "end": s + len(name)}]})
    prep = [model.prepare(parse_document({"doc_id": "d", "text": text, "entities": ents}))]
    labels = model.encode_labels(["employer", "residence"])
    with torch.no_grad():
        cache = [model.encoder.lower(model.encoder.window_ids(prep[0].tokens), model.frozen_split)]
        a = model.score_documents(prep, labels, cache)[0]
        b = model.score_documents(prep, labels)[0]
    assert a.logits.shape == (12, 2)
    assert torch.allclose(a.logits, b.logits, atol=1e-5)


# -- the real MiniLM ------------------------------------------------------------------------------

@pytest.mark.slow
def test_hand_computed_attention_matches_eager_minilm(minilm_model):
    model = minilm_model
    text = (
        "Marie Curie was a Polish and naturalised-French physicist and chemist who conducted "
        "pioneering research on radioactivity . She was the first woman to win a Nobel Prize ."
    )
    tdoc = model.encoder.tokenize(split_words(text).tokens)
    full = model.encoder.window_ids(tdoc)[0]
    windows = [full, full[:9] + [model.encoder.tokenizer.sep_token_id]]
    ids, mask = model.encoder._pad(windows)
    eager = _eager_copy(model.encoder.model)
    with torch.no_grad():
        hidden, attention, _ = model.encoder.forward_windows(windows)
        ref = eager(input_ids=ids, attention_mask=mask, output_attentions=True)
        plain = model.encoder.model(input_ids=ids, attention_mask=mask)
    valid = mask.bool()
    ref_attention = ref.attentions[-1].float().mean(1)
    for i, w in enumerate(windows):
        assert torch.allclose(attention[i], ref_attention[i, : len(w), : len(w)], atol=1e-5)
    assert torch.allclose(hidden[valid], plain.last_hidden_state[valid], atol=1e-4)
    assert torch.allclose(hidden[valid], ref.last_hidden_state[valid], atol=1e-4)
