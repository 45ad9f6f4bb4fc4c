"""Mention/entity pooling and entity-level attention, computed once per entity.

The reference code materialised ``pairs x mentions x span x (D + W)`` tensors. Here every
quantity is built once per entity (``N x D`` vectors and ``N x W`` attention) from sparse pooling
weights, and pairs are formed later from those (see :mod:`.scorer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glidre_core.modeling.encoder import EncodedDocument


@dataclass
class EntityRepresentations:
    vectors: torch.Tensor  # [N, D]
    attention: torch.Tensor  # [N, W] word-level attention of each entity
    words: torch.Tensor  # [W, D] word vectors (the context pooled by localized context pooling)


def mention_pooling_matrix(
    mention_spans: list[list[tuple[int, int]]], num_words: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pm [M, W] (mean over a mention's words) and Pe [N, M] (mean over an entity's mentions)."""
    num_mentions = sum(len(m) for m in mention_spans)
    pm = torch.zeros((num_mentions, num_words), device=device)
    pe = torch.zeros((len(mention_spans), num_mentions), device=device)
    row = 0
    for e, spans in enumerate(mention_spans):
        for w0, w1 in spans:
            pm[row, w0:w1] = 1.0 / (w1 - w0)
            pe[e, row] = 1.0 / len(spans)
            row += 1
    return pm, pe


def pool_entities(
    encoded: EncodedDocument,
    word_vectors: torch.Tensor,
    mention_spans: list[list[tuple[int, int]]],
    pooling: str = "mean",
) -> EntityRepresentations:
    """Entity vectors (mean, or logsumexp, over mean-pooled mentions) and entity attention.

    Entity attention is the mean over the entity's mentions of the mean over each mention's
    words of their last-layer attention rows (ATLOP's localized context pooling, word level).
    """
    num_words = word_vectors.shape[0]
    pm, pe = mention_pooling_matrix(mention_spans, num_words, word_vectors.device)
    pm = pm.to(word_vectors.dtype)
    mentions = pm @ word_vectors  # [M, D]
    if pooling == "mean":
        vectors = pe.to(word_vectors.dtype) @ mentions
    elif pooling == "logsumexp":
        mask = pe > 0
        expanded = mentions.unsqueeze(0).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        vectors = torch.logsumexp(expanded, dim=1)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; expected 'mean' or 'logsumexp'")
    word_weights = pe @ pm.float()  # [N, W]
    attention = word_weights.new_zeros((len(mention_spans), num_words))
    for block in encoded.attention:
        w = word_weights.index_select(1, block.row_words)  # [N, R]
        if not bool((w != 0).any()):
            continue
        contrib = w @ block.rows.float()
        attention[:, block.col_start : block.col_end] += contrib
    return EntityRepresentations(vectors, attention, word_vectors)
