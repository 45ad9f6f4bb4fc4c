"""Gated promotion against a real sqlite MLflow registry.

Versions carry *real* recorded evaluations: a tiny model evaluated on Re-DocRED documents at a
low threshold (it predicts almost every pair: F1 > 0) and at a high one (it predicts nothing:
F1 = 0), and one evaluated on different documents.
"""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from conftest import tiny_config
from glidre_core import GLiDRE
from glidre_core.evaluation import evaluate_model
from glidre_core.promotion import PromotionError, promote
from glidre_core.readers import read_documents
from glidre_core.tracking import client, documents_fingerprint, open_run
from glidre_core.training.config import MLflowSection
from paths import SHARED_DATA

REDOCRED_DEV = str(SHARED_DATA / "redocred" / "dev_revised.json")
NAME = "glidre-promotion-test"


@pytest.fixture(scope="module")
def registered(mlflow_uri, tmp_path_factory) -> dict[str, str]:
    """Versions: weak (F1 0), strong (F1 > 0), weak2 (F1 0), other_data (different documents),
    seen (F1 > 0 on the same documents, but flagged as seen in training: a refit run)."""
    from glidre_core import registry

    docs = read_documents(REDOCRED_DEV, "docred", limit=4)
    other = read_documents(REDOCRED_DEV, "docred", limit=3)
    torch.manual_seed(0)
    labels = sorted({r.label for d in docs for r in d.relations})
    model = GLiDRE(tiny_config(labels=labels))
    model_dir = model.save_pretrained(tmp_path_factory.mktemp("promo") / "model")
    handle = open_run(MLflowSection(tracking_uri=mlflow_uri, experiment="promotion-tests"), "promotion")
    versions = {}
    for key, threshold, data in (("weak", 0.99, docs), ("strong", 0.01, docs), ("weak2", 0.99, docs),
                                 ("other_data", 0.01, other)):
        ev = evaluate_model(model, data, threshold=threshold)
        tags = registry.evaluation_tags(ev, f"redocred dev first {len(data)}", documents_fingerprint(data))
        versions[key] = str(registry.register_model(handle, model_dir, NAME, tags=tags).version)
        versions[key + "_f1"] = ev["f1"]
    # a refit's evaluation: the same documents, but the model trained on them
    ev = {**evaluate_model(model, docs, threshold=0.01), "dev_seen_in_training": True}
    tags = registry.evaluation_tags(ev, f"redocred dev first {len(docs)}", documents_fingerprint(docs))
    versions["seen"] = str(registry.register_model(handle, model_dir, NAME, tags=tags).version)
    assert versions["strong_f1"] > 0 and versions["weak_f1"] == 0 == versions["weak2_f1"]
    return versions


def holder(mlflow_uri, alias):
    from mlflow.exceptions import MlflowException

    try:
        return str(client(mlflow_uri).get_model_version_by_alias(NAME, alias).version)
    except MlflowException:
        return None


def test_first_then_better_candidate_is_promoted_with_who_why_what(registered, mlflow_uri):
    v = registered
    first = promote(NAME, v["weak"], alias="a-better", tracking_uri=mlflow_uri, actor="alice")
    assert first.promote and first.applied and first.champion_version is None
    better = promote(NAME, v["strong"], alias="a-better", min_delta=0.0001, tracking_uri=mlflow_uri, actor="bob")
    assert better.applied and better.champion_version == v["weak"]
    assert better.delta == pytest.approx(v["strong_f1"])
    assert holder(mlflow_uri, "a-better") == v["strong"]
    tags = client(mlflow_uri).get_model_version(NAME, v["strong"]).tags
    assert tags["promotion.a-better.by"] == "bob"
    assert tags["promotion.a-better.what"] == f"@a-better: v{v['weak']} -> v{v['strong']}"
    assert "beats" in tags["promotion.a-better.why"] and tags["promotion.a-better.forced"] == "false"
    old = client(mlflow_uri).get_model_version(NAME, v["weak"]).tags
    assert old["promotion.a-better.replaced_by"].startswith(f"v{v['strong']}")
    assert "candidate" in better.report() and "promoted" in better.report()


def test_worse_candidate_is_refused_and_force_needs_a_reason(registered, mlflow_uri):
    v = registered
    promote(NAME, v["strong"], alias="b-worse", tracking_uri=mlflow_uri)
    worse = promote(NAME, v["weak2"], alias="b-worse", tracking_uri=mlflow_uri)
    assert not worse.promote and not worse.applied and worse.delta < 0
    assert holder(mlflow_uri, "b-worse") == v["strong"]
    assert "promotion.b-worse.by" not in client(mlflow_uri).get_model_version(NAME, v["weak2"]).tags
    with pytest.raises(PromotionError, match="reason"):
        promote(NAME, v["weak2"], alias="b-worse", force=True, tracking_uri=mlflow_uri)
    forced = promote(NAME, v["weak2"], alias="b-worse", force=True, reason="rollback: v-strong misbehaves in prod",
                     tracking_uri=mlflow_uri, actor="carol")
    assert forced.applied and forced.forced
    tags = client(mlflow_uri).get_model_version(NAME, v["weak2"]).tags
    assert tags["promotion.b-worse.why"] == "rollback: v-strong misbehaves in prod"
    assert tags["promotion.b-worse.forced"] == "true"
    assert holder(mlflow_uri, "b-worse") == v["weak2"]


def test_min_delta_gates_a_small_improvement(registered, mlflow_uri):
    v = registered
    promote(NAME, v["weak"], alias="c-delta", tracking_uri=mlflow_uri)
    small = promote(NAME, v["strong"], alias="c-delta", min_delta=v["strong_f1"] + 0.01, tracking_uri=mlflow_uri)
    assert not small.promote and "below min-delta" in small.explanation
    assert holder(mlflow_uri, "c-delta") == v["weak"]


def test_different_evaluation_data_is_refused_even_when_forced(registered, mlflow_uri):
    v = registered
    promote(NAME, v["weak"], alias="d-data", tracking_uri=mlflow_uri)
    for force in (False, True):
        d = promote(NAME, v["other_data"], alias="d-data", force=force, reason="try" if force else None,
                    tracking_uri=mlflow_uri)
        assert not d.promote and not d.same_data
        assert "different documents" in d.explanation and "not comparable" in d.explanation
    assert holder(mlflow_uri, "d-data") == v["weak"]


def test_an_evaluation_on_training_documents_never_competes_with_a_held_out_one(registered, mlflow_uri):
    """A refit run's dev documents are training documents: its higher F1 there proves nothing."""
    v = registered
    promote(NAME, v["weak"], alias="d-seen", tracking_uri=mlflow_uri)
    d = promote(NAME, v["seen"], alias="d-seen", force=True, reason="try", tracking_uri=mlflow_uri)
    assert not d.promote and not d.same_data
    assert "seen in training" in d.explanation and "not comparable" in d.explanation
    assert holder(mlflow_uri, "d-seen") == v["weak"]


def test_dry_run_changes_nothing(registered, mlflow_uri):
    v = registered
    promote(NAME, v["weak"], alias="e-dry", tracking_uri=mlflow_uri)
    before = client(mlflow_uri).get_model_version(NAME, v["strong"]).tags
    d = promote(NAME, v["strong"], alias="e-dry", dry_run=True, tracking_uri=mlflow_uri)
    assert d.promote and not d.applied and d.dry_run and "would promote" in d.report()
    assert holder(mlflow_uri, "e-dry") == v["weak"]
    assert client(mlflow_uri).get_model_version(NAME, v["strong"]).tags == before


def test_requests_without_recorded_evaluation_or_unknown_versions_fail(registered, mlflow_uri, tmp_path):
    from glidre_core import registry

    model_dir = GLiDRE(tiny_config(labels=["country"])).save_pretrained(tmp_path / "bare")
    handle = open_run(MLflowSection(tracking_uri=mlflow_uri, experiment="promotion-tests"), "bare")
    bare = registry.register_model(handle, model_dir, NAME)
    with pytest.raises(PromotionError, match="no recorded evaluation"):
        promote(NAME, bare.version, alias="f-bad", tracking_uri=mlflow_uri)
    with pytest.raises(PromotionError, match="does not exist"):
        promote(NAME, "999", alias="f-bad", tracking_uri=mlflow_uri)
    already = promote(NAME, registered["strong"], alias="f-bad", tracking_uri=mlflow_uri)
    assert already.applied
    assert not promote(NAME, registered["strong"], alias="f-bad", tracking_uri=mlflow_uri).promote


def test_promote_cli_prints_the_comparison_and_exits_nonzero_when_refused(registered, mlflow_uri):
    from glidre_core.cli import main

    v = registered
    runner = CliRunner()
    base = ["promote", "--name", NAME, "--alias", "g-cli", "--tracking-uri", mlflow_uri]
    assert runner.invoke(main, base + ["--version", v["weak"]]).exit_code == 0
    dry = runner.invoke(main, base + ["--version", v["strong"], "--dry-run", "--min-delta", "0.0001"])
    assert dry.exit_code == 0, dry.output
    assert "DRY RUN" in dry.output and "would promote" in dry.output and "f1" in dry.output
    assert holder(mlflow_uri, "g-cli") == v["weak"]
    refused = runner.invoke(main, base + ["--version", v["other_data"]])
    assert refused.exit_code == 1 and "DIFFERENT documents" in refused.output
    bad = runner.invoke(main, base + ["--version", v["strong"], "--force"])
    assert bad.exit_code != 0 and "--reason" in bad.output
