"""Label encoder: relation labels (plain strings) -> vectors in the model space.

A label embedding is the masked mean of the label encoder's token states (the sentence-embedding
recipe), projected to the model width and passed through a 2-layer FFN. Label embeddings do not
depend on the document, so callers compute them once per label set (:class:`LabelEmbeddings`)
and reuse them for every document. When the label encoder itself is frozen, the pooled encoder
outputs are also memoised per label string, so training pays for each label exactly once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from glidre_core.modeling.layers import FeedForward


@dataclass
class LabelEmbeddings:
    """Label strings and their embeddings ``[R, D]``: the reusable output of ``encode_labels``."""

    labels: list[str]
    vectors: torch.Tensor

    def __len__(self) -> int:
        return len(self.labels)


class LabelEncoder(nn.Module):
    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        out_dim: int,
        expansion: int,
        dropout: float,
        trainable: bool,
        residual: bool = False,
        noise: float = 0.0,
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        width = model.config.hidden_size
        self.projection = nn.Linear(width, out_dim) if width != out_dim else nn.Identity()
        self.ffn = FeedForward(out_dim, out_dim, expansion, dropout)
        self.trainable = trainable
        self.residual = residual
        self.noise = noise
        if residual:
            # start as the identity on the (projected) sentence embedding; see GLiDREConfig.label_head
            nn.init.zeros_(self.ffn[3].weight)
            nn.init.zeros_(self.ffn[3].bias)
        model.requires_grad_(trainable)
        self._pooled_cache: dict[str, torch.Tensor] = {}

    def train(self, mode: bool = True) -> "LabelEncoder":
        """A frozen label encoder stays in eval mode (no dropout), so the embeddings cached during
        training are the same ones inference computes."""
        super().train(mode)
        if not self.trainable:
            self.model.eval()
        return self

    def _pool(self, labels: list[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        enc = self.tokenizer(labels, padding=True, truncation=True, max_length=64, return_tensors="pt").to(device)
        states = self.model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def pooled(self, labels: Sequence[str | tuple[str, ...]]) -> torch.Tensor:
        """``[R, H]`` sentence embeddings; a tuple of strings is embedded as the mean of its
        strings' embeddings (a label and its description, ``label_description_mode: mean``)."""
        if any(isinstance(lab, tuple) for lab in labels):
            groups = [lab if isinstance(lab, tuple) else (lab,) for lab in labels]
            flat = list(dict.fromkeys(t for g in groups for t in g))
            row = {t: i for i, t in enumerate(flat)}
            vectors = self.pooled(flat)
            return torch.stack([vectors[[row[t] for t in g]].mean(0) for g in groups])
        labels = list(labels)
        if self.trainable:
            # weights that train are not memoised: an embedding cached at one dev evaluation
            # would be stale at the next (callers such as Predictor keep their own vectors)
            return self._pool(labels)
        missing = [lab for lab in dict.fromkeys(labels) if lab not in self._pooled_cache]
        if missing:
            with torch.no_grad():
                for lab, vec in zip(missing, self._pool(missing)):
                    self._pooled_cache[lab] = vec.float()
        return torch.stack([self._pooled_cache[lab] for lab in labels])

    def clear_cache(self) -> None:
        self._pooled_cache.clear()

    def _map(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ffn(x)
        return x + out if self.residual else out

    def forward(self, labels: Sequence[str | tuple[str, ...]]) -> torch.Tensor:
        x = self.projection(self.pooled(labels))
        if self.noise > 0 and self.training:
            scale = x.detach().pow(2).mean(-1, keepdim=True).sqrt()
            x = x + self.noise * scale * torch.randn_like(x)
        return self._map(x)

    def anchor_penalty(self, labels: Sequence[str | tuple[str, ...]]) -> torch.Tensor:
        """``mean ||map(x) - x||^2 / mean ||x||^2`` over ``labels``: how far the label map moves
        labels away from their sentence embeddings (``x``: the projected pooled embedding). A
        training regulariser for zero-shot transfer to label strings training never saw."""
        x = self.projection(self.pooled(labels))
        moved = (self._map(x) - x).pow(2).sum(-1).mean()
        return moved / x.detach().pow(2).sum(-1).mean().clamp(min=1e-12)
