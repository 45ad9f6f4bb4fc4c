"""Span-based entity recognition head (GLiNER style) and flat span decoding.

Candidate spans are all word spans up to ``max_width`` words. A span is represented, as in
GLiNER's ``markerV0``, by an FFN over the concatenation of its (projected) start and end word
vectors, and scored against entity-type embeddings from the shared label encoder:
``sigmoid(span . type)``. Entity types are plain strings, so any type set works zero-shot.

Cost. There are about ``W x max_width`` spans per document, as many as the encoder has
sub-words times ten, so the head is arranged to cost almost nothing per span:

* the first Linear of the span FFN acts on ``[s; e]`` and is split into a start half and an end
  half (``W [s; e] + b = W_s s + W_e e + b``), both computed once per *word*;
* its last Linear is folded into the type embeddings (``(W_o h + b_o) . t = h . (W_o^T t) +
  b_o . t``), so per span only an addition, a ReLU and a ``k*D x T`` product remain.

Both are the same function as the plain FFN (summation order aside), in training and inference.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from glidre_core.modeling.layers import FeedForward


def enumerate_spans(num_words: int, max_width: int, device: torch.device | None = None) -> torch.Tensor:
    """All ``[start, end)`` word spans with ``1 <= end - start <= max_width``: ``[S, 2]`` long,
    ordered by start, then width."""
    if max_width < 1:
        raise ValueError(f"max_width must be >= 1, got {max_width}")
    if num_words <= 0:
        return torch.zeros((0, 2), dtype=torch.long, device=device)
    starts = torch.arange(num_words, device=device).repeat_interleave(max_width)
    widths = torch.arange(1, max_width + 1, device=device).repeat(num_words)
    ends = starts + widths
    keep = ends <= num_words
    return torch.stack([starts[keep], ends[keep]], -1)


@dataclass(frozen=True)
class SpanPrediction:
    """One decoded span: words ``[start, end)``, the index of its type, and its probability."""

    start: int
    end: int
    type_index: int
    score: float


def decode_spans(
    spans: torch.Tensor,
    probs: torch.Tensor,
    threshold: float | torch.Tensor,
    flat: bool = True,
) -> list[SpanPrediction]:
    """Spans whose best type clears the threshold; with ``flat``, overlaps are resolved greedily
    by score (GLiNER's flat decoding): a span is kept only if it shares no word with a kept,
    higher-scoring span. Adjacent spans (``[0,2)`` and ``[2,3)``) do not overlap. Without
    ``flat``, nested spans are kept but partial (crossing) overlaps are still resolved.

    ``threshold`` is a float or a per-type tensor ``[T]``. Returns predictions in text order.
    """
    if spans.numel() == 0 or probs.numel() == 0:
        return []
    thr = torch.as_tensor(threshold, dtype=probs.dtype, device=probs.device)
    margin = probs - (thr if thr.dim() == 0 else thr.unsqueeze(0))
    above = margin > 0
    # the best type per span, among the types that clear their threshold
    masked = probs.masked_fill(~above, -1.0)
    best_p, best_t = masked.max(-1)
    cand = (best_p >= 0).nonzero().flatten()
    order = cand[torch.argsort(best_p[cand], descending=True, stable=True)].tolist()
    kept: list[tuple[int, int]] = []
    out: list[SpanPrediction] = []
    sp = spans.tolist()
    for i in order:
        s, e = sp[i]
        clash = False
        for ks, ke in kept:
            overlap = s < ke and ks < e
            if not overlap:
                continue
            nested = (ks <= s and e <= ke) or (s <= ks and ke <= e)
            if flat or not nested or (s, e) == (ks, ke):
                clash = True
                break
        if clash:
            continue
        kept.append((s, e))
        out.append(SpanPrediction(s, e, int(best_t[i]), float(best_p[i])))
    out.sort(key=lambda p: (p.start, p.end))
    return out


class SpanHead(nn.Module):
    """``span = FFN([FFN_start(h_s); FFN_end(h_e)])``; ``logit(span, type) = span . type``."""

    def __init__(self, dim: int, expansion: int, dropout: float, max_width: int, chunk_size: int = 16384):
        super().__init__()
        self.start_ffn = FeedForward(dim, dim, expansion, dropout)
        self.end_ffn = FeedForward(dim, dim, expansion, dropout)
        self.span_ffn = FeedForward(2 * dim, dim, expansion, dropout)
        self.type_ffn = FeedForward(dim, dim, expansion, dropout)
        self.max_width = max_width
        self.chunk_size = chunk_size

    def type_vectors(self, pooled_types: torch.Tensor) -> torch.Tensor:
        """Entity-type embeddings from the label encoder's pooled, projected type strings."""
        return self.type_ffn(pooled_types)

    def logits(self, words: torch.Tensor, spans: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """``[S, T]`` logits of ``spans`` (``[S, 2]``, word ``[start, end)``) against ``types``."""
        if spans.numel() == 0:
            return words.new_zeros((0, types.shape[0]))
        dim = words.shape[-1]
        first, last = self.span_ffn[0], self.span_ffn[3]
        start = F.linear(self.start_ffn(words), first.weight[:, :dim], first.bias)  # [W, kD]
        end = F.linear(self.end_ffn(words), first.weight[:, dim:])  # [W, kD]
        types = types.to(words.dtype)
        folded = types @ last.weight  # [T, kD]
        bias = types @ last.bias  # [T]
        out = []
        for s in range(0, spans.shape[0], self.chunk_size):
            chunk = spans[s : s + self.chunk_size]
            hidden = self.span_ffn[2](F.relu(start[chunk[:, 0]] + end[chunk[:, 1] - 1]))
            out.append(torch.addmm(bias, hidden, folded.t()))
        return torch.cat(out) if len(out) > 1 else out[0]

    def naive_logits(self, words: torch.Tensor, spans: torch.Tensor, types: torch.Tensor) -> torch.Tensor:
        """The unfactorised reference (tests): FFN over ``[start; end]``, then a dot product."""
        s = self.start_ffn(words)[spans[:, 0]]
        e = self.end_ffn(words)[spans[:, 1] - 1]
        return self.span_ffn(torch.cat([s, e], -1)) @ types.to(words.dtype).t()


#: words before a "." that mark an abbreviation, not a sentence end ("St. Louis", "Dr. Who")
ABBREVIATIONS = frozenset({"mr", "mrs", "ms", "dr", "st", "jr", "sr", "inc", "co", "corp", "ltd", "vs", "no", "mt", "ft", "gen", "gov", "sen", "rep", "prof"})


def sentence_breaks(words: Sequence[str], sentence_ends: Sequence[int] = ()) -> torch.Tensor:
    """``[W]`` bool: a sentence ends after word ``i``.

    Why: spans are represented by their first and last words only, so without this a span such
    as "Warsaw . Curie later worked in Paris" (a place at each end) can outscore the real
    mentions inside it. Entity mentions do not cross sentences, so decoding drops such spans.
    A break is a ``.``/``!``/``?`` word followed by a word that starts with an upper-case letter
    or a digit, unless the word before it is a short token or a known abbreviation ("U.S.",
    "St. Louis"); ``sentence_ends`` (word indices, e.g. from annotated sentences) are added.
    """
    out = torch.zeros(len(words), dtype=torch.bool)
    for i, w in enumerate(words[:-1]):
        if w not in (".", "!", "?") or i == 0:
            continue
        prev, nxt = words[i - 1], words[i + 1]
        if len(prev) <= 2 or prev.lower() in ABBREVIATIONS:
            continue
        if nxt[:1].isupper() or nxt[:1].isdigit():
            out[i] = True
    for i in sentence_ends:
        if 0 <= i < len(words):
            out[i] = True
    return out


def within_sentences(spans: torch.Tensor, breaks: torch.Tensor) -> torch.Tensor:
    """``[S]`` bool: the span has no sentence break before its last word."""
    if spans.numel() == 0:
        return torch.zeros(0, dtype=torch.bool)
    cum = torch.cat([torch.zeros(1, dtype=torch.long), breaks.long().cumsum(0)])
    # breaks at words start .. end-2 (a break on the last word is the span's own final ".")
    inside = cum[(spans[:, 1] - 1).clamp(min=0)] - cum[spans[:, 0]]
    return inside == 0
