"""The MLflow model registry for GLiDRE models.

A registered version is an MLflow *pyfunc* model whose artifact is the saved model directory
(``config.json`` + ``model.safetensors``): no torch module is pickled. The pyfunc is logged as
"models from code" (:mod:`glidre_core.pyfunc_entry`), so not even the wrapper is pickled.
Versions carry tags for the training data, the config hash, the git commit and the recorded
evaluation (metrics + a fingerprint of the evaluation documents), which is what
:mod:`glidre_core.promotion` compares. Stages are deprecated in MLflow 3: aliases
(``models:/NAME@ALIAS``) name the versions in use.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc

from glidre_core.tracking import RunHandle, client, resolve_tracking_uri

logger = logging.getLogger(__name__)

MODEL_ARTIFACT = "model_dir"  # name of the pyfunc artifact holding the saved model directory
LOGGED_MODEL_PATH = "registered_model"  # run artifact path of the pyfunc model
ENTRY_FILE = Path(__file__).resolve().parent / "pyfunc_entry.py"
EVAL_TAG = "eval."  # eval.f1, eval.ign_f1, ..., eval.data_fingerprint, eval.data
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))$")


class GLiDREPyfunc(mlflow.pyfunc.PythonModel):
    """Serving wrapper. Input: rows with ``text``, ``entities`` (list of {id, type?, mentions:
    [{start, end}]}) and optionally ``labels`` and ``doc_id``. Output: one list of relation rows
    per input row (see :meth:`GLiDRE.predict_documents`)."""

    def load_context(self, context) -> None:
        from glidre_core.modeling import GLiDRE

        self.model = GLiDRE.from_pretrained(context.artifacts[MODEL_ARTIFACT])

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        """Batched: rows are grouped by their label set (absent = the model's labels), and each
        group goes through one :class:`glidre_core.inference.Predictor` in batches
        (``params.batch_size``, default 8); rows come back in input order."""
        import json

        from glidre_core.documents import parse_document

        params = params or {}
        rows = model_input.to_dict(orient="records") if hasattr(model_input, "to_dict") else list(model_input)
        groups: dict[tuple[str, ...] | None, list[tuple[int, Any]]] = {}
        for i, row in enumerate(rows):
            ents = row["entities"]
            if isinstance(ents, str):
                ents = json.loads(ents)
            doc = parse_document({"doc_id": str(row.get("doc_id") or i), "text": row["text"], "entities": ents})
            labels = row.get("labels")
            if isinstance(labels, str):
                labels = json.loads(labels)
            key = tuple(labels) if labels is not None and len(labels) else None
            groups.setdefault(key, []).append((i, doc))
        out: list[Any] = [None] * len(rows)
        for labels, items in groups.items():
            predictor = self.model.predictor(
                relation_labels=list(labels) if labels else None, threshold=params.get("threshold"),
                batch_size=int(params.get("batch_size", 8)),
            )
            for (i, _), result in zip(items, predictor.predict([d for _, d in items])):
                out[i] = result
        return out


def package_version() -> str:
    try:
        return importlib.metadata.version("glidre-core")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def save_pyfunc(model_dir: str | Path, path: str | Path) -> Path:
    """Write the pyfunc model (MLmodel + artifacts/model_dir) to ``path``."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").exists():
        raise FileNotFoundError(f"{model_dir}: not a saved GLiDRE model (no config.json)")
    mlflow.pyfunc.save_model(
        path=str(path),
        python_model=str(ENTRY_FILE),
        artifacts={MODEL_ARTIFACT: str(model_dir)},
        # explicit requirements: inferring them would load the model in a subprocess
        pip_requirements=[f"glidre-core=={package_version()}"],
        metadata={"glidre": "GLiDRE document-level relation extraction", "format": "safetensors"},
    )
    return Path(path)


def register_model(
    handle: RunHandle, model_dir: str | Path, name: str, tags: dict[str, Any] | None = None,
    description: str | None = None,
):
    """Log ``model_dir`` as a pyfunc in the run and register it as a new version of ``name``."""
    from mlflow.exceptions import MlflowException

    c = client(handle.tracking_uri)
    with tempfile.TemporaryDirectory(prefix="glidre-pyfunc-") as tmp:
        local = save_pyfunc(model_dir, Path(tmp) / "pyfunc")
        c.log_artifacts(handle.run_id, str(local), LOGGED_MODEL_PATH)
    try:
        c.create_registered_model(name, description="GLiDRE relation extraction models")
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    source = f"{c.get_run(handle.run_id).info.artifact_uri}/{LOGGED_MODEL_PATH}"
    version = c.create_model_version(
        name, source, run_id=handle.run_id,
        tags={k: str(v) for k, v in (tags or {}).items()}, description=description,
    )
    logger.info("registered %s version %s from run %s", name, version.version, handle.run_id)
    return version


def evaluation_tags(final_eval: dict[str, Any], data_name: str, fingerprint: str) -> dict[str, str]:
    """Version tags recording an evaluation (what promotion compares).

    An evaluation on documents the model trained on (``dev_seen_in_training``, a refit run) is
    recorded under its own data name and fingerprint (``seen:`` prefix), so promotion never
    compares it with a held-out evaluation of the same documents: it would win by having
    memorised them."""
    if final_eval.get("dev_seen_in_training"):
        data_name, fingerprint = f"{data_name} (seen in training)", f"seen:{fingerprint}"
    tags = {f"{EVAL_TAG}{k}": repr(float(final_eval[k])) for k in ("f1", "ign_f1", "precision", "recall") if k in final_eval}
    tags[f"{EVAL_TAG}threshold"] = repr(float(final_eval.get("threshold", 0.0)))
    tags[f"{EVAL_TAG}docs"] = str(final_eval.get("docs", ""))
    tags[f"{EVAL_TAG}data"] = data_name
    tags[f"{EVAL_TAG}data_fingerprint"] = fingerprint
    return tags


def record_evaluation(name: str, version: str | int, final_eval: dict[str, Any], data_name: str,
                      fingerprint: str, tracking_uri: str | None = None) -> None:
    """Overwrite a version's recorded evaluation (e.g. after re-evaluating it on new data)."""
    c = client(tracking_uri)
    for k, v in evaluation_tags(final_eval, data_name, fingerprint).items():
        c.set_model_version_tag(name, str(version), k, v)


def set_alias(name: str, alias: str, version: str | int, tracking_uri: str | None = None) -> None:
    client(tracking_uri).set_registered_model_alias(name, alias, str(version))


def parse_model_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version)."""
    m = _URI.match(uri)
    if not m:
        raise ValueError(f"{uri!r} is not models:/NAME@ALIAS or models:/NAME/VERSION")
    return m["name"], m["alias"], m["version"]


def default_cache_dir() -> Path:
    base = os.environ.get("GLIDRE_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "glidre")
    return Path(base).expanduser() / "registry"


def download_model_dir(uri: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None) -> Path:
    """Local GLiDRE model directory of a registered version (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``).

    An alias is resolved to its version first, so the cache never serves a stale alias target.
    The cache directory is keyed on the version's identity, not only on its number: the tracking
    URI, the name, the version, and the version's run id, creation time and source. A store that
    is deleted and recreated at the same path (a test session's temporary sqlite file, a
    re-initialised server) numbers its versions from 1 again; keyed on the URI and number alone,
    the cache handed back the old store's weights for the new version 1."""
    import hashlib

    name, alias, version = parse_model_uri(uri)
    tracking_uri = resolve_tracking_uri(tracking_uri)
    c = client(tracking_uri)
    mv = c.get_model_version_by_alias(name, alias) if alias else c.get_model_version(name, version)
    identity = "\n".join([tracking_uri, name, str(mv.version), str(mv.run_id or ""),
                          str(mv.creation_timestamp or ""), str(mv.source or "")])
    key = hashlib.sha256(identity.encode()).hexdigest()[:16]
    target = Path(cache_dir) if cache_dir else default_cache_dir()
    target = target / name / f"{mv.version}-{key}"
    if (target / "MLmodel").exists():
        return model_artifact_dir(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".download-", dir=target.parent))
    try:
        # the version's own artifact location: a models:/ URI would be resolved against the
        # global registry URI, not the one given here
        source = c.get_model_version_download_uri(name, str(mv.version))
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(tmp), tracking_uri=tracking_uri)
        model_artifact_dir(Path(local))  # validates before the directory is published
        shutil.rmtree(target, ignore_errors=True)
        os.replace(local, target)  # atomic: concurrent loaders never see a half-written dir
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("downloaded %s (version %s) to %s", uri, mv.version, target)
    return model_artifact_dir(target)


def model_artifact_dir(pyfunc_dir: Path) -> Path:
    """The saved GLiDRE directory inside a downloaded pyfunc model (read from its MLmodel)."""
    import yaml

    mlmodel = pyfunc_dir / "MLmodel"
    if not mlmodel.exists():
        raise ValueError(f"{pyfunc_dir}: no MLmodel file (not an MLflow model)")
    meta = yaml.safe_load(mlmodel.read_text())
    try:
        rel = meta["flavors"]["python_function"]["artifacts"][MODEL_ARTIFACT]["path"]
    except (KeyError, TypeError):
        raise ValueError(f"{pyfunc_dir}: not a GLiDRE pyfunc model (no {MODEL_ARTIFACT!r} artifact)") from None
    model_dir = pyfunc_dir / rel
    if not (model_dir / "config.json").exists():
        raise ValueError(f"{model_dir}: the model artifact has no config.json")
    return model_dir
