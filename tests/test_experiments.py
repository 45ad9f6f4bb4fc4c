"""Experiments on Ray Tune (glidre_core.experiments): config expansion, the low-N subset rule,
the zero-shot label exclusion, the results table, the ranking AUC, and a real Tune run with
MLflow parent/child runs that is stopped by a trial budget and resumed.

The Tune run uses the session's local Ray, tiny random-weight encoders (configs/experiments/
tiny.yaml) and a handful of Re-DocRED documents; MLflow is a real sqlite store.
"""

from __future__ import annotations

import importlib.util
import json
import math
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import TINY_BERT, tiny_config
from glidre_core.experiments import ExperimentConfig, ExperimentConfigError, load_experiment_config
from glidre_core.experiments.config import build_training_config, expand_trials, trial_training_dict
from glidre_core.experiments.heldout import ranking_auc
from glidre_core.experiments.report import TrialRow, build_report, markdown
from glidre_core.readers import read_documents
from glidre_core.training import TrainingConfig
from glidre_core.training.trainer import Trainer, split_train_dev
from paths import REPO, SHARED_DATA

REDOCRED_DEV = str(SHARED_DATA / "redocred" / "dev_revised.json")
REDOCRED_TEST = str(SHARED_DATA / "redocred" / "test_revised.json")
TINY = REPO / "configs" / "experiments" / "tiny.yaml"
NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def training_config(tmp_path: Path, **overrides) -> TrainingConfig:
    data = dict(
        model=tiny_config(trainable_encoder_layers=1, encoder_config=NO_DROPOUT, label_encoder_config=NO_DROPOUT).model_dump(),
        train={"path": REDOCRED_DEV, "format": "docred", "limit": 20},
        dev_holdout=5, output_dir=str(tmp_path / "out"), epochs=1, batch_size=2, eval_every=2, threads=1,
    )
    data.update(overrides)
    return TrainingConfig.model_validate(data)


@pytest.fixture(scope="module")
def small_docred(tmp_path_factory) -> str:
    """The first 20 Re-DocRED dev records in a file of their own (the full file takes seconds to parse)."""
    records = json.loads(Path(REDOCRED_DEV).read_text())[:20]
    path = tmp_path_factory.mktemp("docred") / "dev20.json"
    path.write_text(json.dumps(records))
    return str(path)


# -- the low-N subset rule ---------------------------------------------------------------------------
def test_subset_is_deterministic_nested_and_drawn_after_a_fixed_holdout(tmp_path, small_docred):
    def split(**kw):
        train, dev = split_train_dev(training_config(tmp_path, train={"path": small_docred}, holdout_seed=0, **kw))
        return [d.doc_id for d in train], [d.doc_id for d in dev]

    pool, dev = split(seed=1)
    assert len(pool) == 15 and len(dev) == 5
    small, dev_a = split(seed=1, subset={"n": 3, "seed": 7})
    again, dev_b = split(seed=99, subset={"n": 3, "seed": 7}, lr_heads=1e-2)  # another arm, same subset
    assert small == again and dev_a == dev_b == dev  # the hold-out does not move with the training seed
    assert len(small) == 3 and set(small) <= set(pool) and not set(small) & set(dev)
    assert small == [i for i in pool if i in set(small)]  # kept in file order
    larger, _ = split(seed=1, subset={"n": 8, "seed": 7})
    assert set(small) <= set(larger)  # nested across n for one subset seed
    other, _ = split(seed=1, subset={"n": 3, "seed": 8})
    assert other != small
    assert split(seed=1, subset={"n": 15, "seed": 3})[0] == pool
    with pytest.raises(ValueError, match="subset.n=16"):
        split(seed=1, subset={"n": 16, "seed": 3})
    # without holdout_seed the hold-out follows the seed, as before
    def dev_of(seed: int) -> list[str]:
        cfg = training_config(tmp_path, train={"path": small_docred}, seed=seed)
        return [d.doc_id for d in split_train_dev(cfg)[1]]

    assert dev_of(1) != dev_of(2)


def test_min_steps_adds_epochs_for_a_small_subset(tmp_path, small_docred):
    cfg = training_config(tmp_path, train={"path": small_docred}, holdout_seed=0, subset={"n": 3, "seed": 1},
                          epochs=1, batch_size=2, min_steps=9, eval_every=5)
    trainer = Trainer(cfg)
    assert len(trainer.train_docs) == 3
    assert trainer.epochs_to_run() == 5 and trainer.total_steps() == 10  # 2 steps an epoch, whole epochs
    assert [r["step"] for r in trainer.train().history] == [5, 10]
    assert Trainer(cfg.model_copy(update={"min_steps": None})).total_steps() == 2  # the old behaviour


# -- zero-shot label exclusion ----------------------------------------------------------------------
def test_excluded_labels_never_reach_the_training_targets(tmp_path):
    from glidre_core.modeling.targets import training_batch

    docs = read_documents(REDOCRED_DEV, "docred", limit=8)
    counts = Counter(r.label for d in docs for r in d.relations)
    excluded = [lab for lab, _ in counts.most_common(2)]
    cfg = training_config(tmp_path, train={"path": REDOCRED_DEV, "format": "docred", "limit": 8}, dev_holdout=2,
                          exclude_labels=excluded + ["not a relation of this data"])
    trainer = Trainer(cfg)
    assert not set(excluded) & set(trainer.labels)
    assert not set(excluded) & set(trainer.model.config.labels)
    assert all(r.label not in excluded for d in trainer.all_train_docs + trainer.dev_docs for r in d.relations)
    prepared = [trainer.prepared[d.doc_id] for d in trainer.train_docs]
    assert all(lab not in excluded for p in prepared for _, lab, _ in p.relations)
    batch = training_batch(trainer.model, prepared, trainer.labels, None)
    targets = batch.entities.relation_targets
    assert targets.shape[-1] == len(trainer.labels)
    kept = sum(len(p.relations) for p in prepared)
    removed = sum(counts[lab] for lab in excluded)
    assert removed > 0 and int(targets.sum()) == kept
    # every other fact is still there
    by_id = {d.doc_id: d for d in docs}
    assert kept == sum(1 for p in prepared for r in by_id[p.doc.doc_id].relations if r.label not in excluded)


def test_unseen_calibration_chooses_a_threshold_for_labels_outside_training(tmp_path, small_docred):
    """Pseudo-unseen labels, held out of training, choose the unseen-label threshold on dev; the
    predictor then uses it for every label the model did not train on, and only for those."""
    import pydantic

    from glidre_core.inference import stored_thresholds
    from glidre_core.modeling import GLiDRE
    from glidre_core.training.calibration import CALIBRATION_FILE, calibration_documents

    _, dev = split_train_dev(training_config(tmp_path, train={"path": small_docred}, holdout_seed=0))
    dev_counts = Counter(r.label for d in dev for r in d.relations)
    pseudo = [lab for lab, _ in dev_counts.most_common(2)]
    unseen = "a label nobody trained on"
    with pytest.raises(pydantic.ValidationError, match="not in exclude_labels"):
        training_config(tmp_path, train={"path": small_docred}, holdout_seed=0, unseen_calibration_labels=pseudo)
    cfg = training_config(tmp_path, train={"path": small_docred}, holdout_seed=0, exclude_labels=pseudo,
                          unseen_calibration_labels=pseudo, epochs=1, eval_every=4)
    trainer = Trainer(cfg)
    assert not set(pseudo) & set(trainer.labels)
    docs = calibration_documents(cfg, trainer.main_dev_ids)
    assert [d.doc_id for d in docs] == [d.doc_id for d in trainer.dev_docs]
    assert sum(len(d.relations) for d in docs) == sum(dev_counts[lab] for lab in pseudo) > 0
    assert {r.label for d in docs for r in d.relations} <= set(pseudo)
    result = trainer.train()
    saved = GLiDRE.from_pretrained(result.best_dir)
    outcome = json.loads((Path(cfg.output_dir) / CALIBRATION_FILE).read_text())
    thr = saved.config.unseen_label_threshold
    assert thr is not None and 0 < thr < 1 and thr == pytest.approx(outcome["threshold"])
    assert outcome["facts"] == sum(dev_counts[lab] for lab in pseudo) and outcome["labels"] == pseudo
    assert trainer.unseen_calibration == outcome
    seen = trainer.labels[0]
    assert saved.predictor(relation_labels=[seen, unseen, pseudo[0]]).thresholds.tolist() == pytest.approx(
        [saved.config.threshold, thr, thr])
    # an explicit threshold still wins, for every label
    assert saved.predictor(relation_labels=[seen, unseen], threshold=0.3).thresholds.tolist() == pytest.approx([0.3, 0.3])
    # models without the second threshold behave as before
    plain = saved.config.model_copy(update={"unseen_label_threshold": None})
    assert stored_thresholds([seen, unseen], plain).tolist() == pytest.approx([plain.threshold] * 2)
    # a trained label cannot stand in for an unseen one
    from glidre_core.training.calibration import calibrate_unseen_threshold

    with pytest.raises(ValueError, match="were trained on"):
        calibrate_unseen_threshold(saved, docs, [seen])


def test_corpus_relation_weight_reaches_the_prepared_documents(tmp_path, small_docred):
    conll = str(SHARED_DATA / "conll04" / "conll04_dev.json")
    cfg = training_config(tmp_path, train={"path": small_docred}, holdout_seed=0, dev_holdout=5,
                          extra_train=[{"path": conll, "format": "conll04", "limit": 6, "relation_weight": 0.3}],
                          extra_dev=[{"path": conll, "format": "conll04", "limit": 2}])
    with pytest.raises(ValueError, match="repeat"):  # the same CoNLL04 documents in train and dev
        Trainer(cfg)
    cfg = cfg.model_copy(update={"extra_dev": []})
    trainer = Trainer(cfg)
    weights = Counter(p.relation_weight for p in trainer.prepared.values())
    assert weights == Counter({1.0: 20, 0.3: 6})  # 15 + 5 Re-DocRED (train + dev) at 1, CoNLL04 at 0.3


def test_a_relation_heads_only_stage_does_not_score_spans(tmp_path, small_docred):
    model = tiny_config(trainable_encoder_layers=1, encoder_config=NO_DROPOUT, label_encoder_config=NO_DROPOUT,
                        span_head=True).model_dump()
    joint = training_config(tmp_path, model=model, train={"path": small_docred}, holdout_seed=0)
    assert Trainer(joint).span_head_trained
    heads = joint.model_copy(update={"train_only": ["scorer.", "label_encoder.ffn."]})
    trainer = Trainer(heads)
    assert not trainer.span_head_trained and trainer.relation_heads_trained
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if n.startswith("span_head.")}
    trainer.train()
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)


# -- configs -----------------------------------------------------------------------------------------
def experiment(**overrides) -> ExperimentConfig:
    data = {"name": "t", "overrides": {"train": {"path": REDOCRED_DEV}}, "seeds": [1, 2, 3]}
    data.update(overrides)
    return ExperimentConfig.model_validate(data)


def test_grid_and_random_trials_share_values_across_seeds(tmp_path):
    grid = experiment(space={"subset.n": [1, 5], "model.loss": {"choice": ["focal", "bce"]}},
                      arms={"base": {}, "pre": {"init_from": "runs/x"}}, seed_keys=["seed", "subset.seed"])
    trials = expand_trials(grid)
    assert len(trials) == 2 * 2 * 2 * 3
    assert [t["seed"] for t in trials[:8]] == [1] * 8  # seed by seed
    assert {t["arm"] for t in trials} == {"base", "pre"}
    assert grid.param_names() == ["arm", "subset.n", "model.loss"]
    last_base = [t for t in trials if t["arm"] == "base"][-1]
    cfg = build_training_config({"train": {"path": "data/x.json"}}, grid, last_base, "/base", "/out")
    assert cfg.subset.n == 5 and cfg.subset.seed == 3 and cfg.seed == 3 and cfg.model.loss == "bce"
    assert cfg.train.path == "/base/data/x.json" and cfg.output_dir == "/out" and cfg.init_from is None
    pre = trial_training_dict({"train": {"path": "data/x.json"}}, grid, trials[-1], "/base")
    assert pre["init_from"] == "/base/runs/x" and pre["subset"] == {"n": 5, "seed": 3}
    with pytest.raises(ExperimentConfigError, match="arm=pre, subset.n=5, model.loss=bce, seed=3"):
        build_training_config({"train": {"path": "data/x.json"}}, grid, trials[-1], "/base", "/out")

    rand = experiment(search="random", num_samples=4, search_seed=5,
                      space={"lr_heads": {"loguniform": [1e-5, 1e-3]}, "model.dropout": {"uniform": [0.0, 0.5]},
                             "model.loss": {"choice": ["focal", "bce"]}, "epochs": [1, 2]})
    trials = expand_trials(rand)
    assert len(trials) == 4 * 2 * 3
    by_seed = [[json.dumps(t["params"]) for t in trials if t["seed"] == s] for s in (1, 2, 3)]
    assert by_seed[0] == by_seed[1] == by_seed[2]  # every seed of a configuration has its values
    assert trials == expand_trials(rand)  # the draw is reproducible (a restart draws the same)
    assert all(1e-5 <= t["params"]["lr_heads"] <= 1e-3 for t in trials)


@pytest.mark.parametrize("overrides, message", [
    ({"metric": "test_f1"}, "held-out"),
    ({"space": {"lr_heads": {"loguniform": [1e-5, 1e-3]}}}, "needs search: random or optuna"),
    ({"search": "optuna", "space": {"lr_heads": {"loguniform": [1e-5, 1e-3]}}}, "one seed"),
    ({"search": "optuna", "seeds": [1], "space": {"epochs": [1, 2]}}, "choice instead of grid"),
    ({"space": {"lr_heads": {"grid": [1], "choice": [2]}}}, "exactly one"),
    ({"space": {"lr_heads": {"loguniform": [0, 1e-3]}}, "search": "random"}, "positive"),
    ({"storage": {"path": "s3://bucket/x"}}, "local directories"),
])
def test_invalid_experiment_configs_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        experiment(**overrides)


def test_shipped_experiment_configs_validate_and_build_their_trials(monkeypatch, tmp_path, tiny_model):
    """Every config in configs/experiments passes the driver's pre-flight: each trial's training
    config validates and its data files exist (what run_experiment checks before starting Ray).

    An arm may start from a model another documented command trains first (``init_from:
    runs/...``), which a fresh clone does not have: there the pre-flight must refuse with an
    error naming that path, and the rest of the config is then validated with a saved tiny model
    standing in for it."""
    from glidre_core.experiments.config import load_base, resolve_paths
    from glidre_core.experiments.runner import _resolved_experiment, build_scheduler, build_search, validate_trials

    if not (REPO.parent / "shared" / "data").is_dir():
        pytest.skip("the configs name ../shared/data, which is not beside this checkout")
    monkeypatch.chdir(REPO)  # config paths are relative to the working directory
    stand_in = tmp_path / "stand_in"
    tiny_model.save_pretrained(stand_in)
    for path in sorted((REPO / "configs" / "experiments").glob("*.yaml")):
        cfg = _resolved_experiment(load_experiment_config(path), str(REPO))
        base = resolve_paths(load_base(cfg), REPO)
        missing = {
            arm: str(o["init_from"]) for arm, o in cfg.arms.items()
            if o.get("init_from") and o["init_from"] != "default" and not (REPO / o["init_from"]).exists()
        }
        if missing:
            with pytest.raises(ExperimentConfigError, match="no config.json") as info:
                validate_trials(cfg, base, str(REPO))
            assert any(Path(m).name in str(info.value) for m in missing.values()), path.name
            arms = {a: ({**o, "init_from": str(stand_in)} if a in missing else o) for a, o in cfg.arms.items()}
            cfg = cfg.model_copy(update={"arms": arms})
        assert validate_trials(cfg, base, str(REPO)) >= 1, path.name
        if cfg.search != "optuna":
            trials = expand_trials(cfg)
            assert len({json.dumps(t, sort_keys=True) for t in trials}) == len(trials), path.name
        if cfg.search != "optuna" or importlib.util.find_spec("optuna") is not None:
            build_search(cfg)
        build_scheduler(cfg)


def test_asha_and_optuna_build():
    pytest.importorskip("optuna")  # the optional extra (part of the test extra)
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.optuna import OptunaSearch

    from glidre_core.experiments.runner import build_scheduler, build_search

    cfg = experiment(search="optuna", seeds=[4], num_samples=6, scheduler="asha",
                     asha={"max_t": 20, "grace_period": 2, "reduction_factor": 2},
                     space={"lr_heads": {"loguniform": [1e-5, 1e-3]}, "model.loss": {"choice": ["focal", "bce"]}})
    scheduler = build_scheduler(cfg)
    assert isinstance(scheduler, ASHAScheduler)
    assert scheduler._max_t == 20 and scheduler._reduction_factor == 2 and scheduler._time_attr == "training_iteration"
    space, searcher, samples = build_search(cfg)
    assert isinstance(searcher, OptunaSearch) and samples == 6 and space["trial"]["seed"] == 4
    assert build_scheduler(experiment()) is None


# -- the report -----------------------------------------------------------------------------------------
def test_report_gives_mean_and_sample_std_over_seeds():
    cfg = experiment(space={"subset.n": [1, 5]}, report={"metrics": ["test_f1"]})
    rows = [
        TrialRow("a_0", None, {"subset.n": 1}, 1, "done", {"best_dev_f1": 0.10, "test_f1": 0.10}),
        TrialRow("a_1", None, {"subset.n": 5}, 1, "done", {"best_dev_f1": 0.30, "test_f1": 0.20}),
        TrialRow("a_2", None, {"subset.n": 1}, 2, "done", {"best_dev_f1": 0.14, "test_f1": 0.14}),
        TrialRow("a_3", None, {"subset.n": 5}, 2, "done", {"best_dev_f1": 0.34, "test_f1": 0.30}),
        TrialRow("a_4", None, {"subset.n": 1}, 3, "done", {"best_dev_f1": 0.12, "test_f1": 0.12}),
        TrialRow("a_5", None, {"subset.n": 5}, 3, "error", {}, error="boom"),
    ]
    report = build_report(cfg, rows, interrupted=False)
    one, five = report["groups"]
    assert one["params"] == {"subset.n": 1} and one["n"] == 3 and one["seeds"] == [1, 2, 3]
    assert one["metrics"]["test_f1"]["mean"] == pytest.approx(0.12)
    assert one["metrics"]["test_f1"]["std"] == pytest.approx(0.02)  # sample std (n - 1)
    assert five["n"] == 2 and five["counts"]["error"] == 1
    assert five["metrics"]["test_f1"]["std"] == pytest.approx(math.sqrt(0.005))
    assert report["best_group"] == 1 and report["trials"]["done"] == 5
    md = markdown(report)
    assert "| subset.n | seeds | best_dev_f1 | test_f1 |" in md
    assert "| 1 | 3 | 12.00 ± 2.00 | 12.00 ± 2.00 |" in md
    assert "| **5** | 2 (1 error) |" in md


def test_report_select_by_marks_the_best_row_by_an_end_only_dev_metric():
    """dev_unseen_f1 exists only at a trial's end, so Tune's metric cannot be it (a clear config
    error, not Tune's crash mid-run); report.select_by marks the best row by it instead."""
    with pytest.raises(Exception, match="report.select_by"):
        experiment(metric="dev_unseen_f1")
    with pytest.raises(Exception, match="held-out"):
        experiment(report={"select_by": "test_f1"})
    cfg = experiment(space={"subset.n": [1, 5]}, report={"metrics": ["test_f1"], "select_by": "dev_unseen_f1"})
    rows = [
        TrialRow("a_0", None, {"subset.n": 1}, 1, "done", {"best_dev_f1": 0.50, "dev_unseen_f1": 0.01, "test_f1": 0.1}),
        TrialRow("a_1", None, {"subset.n": 5}, 1, "done", {"best_dev_f1": 0.40, "dev_unseen_f1": 0.05, "test_f1": 0.2}),
    ]
    report = build_report(cfg, rows, interrupted=False)
    assert report["metric"] == "best_dev_f1" and report["selected_by"] == "dev_unseen_f1"
    assert report["best_group"] == 1 and "dev_unseen_f1" in report["metrics"]
    assert "best mean `dev_unseen_f1`" in markdown(report)


def test_ranking_auc_equals_the_pairwise_definition(tiny_model):
    docs = read_documents(REDOCRED_TEST, "docred", limit=2)
    labels = sorted({r.label for d in docs for r in d.relations})[:6]
    predictor = tiny_model.predictor(relation_labels=labels)
    result = ranking_auc(predictor, docs)
    pos, neg = [], []
    gold = {(d.doc_id, r.head, r.label, r.tail) for d in docs for r in d.relations}
    for sc in predictor.score_relations(docs):
        ids = sc.prepared.entity_ids
        for p, (h, t) in enumerate(zip(sc.heads, sc.tails)):
            for i, lab in enumerate(labels):
                (pos if (sc.prepared.doc.doc_id, ids[h], lab, ids[t]) in gold else neg).append(sc.probs[p, i])
    pos_a, neg_a = np.array(pos)[:, None], np.array(neg)[None, :]
    expected = ((pos_a > neg_a).sum() + 0.5 * (pos_a == neg_a).sum()) / (len(pos) * len(neg))
    assert result["positives"] == len(pos) > 0 and result["negatives"] == len(neg)
    assert result["auc"] == pytest.approx(expected, abs=1e-9)


def test_config_hash_follows_the_trials_not_the_spelling(tmp_path):
    """Pinning a value the base already has (or a training default) keeps the hash, so an
    experiment still resumes after configs/default_model.yaml moves and the experiment pins the
    old value; any value that changes a trial changes it; the pre-2026-12-03 hash differs."""
    from glidre_core.experiments.config import load_base, without_defaults

    base_yaml = tmp_path / "base.yaml"
    base_yaml.write_text("model: {dropout: 0.3}\ntrain: {path: x.json, format: docred}\nlr_heads: 0.001\n")
    sets = [f"base={base_yaml}", "overrides={}", "space={}"]

    def hash_of(*extra: str) -> str:
        cfg = load_experiment_config(TINY, sets + list(extra))
        return cfg.config_hash(load_base(cfg))

    plain = hash_of()
    assert hash_of("overrides={model.dropout: 0.3}") == plain  # what the base already says
    default_ffn = TrainingConfig.model_fields["model"].default_factory().label_head
    assert hash_of(f"overrides={{model.label_head: {default_ffn}}}") == plain  # a training default
    assert hash_of("overrides={model.dropout: 0.4}") != plain
    assert hash_of("overrides={model.label_head: residual}") != plain
    assert hash_of("seeds=[7]") != plain
    cfg = load_experiment_config(TINY, sets)
    assert cfg.legacy_config_hash(load_base(cfg)) != plain
    assert without_defaults({"model": {"dropout": 0.3, "label_head": "ffn"}, "unknown": 1}, TrainingConfig) == {
        "model": {"dropout": 0.3}, "unknown": 1}


# -- a real Tune run: budget stop, resume, MLflow, table -----------------------------------------------
@pytest.mark.slow
def test_experiment_runs_on_tune_stops_on_budget_and_resumes(ray_session, mlflow_uri, tmp_path):
    """Two trials (one configuration, two seeds), one at a time: a budget of one trial stops the
    first invocation; the same call again restores the experiment, keeps the finished trial and
    runs the other; a third call finds nothing to run."""
    from glidre_core.experiments.mlflow_runs import TRIAL_ID_TAG
    from glidre_core.experiments.runner import run_experiment
    from glidre_core.tracking import client

    sets = [f"storage.path={tmp_path / 'exp'}", f"mlflow.tracking_uri={mlflow_uri}",
            "mlflow.experiment=glidre-experiments-test", "space.lr_heads=[0.001]", "max_concurrent_trials=1",
            f"overrides.train.path={REDOCRED_DEV}", f"evaluate.data.path={REDOCRED_TEST}"]
    cfg = load_experiment_config(TINY, sets)

    first = run_experiment(cfg, max_trials=1)
    assert first.interrupted and first.budget_reached and not first.restored
    assert first.report["trials"]["done"] == 1 and first.report["trials"]["incomplete"] == 1
    (done_first,) = [r["trial_id"] for r in first.report["rows"] if r["status"] == "done"]
    assert "Interrupted" in first.markdown_path.read_text()
    between = time.time() * 1000

    # a changed config is not mixed into this experiment
    changed = load_experiment_config(TINY, sets + ["seeds=[1, 2, 3]"])
    with pytest.raises(ExperimentConfigError, match="another config"):
        run_experiment(changed)

    second = run_experiment(cfg)  # the same call again: restore
    assert second.restored and not second.interrupted
    report = json.loads(second.json_path.read_text())
    assert report["trials"] == {"done": 2, "stopped": 0, "error": 0, "incomplete": 0, "total": 2}
    (group,) = report["groups"]
    assert group["params"] == {"lr_heads": 0.001} and group["n"] == 2 and group["seeds"] == [1, 2]
    f1 = group["metrics"]["test_f1"]
    assert len(f1["values"]) == 2 and f1["mean"] == pytest.approx(sum(f1["values"]) / 2)
    assert f1["std"] == pytest.approx(abs(f1["values"][0] - f1["values"][1]) / math.sqrt(2))
    assert 0.0 <= group["metrics"]["test_auc"]["mean"] <= 1.0
    md = second.markdown_path.read_text()
    assert "| lr_heads | seeds | best_dev_f1 | test_f1 | test_ign_f1 | test_auc |" in md and " ± " in md
    for row in report["rows"]:
        assert row["metrics"]["train_docs"] == 4 and row["metrics"]["test_docs"] == 3
        assert row["metrics"]["best_dev_f1"] == row["metrics"]["dev_f1"]
    # a finished trial keeps only its small result checkpoint
    assert sum(f.stat().st_size for f in Path(report["experiment_path"]).rglob("*") if f.is_file()) < 2_000_000

    # MLflow: one parent (reopened, not duplicated), one child per trial; the trial finished in the
    # first invocation was not run again
    c = client(mlflow_uri)
    exp = c.get_experiment_by_name("glidre-experiments-test")
    parents = c.search_runs([exp.experiment_id], filter_string="tags.`glidre.experiment` = 'tiny' and "
                            "attributes.run_name = 'tiny'")
    assert len(parents) == 1 and parents[0].info.run_id == first.parent_run_id == second.parent_run_id
    assert parents[0].info.status == "FINISHED"
    assert {a.path for a in c.list_artifacts(first.parent_run_id, "results")} == {"results/results.json", "results/results.md"}
    children = c.search_runs([exp.experiment_id], filter_string=f"tags.`mlflow.parentRunId` = '{first.parent_run_id}'")
    assert len(children) == 2 and all(r.info.status == "FINISHED" for r in children)
    assert {r.data.tags[TRIAL_ID_TAG] for r in children} == {r["trial_id"] for r in report["rows"]}
    for run in children:
        assert "test_f1" in run.data.metrics and "dev_f1" in run.data.metrics
    (kept,) = [r for r in children if r.data.tags[TRIAL_ID_TAG] == done_first]
    assert kept.info.end_time < between
    rows = {r["trial_id"]: r for r in report["rows"]}
    (first_row,) = [r for r in first.report["rows"] if r["trial_id"] == done_first]
    assert rows[done_first]["metrics"]["timestamp"] == first_row["metrics"]["timestamp"]  # Tune kept its result

    third = run_experiment(cfg)  # a finished experiment: nothing runs, the report is rewritten
    assert third.restored and not third.interrupted and third.report["trials"]["done"] == 2


def test_pseudo_unseen_dev_is_the_trials_hold_out_with_only_pseudo_unseen_facts(tmp_path, small_docred):
    """The zero-shot benchmarks choose every rule on this set: the first trial's dev hold-out, its
    facts restricted to the pseudo-unseen labels (which training never sees)."""
    from glidre_core.experiments.heldout import pseudo_unseen_dev

    _, dev = split_train_dev(training_config(tmp_path, train={"path": small_docred}, holdout_seed=0))
    counts = Counter(r.label for d in dev for r in d.relations)
    pseudo = [lab for lab, _ in counts.most_common(2)]
    model = tiny_config(trainable_encoder_layers=1, encoder_config=NO_DROPOUT, label_encoder_config=NO_DROPOUT).model_dump()
    overrides = {"model": model, "train": {"path": small_docred, "format": "docred"}, "dev_holdout": 5,
                 "holdout_seed": 0, "batch_size": 2, "exclude_labels": pseudo, "unseen_calibration_labels": pseudo}
    exp = ExperimentConfig.model_validate(
        {"name": "zs", "overrides": overrides, "evaluate": {"data": {"path": small_docred, "format": "docred"}}})
    cfg, train, docs = pseudo_unseen_dev(exp)
    assert cfg.unseen_calibration_labels == pseudo
    assert [d.doc_id for d in docs] == [d.doc_id for d in dev]
    assert not {d.doc_id for d in train} & {d.doc_id for d in docs}
    assert sum(len(d.relations) for d in docs) == sum(counts[lab] for lab in pseudo) > 0
    assert {r.label for d in docs for r in d.relations} <= set(pseudo)
    plain = {k: v for k, v in overrides.items() if k not in ("exclude_labels", "unseen_calibration_labels")}
    with pytest.raises(ValueError, match="no pseudo-unseen labels"):
        pseudo_unseen_dev(ExperimentConfig.model_validate(
            {"name": "plain", "overrides": plain, "evaluate": {"data": {"path": small_docred, "format": "docred"}}}))
