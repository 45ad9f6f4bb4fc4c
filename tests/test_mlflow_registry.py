"""MLflow tracking and the model registry against a real sqlite MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from click.testing import CliRunner

from conftest import tiny_config
from glidre_core import GLiDRE
from glidre_core.readers import read_documents
from glidre_core.tracking import (
    RunTracker,
    config_hash,
    documents_fingerprint,
    open_run,
    resolve_tracking_uri,
)
from glidre_core.training import TrainingConfig
from glidre_core.training.config import MLflowSection
from paths import SHARED_DATA

REDOCRED_DEV = str(SHARED_DATA / "redocred" / "dev_revised.json")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def docs():
    return read_documents(REDOCRED_DEV, "docred", limit=6)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, docs) -> Path:
    torch.manual_seed(3)
    labels = sorted({r.label for d in docs for r in d.relations})
    model = GLiDRE(tiny_config(labels=labels, threshold=0.45))
    return model.save_pretrained(tmp_path_factory.mktemp("model") / "tiny")


def test_tracking_uri_defaults_to_an_absolute_sqlite_path(monkeypatch, tmp_path):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert resolve_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    assert resolve_tracking_uri() == "http://mlflow.internal:5000"
    assert resolve_tracking_uri("sqlite:///x/y.db") == f"sqlite:///{tmp_path / 'x/y.db'}"


def test_fingerprints_identify_documents_and_configs(docs, tmp_path):
    assert documents_fingerprint(docs) == documents_fingerprint(list(reversed(docs)))
    changed = [docs[0].model_copy(update={"relations": docs[0].relations[1:]}), *docs[1:]]
    assert documents_fingerprint(changed) != documents_fingerprint(docs)
    assert documents_fingerprint(docs[:5]) != documents_fingerprint(docs)
    cfg = TrainingConfig.model_validate({"train": {"path": "a.json"}, "output_dir": str(tmp_path)})
    assert config_hash(cfg) == config_hash(cfg.model_copy(deep=True))
    assert config_hash(cfg) != config_hash(cfg.model_copy(update={"seed": 14}))


def test_run_is_reopened_by_name_and_logs_metrics_and_plots(mlflow_uri, docs):
    from mlflow import MlflowClient

    section = MLflowSection(tracking_uri=mlflow_uri, experiment="tracking-tests")
    handle = open_run(section, "run-a")
    again = open_run(section, "run-a")
    assert again.run_id == handle.run_id and again.resumed and not handle.resumed
    assert open_run(section, "run-b").run_id != handle.run_id

    tracker = RunTracker(handle)
    history = [
        {"step": 2, "train_loss": 1.5, "dev_f1": 0.2, "dev_ign_f1": 0.18, "dev_threshold": 0.4, "lr_heads": 1e-4},
        {"step": 4, "train_loss": 1.1, "dev_f1": 0.3, "dev_ign_f1": 0.25, "dev_threshold": 0.45, "lr_heads": 5e-5,
         "saved": True},
    ]
    for record in history:
        tracker.log_eval(record)
    final_eval = {"f1": 0.3, "ign_f1": 0.25, "precision": 0.4, "recall": 0.24, "threshold": 0.45, "docs": 6,
                  "per_relation": {"country": {"f1": 0.5, "gold": 4}, "located in": {"f1": 0.1, "gold": 2}}}
    tracker.log_final(history, final_eval, [(0.05 * i, 0.01 * i) for i in range(1, 20)])
    tracker.finish()

    c = MlflowClient(mlflow_uri)
    assert [(m.step, m.value) for m in c.get_metric_history(handle.run_id, "dev_f1")] == [(2, 0.2), (4, 0.3)]
    assert c.get_metric_history(handle.run_id, "final_ign_f1")[0].value == 0.25
    assert "saved" not in c.get_run(handle.run_id).data.metrics  # only numeric dev metrics
    local = Path(c.download_artifacts(handle.run_id, "plots", str(Path(mlflow_uri[len("sqlite:///"):]).parent / "dl")))
    for name in ("training_curves.png", "f1_vs_threshold.png", "per_relation_f1.png"):
        assert (local / name).read_bytes()[:8] == PNG, name
    assert c.get_run(handle.run_id).info.status == "FINISHED"


def test_registered_version_is_a_pyfunc_of_the_saved_directory(mlflow_uri, saved_model, docs, tmp_path, monkeypatch):
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from glidre_core import registry
    from glidre_core.model_loading import load_model

    handle = open_run(MLflowSection(tracking_uri=mlflow_uri, experiment="registry-tests"), "register")
    mv = registry.register_model(handle, saved_model, "glidre-registry-test", tags={"glidre.config_hash": "abc"})
    registry.set_alias("glidre-registry-test", "staging", mv.version, mlflow_uri)

    c = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    assert c.get_model_version_by_alias("glidre-registry-test", "staging").version == mv.version
    assert c.get_model_version("glidre-registry-test", mv.version).tags["glidre.config_hash"] == "abc"

    # the artifacts are the safetensors directory and code: nothing pickled
    root = Path(c.download_artifacts(handle.run_id, registry.LOGGED_MODEL_PATH, str(tmp_path)))
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
    assert not [f for f in files if f.endswith((".pkl", ".pt", ".pth", ".bin"))]
    assert {"MLmodel", "pyfunc_entry.py"} <= files
    assert any(f.endswith("model.safetensors") for f in files) and any(f.endswith("config.json") for f in files)

    # models:/NAME@ALIAS loads back through the one model loader, with the same weights
    cache = tmp_path / "cache"
    monkeypatch.setenv("GLIDRE_CACHE", str(cache))
    loaded = load_model("models:/glidre-registry-test@staging", tracking_uri=mlflow_uri)
    original = GLiDRE.from_pretrained(saved_model)
    a, b = original.state_dict(), loaded.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert loaded.config.threshold == 0.45
    # ... also through MLFLOW_TRACKING_URI, and served from the cache the second time
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    assert registry.download_model_dir("models:/glidre-registry-test@staging").is_relative_to(cache)
    assert load_model(f"models:/glidre-registry-test/{mv.version}").config.labels == original.config.labels

    # the pyfunc predicts relation rows (MLflow resolves models:/ through MLFLOW_TRACKING_URI)
    pyfunc = mlflow.pyfunc.load_model("models:/glidre-registry-test@staging")
    doc = docs[0]
    rows = pyfunc.predict([{"doc_id": doc.doc_id, "text": doc.text,
                            "entities": [e.model_dump() for e in doc.entities], "labels": ["country"]}])
    assert len(rows) == 1 and all(r["relation"] == "country" for r in rows[0])

    with pytest.raises(ValueError, match="models:/NAME@ALIAS"):
        registry.parse_model_uri("models:/only-a-name")


def test_a_recreated_store_at_the_same_path_never_gets_the_old_cached_weights(tmp_path):
    """A store deleted and recreated at the same path numbers its versions from 1 again: the
    cache must hand back the new version 1, not the old store's (a cache keyed on the tracking URI
    and version number alone once made CI compare a registered model with a stale download).

    Each store lives in its own process, as across two test sessions (MLflow keeps one engine per
    sqlite URI in a process, so a file cannot be swapped under it)."""
    import shutil
    import subprocess
    import sys

    cache, store = tmp_path / "cache", tmp_path / "store"
    script = """
import os, sys, torch
sys.path.insert(0, sys.argv[4])
from conftest import tiny_config
os.environ["GLIDRE_CACHE"] = sys.argv[5]  # importing conftest points it at a fresh directory
from glidre_core import GLiDRE, registry
from glidre_core.model_loading import load_model
from glidre_core.tracking import open_run
from glidre_core.training.config import MLflowSection
uri, seed, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
torch.manual_seed(seed)
model_dir = GLiDRE(tiny_config(labels=["country"])).save_pretrained(out)
handle = open_run(MLflowSection(tracking_uri=uri, experiment="recreated"), "r")
assert str(registry.register_model(handle, model_dir, "glidre-recreated").version) == "1"
got = load_model("models:/glidre-recreated/1", tracking_uri=uri).state_dict()
want = GLiDRE.from_pretrained(model_dir).state_dict()
assert all(torch.equal(got[k], v) for k, v in want.items()), "the download is not the registered model"
"""
    for seed in (1, 2):
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(tmp_path / "mlruns", ignore_errors=True)
        store.mkdir()
        proc = subprocess.run(
            [sys.executable, "-c", script, f"sqlite:///{store / 'mlflow.db'}", str(seed),
             str(tmp_path / f"model{seed}"), str(Path(__file__).parent), str(cache)],
            cwd=tmp_path, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, f"seed {seed}: {proc.stderr[-3000:]}"
    a = GLiDRE.from_pretrained(tmp_path / "model1").state_dict()
    b = GLiDRE.from_pretrained(tmp_path / "model2").state_dict()
    assert not all(torch.equal(a[k], b[k]) for k in a)  # two different models were registered as 1
    assert len(list((cache / "registry" / "glidre-recreated").iterdir())) == 2


def test_evaluate_cli_accepts_a_registry_reference(mlflow_uri, saved_model, monkeypatch, tmp_path):
    from glidre_core import registry
    from glidre_core.cli import main

    handle = open_run(MLflowSection(tracking_uri=mlflow_uri, experiment="registry-tests"), "cli-eval")
    mv = registry.register_model(handle, saved_model, "glidre-cli-test")
    registry.set_alias("glidre-cli-test", "champion", mv.version, mlflow_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    monkeypatch.setenv("GLIDRE_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "eval.json"
    res = CliRunner().invoke(main, ["evaluate", "--model", "models:/glidre-cli-test@champion", "--data", REDOCRED_DEV,
                                    "--limit", "3", "--output-json", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads(out.read_text())["docs"] == 3


def test_glidre_train_in_process_tracks_and_registers(mlflow_uri, tmp_path):
    """`glidre train` with scaling.num_workers 0: the original loop in this process, plus MLflow."""
    from mlflow import MlflowClient

    from glidre_core.cli import main

    cfg = {
        "model": tiny_config(trainable_encoder_layers=1).model_dump(mode="json"),
        "train": {"path": REDOCRED_DEV, "format": "docred", "limit": 6},
        "dev_holdout": 2, "output_dir": str(tmp_path / "out"), "epochs": 2, "batch_size": 2, "eval_every": 2,
        "threads": 1,
        "mlflow": {"tracking_uri": mlflow_uri, "experiment": "cli-train", "register_as": "glidre-cli-train"},
    }
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(cfg))
    res = CliRunner().invoke(main, ["train", "--config", str(path), "--set", "max_steps=3", "--run-name", "cli-1"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.output[res.output.index("{"):])
    assert summary["registered"] == "models:/glidre-cli-train/1"
    assert Path(summary["best_dir"], "model.safetensors").exists()
    assert json.loads((tmp_path / "out" / "final_eval.json").read_text())["eval_data"]["docs"] == 2
    c = MlflowClient(mlflow_uri)
    run = c.get_run(summary["mlflow_run_id"])
    assert run.data.tags["glidre.run_name"] == "cli-1" and run.info.status == "FINISHED"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "dev_f1")] == [2, 3]
    assert run.data.params["max_steps"] == "3"
