"""Relation labels and per-label thresholds of an extraction run.

GLiDRE scores relation *strings*, so the label set is a run parameter, not part of the model. It
comes from (in this order of precedence in :func:`resolve_labels`):

* a list given in the YAML config;
* a named set: ``redocred`` = the 96 DocRED / Re-DocRED relation names shipped with the package
  (``glidre_core/resources/rel_info.json``);
* a file (local path or ``s3://`` URI), one label per line, blank lines and ``#`` comments ignored;
* ``None``: the labels the model was trained on (stored in its config).

Entity types (for documents given without entities, run through the model's span head) are
resolved the same way by :func:`resolve_entity_labels`, with their own named sets (``docred``,
``conll04``: the natural-language type names the bundled datasets train with).

Every problem (missing file, duplicates, a threshold for a label not in the set) is a
:class:`~glidre_core.extraction.errors.LabelError` raised before any document is read.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from glidre_core.extraction.errors import LabelError
from glidre_core.extraction.storage import Storage, read_bytes
from glidre_core.readers import load_rel_info

logger = logging.getLogger(__name__)


def _redocred() -> list[str]:
    return list(load_rel_info().values())


#: Named label sets accepted wherever a labels file is.
NAMED_SETS: dict[str, Callable[[], list[str]]] = {"redocred": _redocred, "docred": _redocred}


def _type_names(*codes: str) -> Callable[[], list[str]]:
    """The span head scores type *names*, so the named sets spell the dataset codes out with the
    same map training uses (``PER`` -> ``person``)."""
    from glidre_core.config import DEFAULT_ENTITY_TYPE_NAMES

    return lambda: [DEFAULT_ENTITY_TYPE_NAMES[c] for c in codes]


#: Named entity-type sets accepted wherever an entity types file is.
ENTITY_NAMED_SETS: dict[str, Callable[[], list[str]]] = {
    "docred": _type_names("PER", "ORG", "LOC", "TIME", "NUM", "MISC"),
    "redocred": _type_names("PER", "ORG", "LOC", "TIME", "NUM", "MISC"),
    "conll04": _type_names("Peop", "Org", "Loc", "Other"),
}


def parse_label_lines(text: str) -> list[str]:
    """One label per line; strips whitespace, skips blank lines and ``#`` comments."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def check_distinct(labels: Sequence[str], normalize: Callable[[str], str] | None = None,
                   kind: str = "relation label") -> None:
    """Raise on duplicates, also after the model's label normalisation (casing, underscores)."""
    seen: dict[str, str] = {}
    for lab in labels:
        key = normalize(lab) if normalize else lab
        if key in seen:
            raise LabelError(f"duplicate {kind} {lab!r} (same as {seen[key]!r} for the model)")
        seen[key] = lab


def resolve_labels(
    spec: str | Sequence[str] | None,
    model_labels: Sequence[str] = (),
    storage: Storage | None = None,
    normalize: Callable[[str], str] | None = None,
) -> list[str]:
    """The run's relation label list from ``spec`` (see the module docstring)."""
    return _resolve(spec, model_labels, storage, normalize, kind="relation label", named=NAMED_SETS,
                    flag="--labels")


def resolve_entity_labels(
    spec: str | Sequence[str] | None,
    model_types: Sequence[str] = (),
    storage: Storage | None = None,
    normalize: Callable[[str], str] | None = None,
) -> list[str]:
    """The run's entity types (span head models) from ``spec``, like :func:`resolve_labels`."""
    return _resolve(spec, model_types, storage, normalize, kind="entity type", named=ENTITY_NAMED_SETS,
                    flag="--entity-labels")


def _resolve(
    spec: str | Sequence[str] | None,
    model_labels: Sequence[str],
    storage: Storage | None,
    normalize: Callable[[str], str] | None,
    *,
    kind: str,
    named: dict[str, Callable[[], list[str]]],
    flag: str,
) -> list[str]:
    if spec is None:
        labels = list(model_labels)
        if not labels:
            raise LabelError(f"no {kind}s given and the model stores none: pass {flag} FILE or a named set")
        source = f"the model's training {kind}s"
    elif not isinstance(spec, str):
        labels = [str(x).strip() for x in spec]
        source = "the config"
    elif spec.lower() in named:
        labels = named[spec.lower()]()
        source = f"the named set {spec!r}"
    else:
        storage = storage or _local_storage()
        try:
            loc = storage.location(spec)
            data = read_bytes(loc.fs, loc.path)
        except (OSError, ValueError) as exc:
            raise LabelError(f"cannot read {kind}s file {spec!r}: {exc}") from exc
        if data is None:
            raise LabelError(
                f"{kind}s {spec!r}: no such file and not a named set ({', '.join(sorted(named))})"
            )
        try:
            labels = parse_label_lines(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LabelError(f"{kind}s file {spec!r} is not UTF-8 text: {exc}") from exc
        source = f"file {spec!r}"
    if not labels or any(not lab for lab in labels):
        raise LabelError(f"empty {kind} list or empty {kind} in {source}")
    check_distinct(labels, normalize, kind)
    logger.info("%d %ss from %s", len(labels), kind, source)
    return labels


def _local_storage() -> Storage:
    from glidre_core.extraction.config import StorageConfig

    return Storage(StorageConfig())


def threshold_spec(
    labels: Sequence[str], threshold: float | None, thresholds: dict[str, float]
) -> float | dict[str, float] | None:
    """What :class:`glidre_core.inference.Predictor` takes as ``threshold``: None (the model's), a float, or per label.

    Per-label entries override the global value (or the model's threshold when no global value
    is set, which the model fills in for labels missing from the dict).
    """
    unknown = sorted(set(thresholds) - set(labels))
    if unknown:
        raise LabelError(f"thresholds given for labels that are not in the label set: {unknown[:5]}")
    if not thresholds:
        return threshold
    if threshold is None:
        return dict(thresholds)
    return {lab: float(thresholds.get(lab, threshold)) for lab in labels}


def entity_threshold_spec(
    types: Sequence[str], threshold: float | dict[str, float] | None
) -> float | dict[str, float] | None:
    """What :class:`glidre_core.inference.Predictor` takes as ``entity_threshold``; a per-type dict may only name types of
    the run (types missing from it use the model's dev-chosen entity threshold)."""
    if isinstance(threshold, dict):
        unknown = sorted(set(threshold) - set(types))
        if unknown:
            raise LabelError(f"entity_threshold given for types that are not in the entity types: {unknown[:5]}")
        return {t: float(v) for t, v in threshold.items()}
    return threshold
