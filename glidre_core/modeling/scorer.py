"""Pair representations (localized context pooling + FFN heads) and label scoring."""

from __future__ import annotations

import torch
from torch import nn

from glidre_core.modeling.layers import FeedForward
from glidre_core.modeling.pooling import EntityRepresentations


def ordered_pairs(num_entities: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (h, t) with h != t: self pairs are never scored."""
    idx = torch.arange(num_entities, device=device)
    h, t = torch.meshgrid(idx, idx, indexing="ij")
    keep = h != t
    return h[keep], t[keep]


class PairScorer(nn.Module):
    """r = FFN([tanh(FFN_h([e_h; c])); tanh(FFN_t([e_t; c]))]); logits = r . label_emb.

    ``c`` is the localized context: ``normalise(A_h * A_t) @ H``. Pairs are processed in chunks
    so memory is ``chunk x (W + D)`` whatever the number of entities.
    """

    def __init__(self, dim: int, expansion: int, dropout: float, chunk_size: int):
        super().__init__()
        self.head_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.tail_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.pair_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.chunk_size = chunk_size

    def pair_vectors(self, ents: EntityRepresentations, heads: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        out = []
        for s in range(0, heads.numel(), self.chunk_size):
            h, t = heads[s : s + self.chunk_size], tails[s : s + self.chunk_size]
            alpha = ents.attention[h] * ents.attention[t]
            alpha = alpha / (alpha.sum(-1, keepdim=True) + 1e-10)
            context = alpha.to(ents.words.dtype) @ ents.words
            hv = torch.tanh(self.head_ffn(torch.cat([ents.vectors[h], context], -1)))
            tv = torch.tanh(self.tail_ffn(torch.cat([ents.vectors[t], context], -1)))
            out.append(self.pair_ffn(torch.cat([hv, tv], -1)))
        if not out:
            return ents.vectors.new_zeros((0, ents.vectors.shape[-1]))
        return torch.cat(out)

    @staticmethod
    def logits(pairs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pairs @ labels.to(pairs.dtype).T
