"""Entity pooling and pair scoring against a naive per-pair reference written with loops.

The library computes per-entity vectors/attention once and pairs them with matmuls (and chunks
pairs); the reference below follows MODEL.md literally, one pair at a time.
"""

from __future__ import annotations

import math

import pytest
import torch

from glidre_core.modeling.encoder import AttentionBlock, EncodedDocument
from glidre_core.modeling.pooling import pool_entities
from glidre_core.modeling.scorer import PairScorer, ordered_pairs

NUM_WORDS, DIM = 9, 6
# entities -> mentions -> [w0, w1) word spans
SPANS = [
    [(0, 2), (5, 6)],          # two mentions, one of two words
    [(2, 3)],                  # a single one-word mention
    [(3, 5), (6, 9), (8, 9)],  # three mentions, overlapping
    [(7, 8)],
]


def _encoded(seed: int = 0) -> tuple[EncodedDocument, torch.Tensor, torch.Tensor]:
    """Random word vectors and two overlapping attention blocks (as two windows would give)."""
    g = torch.Generator().manual_seed(seed)
    words = torch.randn(NUM_WORDS, DIM, generator=g)
    # window 1 owns words 0..4 and sees words 0..6; window 2 owns 5..8 and sees 3..8
    rows1 = torch.rand(5, 7, generator=g)
    rows1 = rows1 / rows1.sum(-1, keepdim=True) * 0.9
    rows2 = torch.rand(4, 6, generator=g)
    rows2 = rows2 / rows2.sum(-1, keepdim=True) * 0.8
    blocks = [
        AttentionBlock(torch.tensor([0, 1, 2, 3, 4]), 0, 7, rows1),
        AttentionBlock(torch.tensor([5, 6, 7, 8]), 3, 9, rows2),
    ]
    dense = torch.zeros(NUM_WORDS, NUM_WORDS)
    dense[0:5, 0:7] = rows1
    dense[5:9, 3:9] = rows2
    return EncodedDocument(words, blocks), words, dense


def _naive_entities(words, dense, spans, pooling="mean"):
    """Entity vectors and attention with explicit loops over mentions and words."""
    vectors, attentions = [], []
    for ent in spans:
        mention_vecs, mention_attn = [], []
        for w0, w1 in ent:
            vec = [0.0] * DIM
            att = [0.0] * NUM_WORDS
            for w in range(w0, w1):
                for d in range(DIM):
                    vec[d] += float(words[w, d]) / (w1 - w0)
                for j in range(NUM_WORDS):
                    att[j] += float(dense[w, j]) / (w1 - w0)
            mention_vecs.append(vec)
            mention_attn.append(att)
        if pooling == "mean":
            ev = [sum(m[d] for m in mention_vecs) / len(ent) for d in range(DIM)]
        else:
            ev = [math.log(sum(math.exp(m[d]) for m in mention_vecs)) for d in range(DIM)]
        ea = [sum(a[j] for a in mention_attn) / len(ent) for j in range(NUM_WORDS)]
        vectors.append(ev)
        attentions.append(ea)
    return torch.tensor(vectors), torch.tensor(attentions)


def _naive_pair(scorer: PairScorer, ent_vec, ent_att, words, h: int, t: int) -> torch.Tensor:
    alpha = [float(ent_att[h, i]) * float(ent_att[t, i]) for i in range(NUM_WORDS)]
    total = sum(alpha)
    alpha = [a / total for a in alpha]
    context = torch.zeros(DIM)
    for i in range(NUM_WORDS):
        context += alpha[i] * words[i]
    hv = torch.tanh(scorer.head_ffn(torch.cat([ent_vec[h], context])))
    tv = torch.tanh(scorer.tail_ffn(torch.cat([ent_vec[t], context])))
    return scorer.pair_ffn(torch.cat([hv, tv]))


def _scorer(chunk: int, seed: int = 0) -> PairScorer:
    torch.manual_seed(seed)
    s = PairScorer(DIM, 4, 0.0, chunk)
    s.eval()
    return s


@pytest.mark.parametrize("pooling", ["mean", "logsumexp"])
def test_pool_entities_matches_naive(pooling):
    encoded, words, dense = _encoded()
    ents = pool_entities(encoded, words, SPANS, pooling)
    ref_vec, ref_att = _naive_entities(words, dense, SPANS, pooling)
    assert ents.vectors.shape == (len(SPANS), DIM)
    assert ents.attention.shape == (len(SPANS), NUM_WORDS)
    assert ents.words is words
    assert torch.allclose(ents.vectors, ref_vec, atol=1e-5)
    assert torch.allclose(ents.attention, ref_att, atol=1e-5)


def test_logsumexp_differs_from_mean_only_for_multi_mention_entities():
    encoded, words, _ = _encoded()
    mean = pool_entities(encoded, words, SPANS, "mean")
    lse = pool_entities(encoded, words, SPANS, "logsumexp")
    # entity 1 has one mention: logsumexp over one value is that value
    assert torch.allclose(mean.vectors[1], lse.vectors[1], atol=1e-6)
    assert torch.allclose(mean.vectors[3], lse.vectors[3], atol=1e-6)
    assert not torch.allclose(mean.vectors[0], lse.vectors[0], atol=1e-3)
    assert torch.allclose(mean.attention, lse.attention)  # attention pooling is always the mean


def test_unknown_pooling_raises():
    encoded, words, _ = _encoded()
    with pytest.raises(ValueError, match="pooling"):
        pool_entities(encoded, words, SPANS, "max")


@pytest.mark.parametrize("pooling", ["mean", "logsumexp"])
def test_pair_vectors_match_naive_reference(pooling):
    encoded, words, dense = _encoded(seed=5)
    ents = pool_entities(encoded, words, SPANS, pooling)
    scorer = _scorer(chunk=4096)
    heads, tails = ordered_pairs(len(SPANS), words.device)
    with torch.no_grad():
        got = scorer.pair_vectors(ents, heads, tails)
        ref_vec, ref_att = _naive_entities(words, dense, SPANS, pooling)
        expected = torch.stack([
            _naive_pair(scorer, ref_vec, ref_att, words, int(h), int(t)) for h, t in zip(heads, tails)
        ])
    n = len(SPANS)
    assert got.shape == (n * (n - 1), DIM)
    assert torch.allclose(got, expected, atol=1e-5)
    # logits are pair . label
    labels = torch.randn(3, DIM)
    logits = PairScorer.logits(got, labels)
    assert logits.shape == (n * (n - 1), 3)
    assert torch.allclose(logits[4, 2], (got[4] * labels[2]).sum(), atol=1e-5)
    # the folded path (last pair-FFN Linear folded into the labels) is the same function
    with torch.no_grad():
        folded = scorer.label_logits(scorer.pair_hidden(ents, heads, tails), labels)
    torch.testing.assert_close(folded, logits, rtol=1e-5, atol=1e-5)


def test_pair_direction_matters():
    encoded, words, _ = _encoded(seed=6)
    ents = pool_entities(encoded, words, SPANS)
    scorer = _scorer(chunk=16)
    with torch.no_grad():
        ht = scorer.pair_vectors(ents, torch.tensor([0]), torch.tensor([2]))
        th = scorer.pair_vectors(ents, torch.tensor([2]), torch.tensor([0]))
    assert not torch.allclose(ht, th, atol=1e-4)


def test_chunked_pairs_equal_unchunked():
    encoded, words, _ = _encoded(seed=7)
    ents = pool_entities(encoded, words, SPANS)
    big, small = _scorer(chunk=4096, seed=1), _scorer(chunk=3, seed=1)
    small.load_state_dict(big.state_dict())
    heads, tails = ordered_pairs(len(SPANS), words.device)
    assert heads.numel() % 3 == 0 and heads.numel() > 3
    with torch.no_grad():
        a = big.pair_vectors(ents, heads, tails)
        b = small.pair_vectors(ents, heads, tails)
        # a pair count that is not a multiple of the chunk size
        c = small.pair_vectors(ents, heads[:7], tails[:7])
    assert torch.allclose(a, b, atol=1e-6)
    assert torch.allclose(a[:7], c, atol=1e-6)


def test_no_pairs_gives_empty_result():
    encoded, words, _ = _encoded()
    ents = pool_entities(encoded, words, SPANS[:1])
    scorer = _scorer(chunk=3)
    heads, tails = ordered_pairs(1, words.device)
    out = scorer.pair_vectors(ents, heads, tails)
    assert out.shape == (0, DIM)


@pytest.mark.parametrize("n", [0, 1, 2, 5])
def test_ordered_pairs_excludes_self_pairs(n):
    heads, tails = ordered_pairs(n, torch.device("cpu"))
    pairs = list(zip(heads.tolist(), tails.tolist()))
    assert len(pairs) == n * (n - 1)
    assert all(h != t for h, t in pairs)
    assert set(pairs) == {(h, t) for h in range(n) for t in range(n) if h != t}


def test_entity_attention_is_zero_outside_its_windows():
    """A word that no window lets the entity see gets no attention (and no context weight)."""
    encoded, words, _ = _encoded()
    ents = pool_entities(encoded, words, [[(0, 1)], [(8, 9)]])
    # word 0 is owned by block 1 which sees words 0..6 only
    assert float(ents.attention[0, 7:].abs().sum()) == 0.0
    # word 8 is owned by block 2 which sees words 3..8 only
    assert float(ents.attention[1, :3].abs().sum()) == 0.0
