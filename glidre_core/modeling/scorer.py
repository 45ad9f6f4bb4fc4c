"""Pair representations (localized context pooling + FFN heads) and label scoring."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from glidre_core.modeling.layers import FeedForward
from glidre_core.modeling.pooling import EntityRepresentations


def ordered_pairs(num_entities: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """All ordered pairs (h, t) with h != t: self pairs are never scored.

    The two orders of a pair are adjacent (``(a, b), (b, a)`` for every ``a < b``): they share
    their localized context, which :meth:`PairScorer.pair_hidden` then computes once.
    """
    a, b = torch.triu_indices(num_entities, num_entities, offset=1, device=device)
    heads = torch.stack([a, b], dim=1).reshape(-1)
    tails = torch.stack([b, a], dim=1).reshape(-1)
    return heads, tails


class PairScorer(nn.Module):
    """r = FFN([tanh(FFN_h([e_h; c])); tanh(FFN_t([e_t; c]))]); logits = r . label_emb.

    ``c`` is the localized context: ``normalise(A_h * A_t) @ H``. Pairs are processed in chunks
    so memory is ``chunk x (W + D)`` whatever the number of entities.

    The first Linear of ``FFN_h``/``FFN_t`` acts on a concatenation ``[e; c]``, so it is split
    (``W [e; c] + b = W_e e + W_c c + b``): the entity half is computed once per *entity*
    instead of once per pair. This is the same function (summation order aside, ~1e-7
    relative), with about a quarter fewer FLOPs per pair and no per-pair ``[e; c]`` copies.

    The context ``c`` is symmetric in ``h`` and ``t``, and so are its projections ``W_c c`` for
    the head and the tail role: for ``(h, t)`` and ``(t, h)`` they are computed once (pairs
    are grouped by their unordered key inside each chunk; :func:`ordered_pairs` puts both
    orders next to each other), which halves the context work. Exact: ``A_h * A_t`` is the
    same product either way.

    Likewise the last Linear of the pair FFN is folded into the labels (:meth:`label_logits`):
    ``(W_o h + b_o) . l = h . (W_o^T l) + b_o . l``, so per pair a ``k*D x R`` product replaces
    the ``k*D x D`` Linear plus the ``D x R`` dot products (R labels, usually fewer than D).
    """

    def __init__(self, dim: int, expansion: int, dropout: float, chunk_size: int):
        super().__init__()
        self.head_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.tail_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.pair_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.chunk_size = chunk_size

    @staticmethod
    def _rest(ffn: FeedForward, hidden: torch.Tensor) -> torch.Tensor:
        """An FFN after its first Linear (ReLU -> Dropout -> Linear), on a pre-activation."""
        for layer in list(ffn)[1:]:
            hidden = layer(hidden)
        return hidden

    def pair_vectors(self, ents: EntityRepresentations, heads: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """Pair representations ``r`` ``[P, D]`` (the pair FFN's full output)."""
        hidden = self.pair_hidden(ents, heads, tails)
        return self.pair_ffn[3](hidden)

    def label_logits(self, hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``r . label`` for every pair and label from :meth:`pair_hidden`, with the pair FFN's
        last Linear folded into the labels: equal to ``logits(pair_vectors(...), labels)``."""
        last = self.pair_ffn[3]
        labels = labels.to(hidden.dtype)
        folded = labels @ last.weight.to(hidden.dtype)  # [R, kD]
        bias = labels @ last.bias.to(hidden.dtype)  # [R]
        return torch.addmm(bias, hidden, folded.t())

    def pair_hidden(self, ents: EntityRepresentations, heads: torch.Tensor, tails: torch.Tensor) -> torch.Tensor:
        """The pair FFN up to its last Linear (``Dropout(ReLU(W_1 [h; t] + b_1))``): ``[P, k*D]``."""
        hidden_dim = self.pair_ffn[0].out_features
        if heads.numel() == 0:
            return ents.vectors.new_zeros((0, hidden_dim))
        dim = ents.vectors.shape[-1]
        num = ents.vectors.shape[0]
        first_h, first_t = self.head_ffn[0], self.tail_ffn[0]
        width = first_h.out_features
        # per entity: W_e e + b, for the head and the tail role  -> [N, k*D] each
        ent_h = F.linear(ents.vectors, first_h.weight[:, :dim], first_h.bias)
        ent_t = F.linear(ents.vectors, first_t.weight[:, :dim], first_t.bias)
        # context halves of both roles side by side: [D, 2*k*D]
        ctx_w = torch.cat([first_h.weight[:, dim:], first_t.weight[:, dim:]]).t()
        chunk = self.chunk_size + (self.chunk_size % 2)  # even: both orders stay in one chunk
        out = []
        for s in range(0, heads.numel(), chunk):
            h, t = heads[s : s + chunk], tails[s : s + chunk]
            key = torch.minimum(h, t) * num + torch.maximum(h, t)
            unordered, which = torch.unique(key, return_inverse=True)
            a, b = unordered // num, unordered % num
            alpha = ents.attention[a] * ents.attention[b]
            alpha = alpha / (alpha.sum(-1, keepdim=True) + 1e-10)
            context = alpha.to(ents.words.dtype) @ ents.words  # [U, D]
            projected = (context @ ctx_w.to(context.dtype)).index_select(0, which)  # [P, 2*k*D]
            # per pair only the additions: W_c c + (W_e e + b)
            hv = torch.tanh(self._rest(self.head_ffn, projected[:, :width] + ent_h[h]))
            tv = torch.tanh(self._rest(self.tail_ffn, projected[:, width:] + ent_t[t]))
            hidden = self.pair_ffn[2](self.pair_ffn[1](self.pair_ffn[0](torch.cat([hv, tv], -1))))
            out.append(hidden)
        return torch.cat(out) if len(out) > 1 else out[0]

    @staticmethod
    def logits(pairs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pairs @ labels.to(pairs.dtype).T
