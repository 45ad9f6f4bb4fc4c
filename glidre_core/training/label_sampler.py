"""Per-batch label sets for pretraining on corpora with many relation types.

With tens of thousands of relation types, scoring every pair against the whole vocabulary is
neither affordable nor useful. Each batch is scored against the union of its *positive* types plus
*negatives sampled from the global vocabulary* (a real negative pool, not just the other
documents' positives as in the reference code), with a cap on the number of labels per batch.
Labels not in a batch's set contribute nothing to the loss for that batch (the model's targets
only cover scored labels), so dropping positives past the cap is safe.
"""

from __future__ import annotations

import itertools
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any, Literal


class LabelSampler:
    """Draws the label set of one batch. Deterministic given its seed; its state is saved with
    checkpoints so a resumed run draws the same sets."""

    def __init__(
        self,
        vocabulary: Sequence[str],
        negatives: int,
        max_labels: int,
        seed: int,
        weighting: Literal["uniform", "frequency"] = "uniform",
        counts: Counter[str] | None = None,
    ):
        vocab = list(dict.fromkeys(vocabulary))
        if not vocab:
            raise ValueError("pretraining needs a non-empty label vocabulary")
        if max_labels < 1:
            raise ValueError("max_labels must be at least 1")
        self.vocabulary = vocab
        self.index = {lab: i for i, lab in enumerate(vocab)}
        self.negatives = negatives
        self.max_labels = max_labels
        self.weighting = weighting
        self.cum_weights: list[float] | None = None
        if weighting == "frequency":
            counts = counts or Counter()
            # smoothed counts^0.75 (word2vec-style): frequent types are harder negatives,
            # rare ones still get drawn; cumulative weights make each draw O(log V)
            self.cum_weights = list(itertools.accumulate((counts.get(lab, 0) + 1) ** 0.75 for lab in vocab))
        self.rng = random.Random(seed)

    def sample(self, positives: Iterable[str]) -> list[str]:
        """Positives (at most ``max_labels``) plus up to ``negatives`` distinct other labels."""
        pos = list(dict.fromkeys(positives))
        if len(pos) > self.max_labels:
            pos = self.rng.sample(pos, self.max_labels)
        want = min(self.negatives, self.max_labels - len(pos), len(self.vocabulary) - sum(1 for lab in pos if lab in self.index))
        chosen: list[str] = []
        if want > 0:
            taken = set(pos)
            if self.cum_weights is None:
                # oversample once, then top up: cheap for a large vocabulary and a small batch
                for i in self.rng.sample(range(len(self.vocabulary)), min(len(self.vocabulary), want + len(taken))):
                    lab = self.vocabulary[i]
                    if lab not in taken:
                        taken.add(lab)
                        chosen.append(lab)
                        if len(chosen) == want:
                            break
            while len(chosen) < want:
                if self.cum_weights is None:
                    draws = [self.vocabulary[self.rng.randrange(len(self.vocabulary))]]
                else:
                    draws = self.rng.choices(self.vocabulary, cum_weights=self.cum_weights, k=2 * (want - len(chosen)))
                for lab in draws:
                    if lab not in taken and len(chosen) < want:
                        taken.add(lab)
                        chosen.append(lab)
        return pos + chosen

    def get_state(self) -> Any:
        return self.rng.getstate()

    def set_state(self, state: Any) -> None:
        self.rng.setstate(state)
