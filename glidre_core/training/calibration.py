"""The decision threshold for relation labels a model never trained on, chosen on dev.

Why a second threshold: a label the model never saw in training gets far lower probabilities
than the labels it learned, because the scorer was only ever pushed *up* for trained labels. The
zero-shot protocol (configs/experiments/zero_shot_unseen.yaml) showed it: the 18 held-out types
were ranked well (gold facts above non-facts with AUC 0.93) while the dev threshold, chosen on
trained labels, predicted none of them (F1 0.0). A threshold chosen on the unseen labels
themselves would use labelled examples of them, which a zero-shot claim forbids.

The rule here: training also holds out a set of *pseudo-unseen* labels
(``TrainingConfig.unseen_calibration_labels``, listed in ``exclude_labels`` too). After training,
the best model scores the dev documents with only those labels as candidates, and one threshold
sweep over their dev facts picks ``GLiDREConfig.unseen_label_threshold``. At inference every
label outside ``config.labels`` uses it (:func:`glidre_core.inference.stored_thresholds`).
Neither the real unseen labels nor any test document takes part.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from glidre_core.documents import Document
from glidre_core.evaluation import dev_sweep
from glidre_core.modeling import GLiDRE
from glidre_core.readers import read_documents
from glidre_core.training.config import TrainingConfig

logger = logging.getLogger(__name__)

#: Candidates at or below this probability are never kept in the unseen-label sweep. Unseen
#: labels score far below the 0.05 floor of the trained-label sweep.
UNSEEN_FLOOR = 1e-4

#: File the trainer writes next to ``best/`` with the calibration's outcome.
CALIBRATION_FILE = "unseen_calibration.json"


@dataclass
class UnseenCalibration:
    """Outcome of :func:`calibrate_unseen_threshold` (``dev_f1`` as a fraction)."""

    threshold: float
    dev_f1: float
    labels: list[str]
    facts: int
    docs: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_documents(cfg: TrainingConfig, dev_ids: Sequence[str]) -> list[Document]:
    """The dev documents (``dev_ids``, in order) with only their ``unseen_calibration_labels``
    facts: read again from the dev file (or the training file for a hold-out), because training
    removed those labels from every document it keeps."""
    keep = set(cfg.unseen_calibration_labels)
    source = cfg.dev if cfg.dev is not None else cfg.train
    by_id = {d.doc_id: d for d in read_documents(source.path, source.format, on_error="skip", limit=source.limit)}
    missing = [i for i in dev_ids if i not in by_id]
    if missing:
        raise ValueError(f"dev documents {missing[:5]} are not in {source.path}: cannot calibrate unseen labels")
    return [by_id[i].model_copy(update={"relations": [r for r in by_id[i].relations if r.label in keep]})
            for i in dev_ids]


def calibrate_unseen_threshold(
    model: GLiDRE, docs: Sequence[Document], labels: Sequence[str], batch_size: int = 8
) -> UnseenCalibration:
    """One dev threshold sweep over ``docs`` with ``labels`` (labels the model did not train on)
    as the only candidates; sets ``model.config.unseen_label_threshold`` and returns the outcome.

    Raises when the documents hold no fact of those labels (nothing to choose on), or when one
    of ``labels`` is a label the model trained on (it would not stand in for an unseen one)."""
    labels = list(dict.fromkeys(labels))
    trained = {model.config.normalize_label(lab) for lab in model.config.labels}
    overlap = [lab for lab in labels if model.config.normalize_label(lab) in trained]
    if overlap:
        raise ValueError(f"calibration labels {overlap} were trained on: they cannot stand in for unseen labels")
    facts = sum(1 for d in docs for r in d.relations if r.label in set(labels))
    if facts == 0:
        raise ValueError(f"the {len(docs)} calibration documents hold no fact of {labels}")
    sweep = dev_sweep(model, docs, labels, floor=UNSEEN_FLOOR, batch_size=batch_size)
    if sweep.best_f1 <= 0:
        logger.warning("unseen-label calibration: no threshold finds any of the %d dev facts; keeping %.4g",
                       facts, sweep.best_threshold)
    model.config.unseen_label_threshold = sweep.best_threshold
    out = UnseenCalibration(sweep.best_threshold, sweep.best_f1, labels, facts, len(docs))
    logger.info("unseen-label threshold %.4g (dev F1 %.2f on %d facts of %d pseudo-unseen labels, %d docs)",
                out.threshold, 100 * out.dev_f1, facts, len(labels), len(docs))
    return out


def calibrate_saved_model(
    cfg: TrainingConfig, best_dir: Path, dev_ids: Sequence[str], device: Any = "cpu"
) -> UnseenCalibration:
    """Calibrate the model saved in ``best_dir`` and write its threshold into its config.json
    (the weights are untouched) and the outcome next to it (:data:`CALIBRATION_FILE`)."""
    model = GLiDRE.from_pretrained(best_dir, device=device)
    docs = calibration_documents(cfg, dev_ids)
    out = calibrate_unseen_threshold(model, docs, cfg.unseen_calibration_labels, batch_size=cfg.batch_size)
    model.config.save(best_dir)
    (Path(best_dir).parent / CALIBRATION_FILE).write_text(json.dumps(out.to_dict(), indent=1))
    return out
