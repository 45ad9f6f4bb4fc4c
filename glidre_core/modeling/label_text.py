"""Label descriptions: the text a relation label is *encoded* as, when it has a description.

A label name alone ("country", "part of") is a few words; the sentence encoder behind the label
side maps such short strings to points that say little about the relation's direction and
arguments, and a model trained on about 60 of them learns a label map pinned at those points
only. A one-line description ("sovereign state that this item is in") gives the encoder more to
go on for every label, trained or new, which is the issue's "relation descriptions ... as label
augmentation" (issue 12.4; ZS-BERT and the GLiNER line use the same idea).

Rules:
- a label with a description is encoded as ``"{name}: {description}"`` (mode ``append``; the name
  stays first so that the string still says which type it is), or as the mean of the sentence
  embeddings of its name and of its description (mode ``mean``: mean pooling over one long
  string lets the description's words outweigh the name's, and the name alone is what the
  names-only model is good at); labels without a description are encoded as their name alone,
  exactly as before;
- descriptions are keyed by the label's *normalised* name (``GLiDREConfig.normalize_label``), so
  ``country`` and ``Country`` share one; the output rows, targets and thresholds keep the names;
- the model's descriptions are part of its config (saved with it, so inference encodes what
  training encoded); a caller can add or override descriptions for new labels at inference
  (``GLiDRE.encode_labels(..., descriptions=...)``, ``Predictor(label_descriptions=...)``).

The bundled ``docred`` set (``glidre_core/resources/docred_descriptions.json``) has one line for
each of the 96 DocRED types, written for this project after Wikidata's property descriptions
(CC0), one rule for all 96: what the tail is, relative to the head ("this item", "the person").
It was written before any run used it, for all types at once, test types included: a user who
names a new type can describe it the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from glidre_core.label_mapping import load_label_mapping

__all__ = ["DESCRIPTION_MODES", "NAMED_DESCRIPTIONS", "describe_labels", "load_label_descriptions"]

#: how a description joins its label's name (GLiDREConfig.label_description_mode)
DESCRIPTION_MODES = ("append", "mean")

_RESOURCES = Path(__file__).resolve().parent.parent / "resources"
#: named description sets shipped with the package
NAMED_DESCRIPTIONS = {"docred": _RESOURCES / "docred_descriptions.json"}


def _description(value: object) -> str | None:
    """A non-empty string, whitespace collapsed; None for anything else."""
    return " ".join(value.split()) if isinstance(value, str) and value.strip() else None


def load_label_descriptions(source: str | Path) -> dict[str, str]:
    """``{label: description}`` from a named set (``docred``) or a JSON / YAML file.

    Raises ``ValueError`` naming the file and the entry when the mapping is malformed."""
    return load_label_mapping(source, NAMED_DESCRIPTIONS, "label descriptions", _description, "a non-empty string")


def describe_labels(
    labels: Sequence[str],
    descriptions: Mapping[str, str],
    normalize: Callable[[str], str],
    mode: str = "append",
) -> list[str | tuple[str, str]]:
    """What to encode normalised ``labels`` as, where ``descriptions`` (keys in any casing;
    normalised here) has one: ``"name: description"`` (``mode="append"``) or the pair
    ``(name, description)``, whose two sentence embeddings the label encoder averages
    (``mode="mean"``); a label without a description is its name."""
    if mode not in DESCRIPTION_MODES:
        raise ValueError(f"unknown label description mode {mode!r}; expected one of {DESCRIPTION_MODES}")
    if not descriptions:
        return list(labels)
    table = {normalize(k): v for k, v in descriptions.items()}
    if mode == "mean":
        return [(lab, table[lab]) if lab in table else lab for lab in labels]
    return [f"{lab}: {table[lab]}" if lab in table else lab for lab in labels]
