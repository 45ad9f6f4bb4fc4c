"""Relation labels and per-label thresholds of an extraction run.

GLiDRE scores relation *strings*, so the label set is a run parameter, not part of the model. It
comes from (in this order of precedence in :func:`resolve_labels`):

* a list given in the YAML config;
* a named set: ``redocred`` = the 96 DocRED / Re-DocRED relation names shipped with the package
  (``glidre_core/resources/rel_info.json``);
* a file (local path or ``s3://`` URI), one label per line, blank lines and ``#`` comments ignored;
* ``None``: the labels the model was trained on (stored in its config).

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


def parse_label_lines(text: str) -> list[str]:
    """One label per line; strips whitespace, skips blank lines and ``#`` comments."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.append(line)
    return out


def check_distinct(labels: Sequence[str], normalize: Callable[[str], str] | None = None) -> None:
    """Raise on duplicates, also after the model's label normalisation (casing, underscores)."""
    seen: dict[str, str] = {}
    for lab in labels:
        key = normalize(lab) if normalize else lab
        if key in seen:
            raise LabelError(f"duplicate relation label {lab!r} (same as {seen[key]!r} for the model)")
        seen[key] = lab


def resolve_labels(
    spec: str | Sequence[str] | None,
    model_labels: Sequence[str] = (),
    storage: Storage | None = None,
    normalize: Callable[[str], str] | None = None,
) -> list[str]:
    """The run's label list from ``spec`` (see the module docstring)."""
    if spec is None:
        labels = list(model_labels)
        if not labels:
            raise LabelError("no relation labels given and the model stores none: pass --labels FILE or a named set")
        source = "the model's training labels"
    elif not isinstance(spec, str):
        labels = [str(x).strip() for x in spec]
        source = "the config"
    elif spec.lower() in NAMED_SETS:
        labels = NAMED_SETS[spec.lower()]()
        source = f"the named set {spec!r}"
    else:
        storage = storage or _local_storage()
        try:
            loc = storage.location(spec)
            data = read_bytes(loc.fs, loc.path)
        except (OSError, ValueError) as exc:
            raise LabelError(f"cannot read labels file {spec!r}: {exc}") from exc
        if data is None:
            raise LabelError(
                f"labels {spec!r}: no such file and not a named set ({', '.join(sorted(NAMED_SETS))})"
            )
        try:
            labels = parse_label_lines(data.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise LabelError(f"labels file {spec!r} is not UTF-8 text: {exc}") from exc
        source = f"file {spec!r}"
    if not labels or any(not lab for lab in labels):
        raise LabelError(f"empty relation label list or empty label in {source}")
    check_distinct(labels, normalize)
    logger.info("%d relation labels from %s", len(labels), source)
    return labels


def _local_storage() -> Storage:
    from glidre_core.extraction.config import StorageConfig

    return Storage(StorageConfig())


def threshold_spec(
    labels: Sequence[str], threshold: float | None, thresholds: dict[str, float]
) -> float | dict[str, float] | None:
    """What :meth:`GLiDRE._threshold_vector` takes: None (the model's), a float, or per label.

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
