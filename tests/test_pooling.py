"""Entity pooling and pair scoring of a padded batch against naive per-document references.

The library pools every entity of a batch with two batched matrix products
(:func:`pool_entities`) and scores the batch's pairs from one structural ``tril`` index, in
chunks, with the first Linears split and the pair FFN's last Linear folded into the labels
(:class:`PairScorer`). The references below follow MODEL.md literally: one document, one
entity, one pair at a time, through the plain ``nn.Sequential`` FFNs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from glidre_core.modeling.batch import build_entity_index, ordered_pairs
from glidre_core.modeling.pooling import pool_entities
from glidre_core.modeling.scorer import PairScorer

DIM, NUM_LABELS = 6, 3
CPU = torch.device("cpu")
# per document: entities -> mentions -> [w0, w1) word spans
DOCS = [
    {
        "words": 9,
        "spans": [
            [(0, 2), (5, 6)],          # two mentions, one of two words
            [(2, 3)],                  # a single one-word mention
            [(3, 5), (6, 9), (8, 9)],  # three mentions, overlapping
            [(7, 8)],
        ],
    },
    {"words": 5, "spans": [[(0, 1)], [(1, 3), (4, 5)], [(3, 4)]]},  # fewer words and entities
    {"words": 7, "spans": [[(2, 4)]]},  # a single entity: no pairs
    {"words": 4, "spans": [[(0, 1), (2, 3)], [(3, 4)]]},
]


def _window_attention(num_words: int, g: torch.Generator) -> torch.Tensor:
    """Word attention as two overlapping windows would give it: rows of the first half see only
    the first ~70% of the words, rows of the second half only the last ~70%."""
    att = torch.zeros(num_words, num_words)
    split = num_words // 2
    see_a, see_b = math.ceil(0.7 * num_words), num_words - math.ceil(0.7 * num_words)
    for w in range(num_words):
        lo, hi = (0, see_a) if w < split else (see_b, num_words)
        row = torch.rand(hi - lo, generator=g)
        att[w, lo:hi] = row / row.sum() * 0.85  # the rest went to the specials
    return att


def _batch(docs, seed: int = 0, garbage: bool = True):
    """Padded ``words [B, W, D]`` and ``attention [B, W, W]`` plus each document's unpadded ones.

    With ``garbage``, padded word vectors and padded attention *rows* hold random values: only
    padded attention *columns* must be 0 (the encoder guarantees that: a word never attends to
    another document's words), everything else padded must simply never be read.
    """
    g = torch.Generator().manual_seed(seed)
    wmax = max(d["words"] for d in docs)
    words = torch.randn(len(docs), wmax, DIM, generator=g) * (3.0 if garbage else 0.0)
    att = torch.rand(len(docs), wmax, wmax, generator=g) * (1.0 if garbage else 0.0)
    per_doc = []
    for b, d in enumerate(docs):
        n = d["words"]
        w = torch.randn(n, DIM, generator=g)
        a = _window_attention(n, g)
        words[b, :n] = w
        att[b, :, n:] = 0.0
        att[b, :n, :n] = a
        per_doc.append((w, a))
    return words, att, per_doc


def _naive_entities(words, dense, spans, pooling="mean"):
    """Entity vectors and attention of one document with explicit loops over mentions and words."""
    num_words, dim = words.shape
    vectors, attentions = [], []
    for ent in spans:
        mention_vecs, mention_attn = [], []
        for w0, w1 in ent:
            vec = [0.0] * dim
            att = [0.0] * num_words
            for w in range(w0, w1):
                for d in range(dim):
                    vec[d] += float(words[w, d]) / (w1 - w0)
                for j in range(num_words):
                    att[j] += float(dense[w, j]) / (w1 - w0)
            mention_vecs.append(vec)
            mention_attn.append(att)
        if pooling == "mean":
            ev = [sum(m[d] for m in mention_vecs) / len(ent) for d in range(dim)]
        else:
            ev = [math.log(sum(math.exp(m[d]) for m in mention_vecs)) for d in range(dim)]
        ea = [sum(a[j] for a in mention_attn) / len(ent) for j in range(num_words)]
        vectors.append(ev)
        attentions.append(ea)
    return torch.tensor(vectors).reshape(len(spans), dim), torch.tensor(attentions).reshape(len(spans), num_words)


def _naive_pair_logits(scorer: PairScorer, ent_vec, ent_att, words, h: int, t: int, labels) -> torch.Tensor:
    """MODEL.md for one ordered pair, through the plain (unsplit, unfolded) FFNs."""
    num_words = words.shape[0]
    alpha = [float(ent_att[h, i]) * float(ent_att[t, i]) for i in range(num_words)]
    total = sum(alpha)
    alpha = [a / total for a in alpha]
    context = torch.zeros(words.shape[1])
    for i in range(num_words):
        context += alpha[i] * words[i]
    hv = torch.tanh(scorer.head_ffn(torch.cat([ent_vec[h], context])))
    tv = torch.tanh(scorer.tail_ffn(torch.cat([ent_vec[t], context])))
    pair = scorer.pair_ffn(torch.cat([hv, tv]))
    return torch.stack([(pair * lab).sum() for lab in labels])


def _index(docs, pooling="mean", chunk=None):
    return build_entity_index([d["spans"] for d in docs], max(d["words"] for d in docs), CPU,
                              pooling == "logsumexp", chunk)


def _scorer(chunk: int, seed: int = 0) -> PairScorer:
    torch.manual_seed(seed)
    s = PairScorer(DIM, 4, 0.0, chunk)
    s.eval()
    return s


def _labels(seed: int = 11) -> torch.Tensor:
    return torch.randn(NUM_LABELS, DIM, generator=torch.Generator().manual_seed(seed))


def _split(logits: torch.Tensor, index) -> list[torch.Tensor]:
    sizes = [len(h) for h in index.heads]
    assert sum(sizes) == logits.shape[0]
    return list(torch.split(logits, sizes))


# -- entities ---------------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "logsumexp"])
def test_pool_entities_matches_naive(pooling):
    words, att, per_doc = _batch(DOCS)
    index = _index(DOCS, pooling)
    ents = pool_entities(words, att, index, pooling)
    nmax, wmax = max(len(d["spans"]) for d in DOCS), words.shape[1]
    assert ents.vectors.shape == (len(DOCS), nmax, DIM)
    assert ents.attention.shape == (len(DOCS), nmax, wmax)
    assert ents.words is words
    for b, (d, (w, a)) in enumerate(zip(DOCS, per_doc)):
        n, nw = len(d["spans"]), d["words"]
        ref_vec, ref_att = _naive_entities(w, a, d["spans"], pooling)
        torch.testing.assert_close(ents.vectors[b, :n], ref_vec, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(ents.attention[b, :n, :nw], ref_att, atol=1e-5, rtol=1e-5)
        # nothing lands on another document's (padded) words, padded entities are all zero
        assert float(ents.attention[b, :, nw:].abs().sum()) == 0.0
        assert float(ents.vectors[b, n:].abs().sum()) == 0.0
        assert float(ents.attention[b, n:].abs().sum()) == 0.0
    assert torch.isfinite(ents.vectors).all()


def test_logsumexp_differs_from_mean_only_for_multi_mention_entities():
    words, att, _ = _batch(DOCS[:1])
    mean = pool_entities(words, att, _index(DOCS[:1], "mean"), "mean")
    lse = pool_entities(words, att, _index(DOCS[:1], "logsumexp"), "logsumexp")
    # entities 1 and 3 have one mention: logsumexp over one value is that value
    torch.testing.assert_close(mean.vectors[0, 1], lse.vectors[0, 1], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(mean.vectors[0, 3], lse.vectors[0, 3], atol=1e-6, rtol=1e-6)
    assert not torch.allclose(mean.vectors[0, 0], lse.vectors[0, 0], atol=1e-3)
    assert not torch.allclose(mean.vectors[0, 2], lse.vectors[0, 2], atol=1e-3)
    torch.testing.assert_close(mean.attention, lse.attention)  # attention pooling is always the mean


def test_unknown_pooling_raises():
    words, att, _ = _batch(DOCS)
    with pytest.raises(ValueError, match="unknown pooling 'max'"):
        pool_entities(words, att, _index(DOCS), "max")
    # logsumexp needs the mention index, which a mean-pooling batch does not carry
    with pytest.raises(ValueError, match="logsumexp"):
        pool_entities(words, att, _index(DOCS, "mean"), "logsumexp")


def test_entity_attention_is_zero_outside_what_its_words_see():
    """A word that no mention word attends to gets no attention (and so no context weight)."""
    doc = {"words": 10, "spans": [[(0, 1)], [(9, 10)]]}
    words, att, _ = _batch([doc], garbage=False)
    ents = pool_entities(words, att, _index([doc]))
    # word 0's row sees words 0..6 only; word 9's row sees words 3..9 only
    assert float(ents.attention[0, 0, 7:].abs().sum()) == 0.0
    assert float(ents.attention[0, 1, :3].abs().sum()) == 0.0
    assert float(ents.attention[0, 0, :7].sum()) > 0 and float(ents.attention[0, 1, 3:].sum()) > 0


# -- pair structure ---------------------------------------------------------------------------

@pytest.mark.parametrize("n", [0, 1, 2, 3, 5])
def test_ordered_pairs_tril_order_without_self_pairs(n):
    heads, tails = ordered_pairs(n)
    assert heads.dtype == tails.dtype == np.int64
    pairs = list(zip(heads.tolist(), tails.tolist()))
    assert len(pairs) == n * (n - 1)
    assert all(h != t for h, t in pairs)
    assert set(pairs) == {(h, t) for h in range(n) for t in range(n) if h != t}
    # unordered pairs in tril order, each as (low, high) then (high, low)
    unordered = [(lo, hi) for hi in range(n) for lo in range(hi)]
    assert pairs == [p for lo, hi in unordered for p in ((lo, hi), (hi, lo))]
    # so the pairs of fewer entities are a prefix: one structural index serves a whole batch
    more_h, more_t = ordered_pairs(n + 2)
    assert more_h[: len(heads)].tolist() == heads.tolist() and more_t[: len(tails)].tolist() == tails.tolist()


def test_entity_index_pairs_of_a_padded_batch():
    index = _index(DOCS)
    counts = [len(d["spans"]) for d in DOCS]
    assert index.num_entities == counts and index.max_entities == 4
    assert index.pair_counts == [6, 3, 0, 1] and index.max_pairs == 6
    assert index.num_pairs == 2 * (6 + 3 + 0 + 1)
    assert index.entity_mask.tolist() == [[b < n for b in range(4)] for n in counts]
    for b, n in enumerate(counts):
        h, t = ordered_pairs(n)
        assert index.heads[b].tolist() == h.tolist() and index.tails[b].tolist() == t.tolist()
    # one chunk: the real unordered pairs of document b are the first pair_counts[b] of its
    # max_pairs slots, and the FFNs see only those (flat entity indices b * N + entity)
    assert index.chunks == [(0, 6, 0, 10)] and index.pair_perm is None
    assert index.pair_rows.tolist() == [b * 6 + k for b, u in enumerate(index.pair_counts) for k in range(u)]
    low = [lo for hi in range(4) for lo in range(hi)]
    high = [hi for hi in range(4) for lo in range(hi)]
    assert index.pair_low_flat.tolist() == [b * 4 + low[k] for b, u in enumerate(index.pair_counts) for k in range(u)]
    assert index.pair_high_flat.tolist() == [b * 4 + high[k] for b, u in enumerate(index.pair_counts) for k in range(u)]
    # several chunks: a permutation puts the chunk-major rows back in document order
    chunked = _index(DOCS, chunk=2 * 4 * 2)  # 2 unordered pairs per chunk over 4 documents
    assert [c[:2] for c in chunked.chunks] == [(0, 2), (2, 2), (4, 2)]
    assert chunked.pair_perm is not None and sorted(chunked.pair_perm.tolist()) == list(range(20))
    # pooling weights: a mention's words weigh 1 / (its width * the entity's mentions)
    pool = index.pool
    assert pool[0, 0].tolist() == pytest.approx([0.25, 0.25, 0, 0, 0, 0.5, 0, 0, 0])
    assert pool[1, 1, :5].tolist() == pytest.approx([0, 0.25, 0.25, 0, 0.5])
    assert float(pool[1, 3].abs().sum()) == 0.0  # padded entity
    torch.testing.assert_close(pool[0, :4].sum(-1), torch.ones(4))


# -- pair scoring -----------------------------------------------------------------------------

@pytest.mark.parametrize("pooling", ["mean", "logsumexp"])
def test_pair_logits_match_naive_per_pair_reference(pooling):
    words, att, per_doc = _batch(DOCS, seed=5)
    index = _index(DOCS, pooling)
    scorer = _scorer(chunk=4096)
    labels = _labels()
    with torch.no_grad():
        logits = scorer(pool_entities(words, att, index, pooling), index, labels)
    assert logits.shape == (index.num_pairs, NUM_LABELS)
    for b, (got, d, (w, a)) in enumerate(zip(_split(logits, index), DOCS, per_doc)):
        ref_vec, ref_att = _naive_entities(w, a, d["spans"], pooling)
        with torch.no_grad():
            expected = [
                _naive_pair_logits(scorer, ref_vec, ref_att, w, int(h), int(t), labels)
                for h, t in zip(index.heads[b], index.tails[b])
            ]
        if expected:
            torch.testing.assert_close(got, torch.stack(expected), atol=1e-4, rtol=1e-4)
        else:
            assert got.shape == (0, NUM_LABELS)


def test_pair_direction_matters():
    words, att, _ = _batch(DOCS[:1], seed=6)
    index = _index(DOCS[:1])
    with torch.no_grad():
        logits = _scorer(chunk=16)(pool_entities(words, att, index), index, _labels())
    pairs = list(zip(index.heads[0].tolist(), index.tails[0].tolist()))
    ht, th = logits[pairs.index((0, 2))], logits[pairs.index((2, 0))]
    assert not torch.allclose(ht, th, atol=1e-4)
    # and the two directions of a pair are adjacent rows (low -> high first)
    assert pairs.index((2, 0)) == pairs.index((0, 2)) + 1


@pytest.mark.parametrize("chunk", [1, 3, 16, 24, 32, 40])
def test_chunked_pairs_equal_unchunked(chunk):
    words, att, _ = _batch(DOCS, seed=7)
    whole, chunked = _index(DOCS), _index(DOCS, chunk=chunk)
    scorer = _scorer(chunk=4096, seed=1)
    labels = _labels()
    with torch.no_grad():
        a = scorer(pool_entities(words, att, whole), whole, labels)
        b = scorer(pool_entities(words, att, chunked), chunked, labels)
    # the chunked run really chunks: steps of 1..5 unordered pairs per document (4 and 5 leave
    # a partial last step of the 6 pairs)
    step = max(1, chunk // (2 * len(DOCS)))
    assert len(chunked.chunks) == -(-whole.max_pairs // step) > 1
    torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)
    # one document alone: a pair count that is not a multiple of the step
    one, one_chunked = _index(DOCS[:1]), _index(DOCS[:1], chunk=2 * 4)  # 4 unordered pairs per step, 6 in all
    assert [c[1] for c in one_chunked.chunks] == [4, 2]
    w1, a1, _ = _batch(DOCS[:1], seed=7)
    with torch.no_grad():
        torch.testing.assert_close(
            scorer(pool_entities(w1, a1, one_chunked), one_chunked, labels),
            scorer(pool_entities(w1, a1, one), one, labels), atol=1e-6, rtol=1e-6,
        )


def test_single_entity_gives_no_pairs():
    doc = {"words": 7, "spans": [[(2, 4)]]}
    words, att, _ = _batch([doc])
    index = _index([doc])
    assert index.max_pairs == 0 and index.num_pairs == 0
    logits = _scorer(chunk=3)(pool_entities(words, att, index), index, _labels())
    assert logits.shape == (0, NUM_LABELS)
    # in a batch, a one-entity document contributes no row and shifts no other document's rows
    index = _index(DOCS, chunk=3)
    assert len(index.heads[2]) == 0
    words, att, _ = _batch(DOCS)
    with torch.no_grad():
        logits = _scorer(chunk=3)(pool_entities(words, att, index), index, _labels())
    assert [x.shape[0] for x in _split(logits, index)] == [12, 6, 0, 2]


@pytest.mark.parametrize("pooling", ["mean", "logsumexp"])
def test_batch_without_any_entity_gives_no_pairs(pooling):
    """Documents given without entities (or for which the joint path predicted none)."""
    docs = [{"words": 5, "spans": []}, {"words": 3, "spans": []}]
    words, att, _ = _batch(docs)
    index = _index(docs, pooling)
    assert index.max_entities == 0 and index.num_pairs == 0
    ents = pool_entities(words, att, index, pooling)
    assert ents.vectors.shape == (2, 0, DIM) and ents.attention.shape == (2, 0, 5)
    logits = _scorer(chunk=3)(ents, index, _labels())
    assert logits.shape == (0, NUM_LABELS)


def test_padding_does_not_change_other_documents_logits():
    """A document's logits alone equal its logits in a batch with longer documents and more
    entities (padded words hold garbage, padded entities are scored and then dropped)."""
    scorer = _scorer(chunk=5, seed=3)
    labels = _labels()
    words, att, per_doc = _batch(DOCS, seed=8)
    index = _index(DOCS, chunk=5)
    with torch.no_grad():
        together = _split(scorer(pool_entities(words, att, index), index, labels), index)
        for b, (d, (w, a)) in enumerate(zip(DOCS, per_doc)):
            alone_index = _index([d], chunk=5)
            alone = scorer(pool_entities(w[None], a[None], alone_index), alone_index, labels)
            assert alone.shape == together[b].shape
            torch.testing.assert_close(together[b], alone, atol=1e-5, rtol=1e-5)
    # and the documents really differ: equal logits would be no evidence at all
    assert not torch.allclose(together[0][:2], together[1][:2], atol=1e-3)
