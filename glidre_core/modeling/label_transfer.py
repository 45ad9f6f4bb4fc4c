"""Scores for relation labels a model never trained on, borrowed from its trained neighbours.

A model trained on some relation types ranks facts of a new type well (ranking AUC 0.93 on
FREDo's 18 held-out types) but its own probability for a label string it never trained on is
not calibrated: at the dev threshold it predicts none of them. The probabilities of its
*trained* labels are calibrated, and related types co-occur on the same entity pairs (a
"country" pair often also holds "located in the administrative territorial entity"). So an
unseen label ``u`` can borrow them: with ``sim[u, s]`` the cosine similarity of the label
encoder's sentence embeddings of ``u`` and trained label ``s``,

    borrowed(pair, u) = sum_s w[u, s] * p(pair, s),   w[u] = softmax over the top-k sim[u, s] / tau

and the score of ``u`` is ``borrowed`` ("neighbours") or ``sqrt(borrowed * p(pair, u))``
("geomean"), which keeps the label's own ranking of pairs. Trained labels keep their own score.

The plan (:func:`plan_transfer`) is built once per label set, on the host; applying it
(:meth:`LabelTransfer.apply`) is one matrix product and one ``where`` on the device, inside the
batch's scoring, so it adds no host synchronisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from glidre_core.modeling.label_encoder import LabelEmbeddings

if TYPE_CHECKING:
    from glidre_core.modeling.glidre import GLiDRE

__all__ = ["LabelTransfer", "neighbour_weights", "plan_transfer"]


def neighbour_weights(sim: torch.Tensor, k: int, temperature: float) -> torch.Tensor:
    """``[U, S]`` weights: each row a softmax over its ``k`` largest similarities at
    ``temperature``, zero elsewhere (``k`` is capped at ``S``)."""
    k = min(k, sim.shape[1])
    top, idx = sim.topk(k, dim=1)
    return torch.zeros_like(sim).scatter(1, idx, torch.softmax(top / temperature, dim=1))


@dataclass
class LabelTransfer:
    """How a label set borrows scores: the trained labels scored alongside the requested ones
    (``extra``, appended after them), the ``[R, R + E]`` weights, and which requested labels
    are unseen (``[R]``)."""

    extra: LabelEmbeddings | None
    weights: torch.Tensor
    unseen: torch.Tensor
    geomean: bool

    def vectors(self, relations: LabelEmbeddings) -> torch.Tensor:
        """The ``[R + E, D]`` label vectors the pairs are scored against."""
        if self.extra is None:
            return relations.vectors
        return torch.cat([relations.vectors, self.extra.vectors.to(relations.vectors.dtype)], dim=0)

    def apply(self, probs: torch.Tensor) -> torch.Tensor:
        """``[P, R + E]`` probabilities -> ``[P, R]``: unseen labels borrow, the others keep theirs."""
        r = self.unseen.shape[0]
        own = probs[:, :r]
        borrowed = probs @ self.weights.to(probs.dtype).T
        if self.geomean:
            borrowed = (borrowed * own).clamp_min(0).sqrt()
        return torch.where(self.unseen, borrowed, own)


def plan_transfer(model: "GLiDRE", relations: LabelEmbeddings) -> LabelTransfer | None:
    """The transfer plan for ``relations`` under ``model.config.unseen_label_transfer``; None when
    it is "none", the model records no trained labels, or every requested label is trained."""
    cfg = model.config
    if cfg.unseen_label_transfer == "none" or not cfg.labels:
        return None
    norm = cfg.normalize_label
    trained = list(dict.fromkeys(norm(lab) for lab in cfg.labels))
    trained_set = set(trained)
    requested = [norm(lab) for lab in relations.labels]
    unseen = [lab not in trained_set for lab in requested]
    if not any(unseen):
        return None
    requested_set = set(requested)
    extra_labels = [lab for lab in trained if lab not in requested_set]
    extra = model.encode_labels(extra_labels) if extra_labels else None
    columns = requested + extra_labels
    seen_cols = [j for j, lab in enumerate(columns) if lab in trained_set]
    unseen_rows = [i for i, u in enumerate(unseen) if u]
    vecs = model.label_sentence_vectors([columns[i] for i in unseen_rows] + [columns[j] for j in seen_cols])
    sim = vecs[: len(unseen_rows)] @ vecs[len(unseen_rows):].T
    weights = torch.zeros(len(requested), len(columns), device=sim.device)
    w = neighbour_weights(sim.float(), cfg.unseen_label_neighbours, cfg.unseen_label_temperature)
    weights[torch.tensor(unseen_rows, device=sim.device)[:, None], torch.tensor(seen_cols, device=sim.device)[None, :]] = w
    return LabelTransfer(extra, weights, torch.tensor(unseen, device=sim.device), cfg.unseen_label_transfer == "geomean")
