"""``glidre adapt``: add relation types to a model from a few labelled documents.

The user gives 1 to 10 documents whose entities and relations of the new types are annotated
(any format :func:`glidre_core.readers.read_documents` reads) and the label strings. The
adaptation is the recipe chosen on FREDo dev episodes (:mod:`.adapt`):

* ``method="prototype"`` (the default, FREDo's): no weight changes. The support documents'
  pair vectors become per-label prototypes (:mod:`.prototype`), saved beside the unchanged
  weights as ``prototypes.safetensors`` + ``prototypes.json``. ``from_pretrained`` attaches them
  to the model and every :class:`glidre_core.inference.Predictor` over it scores those labels
  against them (the other labels as before), so ``glidre evaluate``/``extract``, the Ray job and
  the MLflow pyfunc all use them with no option. The old labels are untouched, exactly.
* ``method="finetune"``: the label FFN is trained on the support documents and the weights are
  saved; every label's scores move.

Either way the output is a normal model directory (``GLiDRE.from_pretrained`` / ``--model DIR``
load it), with ``adaptation.json`` beside it saying what was done.

Why a separate module: the FREDo runner adapts and throws the weights away after each episode;
this one adapts once, checks the inputs a user can get wrong (a label without any example), and
records the run (MLflow only when a tracking URI is given or ``$MLFLOW_TRACKING_URI`` is set;
through :mod:`glidre_core.tracking`'s public functions).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from glidre_core.documents import Document
from glidre_core.fewshot.adapt import AdaptationRecipe

logger = logging.getLogger(__name__)

ADAPTATION_FILE = "adaptation.json"
#: beyond this many documents the recipe is outside what it was chosen for (1 or 3 documents)
MAX_RECOMMENDED_DOCS = 10


def label_examples(docs: Sequence[Document], labels: Sequence[str], normalize) -> dict[str, int]:
    """Number of annotated facts of each label in ``docs`` (labels compared after the model's
    label normalisation, the way training targets match them)."""
    counts = {lab: 0 for lab in labels}
    by_norm = {normalize(lab): lab for lab in labels}
    for d in docs:
        for r in d.relations:
            lab = by_norm.get(normalize(r.label))
            if lab is not None and r.head != r.tail:
                counts[lab] += 1
    return counts


def _track(tracking_uri: str | None, experiment: str, run_name: str, params: dict[str, Any],
           losses: list[float], output: Path, record: dict[str, Any]) -> str | None:
    """Log the adaptation into MLflow when tracking is configured; returns the run id."""
    if not (tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")):
        return None
    from mlflow.entities import Metric, Param

    from glidre_core.tracking import RunTracker, flatten, open_run
    from glidre_core.training.config import MLflowSection

    handle = open_run(MLflowSection(tracking_uri=tracking_uri, experiment=experiment), run_name,
                      tags={"glidre.kind": "fewshot-adapt"})
    tracker = RunTracker(handle)
    try:
        tracker.client.log_batch(handle.run_id, params=[Param(k[:250], v) for k, v in flatten(params).items()])
        ts = int(time.time() * 1000)
        tracker.client.log_batch(handle.run_id, metrics=[Metric("adapt_loss", v, ts, i + 1) for i, v in enumerate(losses)])
        tracker.log_json(record, f"adaptation/{ADAPTATION_FILE}")
        tracker.client.log_artifacts(handle.run_id, str(output), "model")
        tracker.finish("FINISHED")
    except Exception:
        tracker.finish("FAILED")
        raise
    logger.info("MLflow run %s (%s) in %s", handle.run_id, run_name, handle.tracking_uri)
    return handle.run_id


def adapt_to_documents(
    model_ref: str,
    docs: Sequence[Document],
    labels: Sequence[str] | None,
    output: str | Path,
    recipe: AdaptationRecipe | None = None,
    *,
    overwrite: bool = False,
    tracking_uri: str | None = None,
    experiment: str = "glidre-fewshot",
    run_name: str | None = None,
) -> dict[str, Any]:
    """Adapt ``model_ref`` to ``labels`` (None = every label the documents use) on ``docs`` and
    save it to ``output``. Returns the record written to ``output/adaptation.json``.

    The saved model's ``labels`` are its old labels plus the new ones. With the default
    ``prototype`` recipe the weights and the old labels' scores are unchanged, and the new labels
    are decided at the recipe's threshold on their prototype probabilities; a label the model
    already had is scored by its prototypes from then on. A model directory holds one prototype
    set: adapting a prototype-adapted model replaces its prototypes (the labels only they held
    are dropped, with a warning). With ``finetune`` the heads change for every label, so the
    adapted model's quality on the old labels is not the original model's, and the model's
    ``threshold`` becomes the recipe's (when the recipe sets one).
    """
    from glidre_core.fewshot.adapt import HeadAdapter
    from glidre_core.model_loading import load_model
    from glidre_core.readers import relation_labels
    from glidre_core.tracking import documents_fingerprint, git_commit

    recipe = recipe or AdaptationRecipe()
    output = Path(output)
    if output.exists() and any(output.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{output} exists and is not empty (pass overwrite=True / --overwrite)")
        shutil.rmtree(output)
    docs = list(docs)
    if not docs:
        raise ValueError("no support documents")
    labels = list(labels) if labels else relation_labels(docs)
    if not labels:
        raise ValueError("no relation labels given and the documents have no relations")
    model = load_model(model_ref)
    examples = label_examples(docs, labels, model.config.normalize_label)
    empty = [lab for lab, n in examples.items() if n == 0]
    if empty:
        raise ValueError(f"labels without any annotated example in the documents: {empty}")
    if len(docs) > MAX_RECOMMENDED_DOCS:
        logger.warning("%d documents: the recipe was chosen for 1-3 documents (FREDo); with more, "
                       "consider glidre train with init_from", len(docs))
    norm = model.config.normalize_label
    start = time.perf_counter()
    adapter = HeadAdapter(model, recipe)
    update: dict[str, Any] = {}
    dropped: list[str] = []
    old_labels = list(model.config.labels)
    if recipe.method == "prototype":
        if model.prototypes is not None:
            wanted = {norm(lab) for lab in labels}
            dropped = [lab for lab in model.prototypes.labels if norm(lab) not in wanted]
            if dropped:
                logger.warning("%s holds prototypes; they are replaced, and the labels only they held are "
                               "dropped: %s", model_ref, dropped)
            gone = {norm(lab) for lab in dropped}
            old_labels = [lab for lab in old_labels if norm(lab) not in gone]
        model.prototypes = adapter.prototypes(docs, labels)
        losses: list[float] = []
    else:
        if model.prototypes is not None:
            raise ValueError(f"{model_ref} holds few-shot prototypes built on its current weights, which "
                             "fine-tuning would leave stale: fine-tune the model they were built on")
        losses = adapter.adapt(docs, labels)
        if recipe.threshold is not None:
            update["threshold"] = recipe.threshold
    seconds = time.perf_counter() - start
    known = {norm(lab) for lab in old_labels}
    update["labels"] = old_labels + [lab for lab in labels if norm(lab) not in known]
    model.config = model.config.model_copy(update=update)
    model.save_pretrained(output)
    record = {
        "base_model": model_ref, "labels": labels, "examples": examples, "documents": [d.doc_id for d in docs],
        "documents_sha256": documents_fingerprint(docs), "recipe": recipe.model_dump(),
        "threshold": recipe.threshold if recipe.method == "prototype" else model.config.threshold,
        "losses": losses, "seconds": seconds, "git_commit": git_commit(),
    }
    if model.prototypes is not None and recipe.method == "prototype":
        record["support_positives"] = dict(zip(model.prototypes.labels, model.prototypes.positives))
        record["replaced_prototype_labels"] = dropped
    (output / ADAPTATION_FILE).write_text(json.dumps(record, indent=2))
    logger.info("adapted %s to %d labels on %d documents (%s) in %.1fs%s; saved %s", model_ref, len(labels),
                len(docs), recipe.method, seconds,
                f" (loss {losses[0]:.4f} -> {losses[-1]:.4f})" if losses else "", output)
    run_id = _track(tracking_uri, experiment, run_name or f"adapt-{time.strftime('%Y%m%d-%H%M%S')}",
                    {"recipe": recipe.model_dump(), "base_model": model_ref, "labels": labels,
                     "documents": len(docs)}, losses, output, record)
    if run_id is not None:
        record["mlflow_run_id"] = run_id
        (output / ADAPTATION_FILE).write_text(json.dumps(record, indent=2))
    return record
