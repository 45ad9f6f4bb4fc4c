"""Label augmentation: train on several phrasings of each relation label.

A model that trains on one string per relation type learns a label map that is only pinned down
at those few points of the sentence-embedding space (about 80 for Re-DocRED). A new label string
falls between them, where the map was never asked to be right, which is one reason unseen types
score as they do (README, "Zero-shot, measured"). Training on several phrasings of each type
("place of birth", "born in", "birthplace") asks the map to send a neighbourhood of each type to
one place. This is the issue's "several phrasings per label in training".

Rules, so that a run can be reproduced and resumed:
- each label of a batch's label set is replaced, independently with ``probability``, by one of its
  phrasings drawn uniformly; labels without phrasings keep their name;
- targets follow positions, not strings: the batch's facts are built from the canonical names and
  the label at position ``i`` is only *encoded* under another string;
- the draw depends on (seed, rank, micro-batch index) alone, so a resumed run draws what the
  uninterrupted run would have drawn, with no state in the checkpoint;
- a phrasing that would collide with a label of the set or a phrasing already drawn (after
  casing normalisation) is not a candidate for that batch; with none left the label keeps its name;
- dev evaluation, calibration and the saved model use the canonical names only.

The bundled ``docred`` set (``glidre_core/resources/docred_phrasings.json``) has three phrasings
for each of the 96 DocRED types, written for this project from the type names (not from any
document). A zero-shot run that excludes types never sees their phrasings: only labels of the
training label set are replaced.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from glidre_core.label_mapping import load_label_mapping
from glidre_core.readers import DATA_DIR

__all__ = ["NAMED_PHRASINGS", "LabelPhraser", "load_label_phrasings"]

#: named phrasing sets shipped with the package
NAMED_PHRASINGS = {"docred": DATA_DIR / "docred_phrasings.json"}


def _phrasings(value: object) -> list[str] | None:
    """A list of non-empty strings, stripped; None for anything else."""
    if not isinstance(value, list) or not all(isinstance(p, str) and p.strip() for p in value):
        return None
    return [p.strip() for p in value]


def load_label_phrasings(source: str | Path) -> dict[str, list[str]]:
    """``{label: [phrasing, ...]}`` from a named set (``docred``) or a JSON / YAML file.

    Raises ``ValueError`` naming the file and the entry when the mapping is malformed."""
    return load_label_mapping(source, NAMED_PHRASINGS, "label phrasings", _phrasings, "a list of non-empty strings")


class LabelPhraser:
    """Draws the strings a batch's labels are encoded under (see the module docstring)."""

    def __init__(
        self,
        phrasings: Mapping[str, Sequence[str]],
        probability: float,
        seed: int,
        rank: int = 0,
        normalize: Callable[[str], str] = str.lower,
    ):
        if not 0.0 <= probability <= 1.0:
            raise ValueError(f"phrasing probability must be in [0, 1], got {probability}")
        self.phrasings = {lab: list(dict.fromkeys(ps)) for lab, ps in phrasings.items() if ps}
        self.probability = probability
        self.seed, self.rank = seed, rank
        self.normalize = normalize

    def covered(self, labels: Sequence[str]) -> list[str]:
        """The labels of ``labels`` that have phrasings (what a run logs, to catch a set that
        matches none of the training labels)."""
        return [lab for lab in labels if lab in self.phrasings]

    def draw(self, labels: Sequence[str], micro: int) -> list[str]:
        """The strings to encode ``labels`` under for micro-batch ``micro``: same length and
        order, each distinct after normalisation."""
        if self.probability == 0.0:
            return list(labels)
        rng = random.Random(f"{self.seed}:{self.rank}:{micro}")
        taken = {self.normalize(lab) for lab in labels}
        out: list[str] = []
        for lab in labels:
            # canonical names stay reserved, so no label is ever encoded as another label's name
            options = [p for p in self.phrasings.get(lab, ()) if self.normalize(p) not in taken]
            if options and rng.random() < self.probability:
                choice = options[rng.randrange(len(options))]
                taken.add(self.normalize(choice))
                out.append(choice)
            else:
                out.append(lab)
        return out
