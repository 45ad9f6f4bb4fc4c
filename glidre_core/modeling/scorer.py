"""Pair representations (localized context pooling + FFN heads) and label scoring, batched."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn
from torch.nn import functional as F

from glidre_core.modeling.batch import EntityIndex
from glidre_core.modeling.layers import FeedForward
from glidre_core.modeling.pooling import EntityRepresentations


class PairScorer(nn.Module):
    """r = FFN([tanh(FFN_h([e_h; c])); tanh(FFN_t([e_t; c]))]); logits = r . label_emb.

    ``c`` is the localized context: ``normalise(A_h * A_t) @ H``. The batch's unordered pairs
    come from one structural index (:mod:`.batch`, ``tril`` order) and are processed in chunks
    so memory is ``chunk x W`` whatever the number of entities; after the context product only
    the real pairs of a chunk go on (``index.pair_rows``), so padding costs no FFN work.

    The first Linear of ``FFN_h``/``FFN_t`` acts on a concatenation ``[e; c]``, so it is split
    (``W [e; c] + b = W_e e + W_c c + b``): the entity half is computed once per *entity*
    instead of once per pair. The context ``c`` is symmetric in ``h`` and ``t``, and so are its
    projections ``W_c c`` for the head and the tail role: for ``(h, t)`` and ``(t, h)`` they are
    computed once per unordered pair. Likewise the last Linear of the pair FFN is folded into
    the labels (:meth:`label_logits`): ``(W_o h + b_o) . l = h . (W_o^T l) + b_o . l``. All are
    the same function as the plain FFNs (summation order aside, ~1e-7 relative).

    :meth:`pair_representations` returns ``r`` itself (the last Linear applied per pair, not
    folded), for callers that compare pairs with each other (few-shot prototypes); the two
    share every step before the last Linear (:meth:`_pair_hidden`).
    """

    def __init__(self, dim: int, expansion: int, dropout: float, chunk_size: int | None):
        super().__init__()
        self.head_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.tail_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.pair_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.chunk_size = chunk_size  # None: the device's default (GLiDRE.pair_chunk_size)

    @staticmethod
    def _rest(ffn: FeedForward, hidden: torch.Tensor) -> torch.Tensor:
        """An FFN after its first Linear (ReLU -> Dropout -> Linear), on a pre-activation."""
        for layer in list(ffn)[1:]:
            hidden = layer(hidden)
        return hidden

    def folded_labels(self, labels: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """The pair FFN's last Linear folded into the labels: ``(W_o^T l, b_o . l)``."""
        last = self.pair_ffn[3]
        labels = labels.to(dtype)
        return labels @ last.weight.to(dtype), labels @ last.bias.to(dtype)

    def _pair_hidden(self, ents: EntityRepresentations, index: EntityIndex) -> Iterator[torch.Tensor]:
        """Per chunk of real unordered pairs, the pair FFN's input to its last Linear ``[V, 2, kD]``
        (ordered pair 0: head = low, tail = high; 1: head = high, tail = low)."""
        bsz, nmax, dim = ents.vectors.shape
        first_h, first_t = self.head_ffn[0], self.tail_ffn[0]
        width = first_h.out_features
        # per entity: W_e e + b, for the head and the tail role -> [B * N, k*D] each
        ent_h = F.linear(ents.vectors, first_h.weight[:, :dim], first_h.bias).reshape(bsz * nmax, -1)
        ent_t = F.linear(ents.vectors, first_t.weight[:, :dim], first_t.bias).reshape(bsz * nmax, -1)
        ctx_w = torch.cat([first_h.weight[:, dim:], first_t.weight[:, dim:]]).t()  # [D, 2kD]
        for start, size, r0, r1 in index.chunks:
            lo, hi = index.pair_low[start : start + size], index.pair_high[start : start + size]
            alpha = ents.attention.index_select(1, lo) * ents.attention.index_select(1, hi)  # [B, w, W]
            alpha = alpha / (alpha.sum(-1, keepdim=True) + 1e-10)
            context = torch.bmm(alpha.to(ents.words.dtype), ents.words)  # [B, w, D]
            # from here on, only the chunk's real pairs: [V, ...]
            context = context.reshape(bsz * size, dim).index_select(0, index.pair_rows[r0:r1])
            projected = context @ ctx_w.to(context.dtype)  # [V, 2kD]
            p_h, p_t = projected[:, :width], projected[:, width:]
            lo_f, hi_f = index.pair_low_flat[r0:r1], index.pair_high_flat[r0:r1]
            # ordered pair 0: head = low, tail = high; ordered pair 1: head = high, tail = low
            hv = torch.tanh(self._rest(self.head_ffn, torch.stack(
                [p_h + ent_h.index_select(0, lo_f), p_h + ent_h.index_select(0, hi_f)], 1)))
            tv = torch.tanh(self._rest(self.tail_ffn, torch.stack(
                [p_t + ent_t.index_select(0, hi_f), p_t + ent_t.index_select(0, lo_f)], 1)))
            yield self.pair_ffn[2](self.pair_ffn[1](self.pair_ffn[0](torch.cat([hv, tv], -1))))

    def forward(self, ents: EntityRepresentations, index: EntityIndex, labels: torch.Tensor) -> torch.Tensor:
        """Logits ``[P, R]`` of the batch's real ordered pairs against ``labels`` ``[R, D]``:
        per document, per unordered pair in ``tril`` order, (low->high, high->low)."""
        if not index.chunks:
            return ents.vectors.new_zeros((0, labels.shape[0]))
        folded, bias = self.folded_labels(labels, ents.vectors.dtype)
        out = [torch.matmul(hidden, folded.t()) + bias for hidden in self._pair_hidden(ents, index)]  # [V, 2, R]
        logits = (torch.cat(out) if len(out) > 1 else out[0]).reshape(-1, labels.shape[0])
        return logits if index.pair_perm is None else logits.index_select(0, index.pair_perm)

    def pair_representations(self, ents: EntityRepresentations, index: EntityIndex) -> torch.Tensor:
        """The pair vectors ``r`` ``[P, D]`` (the pair FFN's output) of the batch's real ordered
        pairs, in the rows of :meth:`forward`: ``forward(ents, index, labels) == r @ labels.T``
        (up to summation order). Nothing is folded here: the last Linear runs on every pair."""
        dim = ents.vectors.shape[-1]
        if not index.chunks:
            return ents.vectors.new_zeros((0, dim))
        last = self.pair_ffn[3]
        out = [last(hidden) for hidden in self._pair_hidden(ents, index)]  # [V, 2, D]
        reps = (torch.cat(out) if len(out) > 1 else out[0]).reshape(-1, dim)
        return reps if index.pair_perm is None else reps.index_select(0, index.pair_perm)
