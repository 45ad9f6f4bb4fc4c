"""Mention/entity pooling and entity-level attention for a padded batch.

The reference code materialised ``pairs x mentions x span x (D + W)`` tensors. Here every
quantity is built once per entity: entity vectors ``[B, N, D]`` and entity attention ``[B, N, W]``
are two batched matrix products of the pooling weights built on the CPU
(:func:`glidre_core.modeling.batch.entity_arrays`) with the word vectors and the word attention.
Pairs are formed later from those (see :mod:`.scorer`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from glidre_core.modeling.batch import EntityIndex

POOLINGS = ("mean", "logsumexp")


@dataclass
class EntityRepresentations:
    vectors: torch.Tensor  # [B, N, D]
    attention: torch.Tensor  # [B, N, W] word-level attention of each entity
    words: torch.Tensor  # [B, W, D] word vectors (the context pooled by localized context pooling)


def pool_entities(
    words: torch.Tensor, word_attention: torch.Tensor, index: EntityIndex, pooling: str = "mean"
) -> EntityRepresentations:
    """Entity vectors (mean, or logsumexp, over mean-pooled mentions) and entity attention.

    Entity attention is the mean over the entity's mentions of the mean over each mention's
    words of their last-layer attention rows (ATLOP's localized context pooling, word level).
    Padded entities get zero vectors and zero attention.
    """
    pool = index.pool.to(words.dtype)
    if pooling == "mean":
        vectors = torch.bmm(pool, words)
    elif pooling == "logsumexp":
        if index.mention_pool is None or index.entity_mentions is None:
            raise ValueError("logsumexp pooling needs the batch's mention index (collate with logsumexp=True)")
        mentions = torch.bmm(index.mention_pool.to(words.dtype), words)  # [B, M, D]
        which = index.entity_mentions  # [B, N, K]
        bsz, n, k = which.shape
        gathered = torch.gather(
            mentions, 1, which.clamp(min=0).reshape(bsz, n * k, 1).expand(-1, -1, mentions.shape[-1])
        ).view(bsz, n, k, mentions.shape[-1])
        gathered = gathered.masked_fill((which < 0).unsqueeze(-1), float("-inf"))
        vectors = torch.logsumexp(gathered, dim=2)
        # padded entities have no mention at all: 0, not -inf
        vectors = vectors.masked_fill(~index.entity_mask.unsqueeze(-1), 0.0)
    else:
        raise ValueError(f"unknown pooling {pooling!r}; expected 'mean' or 'logsumexp'")
    attention = torch.bmm(index.pool, word_attention.float())
    return EntityRepresentations(vectors, attention, words)
