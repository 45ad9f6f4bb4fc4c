"""Small building blocks shared by the heads."""

from __future__ import annotations

from torch import nn


class FeedForward(nn.Sequential):
    """GLiDRE's FFN: Linear(in -> k*out) -> ReLU -> Dropout -> Linear(k*out -> out)."""

    def __init__(self, in_dim: int, out_dim: int, expansion: int = 4, dropout: float = 0.0):
        hidden = expansion * out_dim
        super().__init__(
            nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, out_dim)
        )
