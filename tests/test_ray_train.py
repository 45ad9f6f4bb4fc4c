"""Training on Ray Train: checkpoints, resume, worker failure, DDP, pretraining label sampling.

The Ray tests use one local Ray instance for the module, tiny random-weight models and a handful
of Re-DocRED documents; MLflow is a real sqlite store in a temporary directory.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from conftest import TINY_BERT, tiny_config
from glidre_core.training import Trainer, TrainingConfig
from glidre_core.training.checkpoint import (
    flatten_optimizer_state,
    load_rank_state,
    load_train_state,
    unflatten_optimizer_state,
)
from glidre_core.training.label_sampler import LabelSampler
from glidre_core.training.trainer import shard_documents
from paths import SHARED_DATA

REDOCRED_DEV = str(SHARED_DATA / "redocred" / "dev_revised.json")
# no dropout anywhere: a resumed run must then reproduce the uninterrupted one exactly
NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}


def tiny_training_config(tmp_path: Path, **overrides) -> TrainingConfig:
    data = dict(
        model=tiny_config(trainable_encoder_layers=1, encoder_config=NO_DROPOUT, label_encoder_config=NO_DROPOUT).model_dump(),
        train={"path": REDOCRED_DEV, "format": "docred", "limit": 8},
        dev_holdout=2, output_dir=str(tmp_path / "out"), epochs=3, batch_size=2, eval_every=2, threads=1,
    )
    data.update(overrides)
    return TrainingConfig.model_validate(data)


# -- in-process: checkpoint format, exact resume, sharding, pretraining -------------------------
def test_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path):
    saved: dict[int, Path] = {}

    def on_checkpoint(trainer, record):
        saved[trainer.step_now()] = trainer.save_checkpoint(tmp_path / f"ckpt_{trainer.step_now()}")

    full = Trainer(tiny_training_config(tmp_path / "a"), on_checkpoint=on_checkpoint)
    full_result = full.train()
    assert sorted(saved) == [2, 4, 6, 8, 9]

    # no pickles: weights and optimizer state are safetensors, the rest JSON
    files = [p for p in saved[4].rglob("*") if p.is_file()]
    assert {p.suffix for p in files} == {".json", ".safetensors"}
    state, opt = load_train_state(saved[4])
    assert (state.step, state.epoch, state.batch_offset) == (4, 1, 2)
    assert [r["step"] for r in state.history] == [2, 4]
    assert opt["param_groups"][0]["betas"] == (0.9, 0.999)  # tuples survive JSON
    assert load_rank_state(saved[4], 0) is not None and load_rank_state(saved[4], 1) is None

    resumed = Trainer(tiny_training_config(tmp_path / "b"), resume_from=saved[4])
    resumed_result = resumed.train()
    assert [r["step"] for r in resumed_result.history] == [2, 4, 6, 8, 9]
    assert resumed_result.history[:2] == full_result.history[:2]  # restored, not recomputed
    a, b = full.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    assert resumed_result.best_f1 == full_result.best_f1
    assert (resumed_result.best_dir / "model.safetensors").exists()


def test_optimizer_state_round_trip():
    p = torch.nn.Parameter(torch.randn(3, 2))
    opt = torch.optim.AdamW([p], lr=0.1)
    p.grad = torch.ones_like(p)
    opt.step()
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    json.dumps(meta)  # plain JSON
    restored = unflatten_optimizer_state(tensors, json.loads(json.dumps(meta)))
    fresh = torch.optim.AdamW([torch.nn.Parameter(p.detach().clone())], lr=0.5)
    fresh.load_state_dict(restored)
    s = fresh.state_dict()
    assert s["param_groups"][0]["lr"] == 0.1
    assert torch.equal(s["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])


def test_shards_are_disjoint_covering_and_equal_length():
    docs = list(range(11))
    shards = [shard_documents(docs, r, 3) for r in range(3)]
    assert {len(s) for s in shards} == {4}
    assert set().union(*map(set, shards)) == set(docs)
    assert set(docs[0::3]) == set(shards[0]) and set(shards[1]) == set(docs[1::3])
    assert shard_documents(docs, 0, 1) is docs
    with pytest.raises(ValueError):
        shard_documents(docs[:2], 0, 3)


def test_label_sampler_positives_negatives_and_cap():
    vocab = [f"rel {i}" for i in range(200)]
    s = LabelSampler(vocab, negatives=10, max_labels=16, seed=1)
    labels = s.sample(["rel 3", "rel 7", "rel 3"])
    assert labels[:2] == ["rel 3", "rel 7"] and len(labels) == 12 and len(set(labels)) == 12
    assert set(labels) <= set(vocab)
    # the cap wins over positives (dropped positives are simply not scored in that batch)
    many = s.sample(vocab[:40])
    assert len(many) == 16 and set(many) <= set(vocab[:40])
    # negatives fill up to the cap only
    assert len(LabelSampler(vocab, 50, 20, seed=1).sample(vocab[:5])) == 20
    # deterministic, and the state restores the stream
    a, b = LabelSampler(vocab, 10, 16, seed=5), LabelSampler(vocab, 10, 16, seed=5)
    assert a.sample(["rel 1"]) == b.sample(["rel 1"])
    state = a.get_state()
    first = a.sample(["rel 2"])
    a.set_state(state)
    assert a.sample(["rel 2"]) == first
    # frequency weighting prefers frequent types as negatives
    counts = Counter({"rel 0": 10_000})
    f = LabelSampler(vocab, 1, 2, seed=0, weighting="frequency", counts=counts)
    assert Counter(f.sample(["rel 9"])[1] for _ in range(50))["rel 0"] > 25


def _synthetic_corpus(path: Path, n_docs: int, n_types: int) -> list[str]:
    """GLiDRE-format JSON Lines documents with many relation types (a distilled corpus in small)."""
    types = [f"TYPE_{i:03d}_REL" for i in range(n_types)]
    words = ["Alpha", "Beta", "Gamma", "Delta", "Epsilon", "Zeta"]
    with open(path, "w", encoding="utf-8") as f:
        for d in range(n_docs):
            names = [f"{w}{d}" for w in words]
            text = " ".join(f"{n} met {names[(i + 1) % len(names)]} ." for i, n in enumerate(names))
            ents, pos = [], 0
            for i, n in enumerate(names):
                start = text.index(n, pos)
                ents.append({"id": f"e{i}", "type": "ORG", "mentions": [{"start": start, "end": start + len(n)}]})
                pos = start + len(n)
            rels = [{"head": f"e{i}", "label": types[(d * 3 + i) % n_types], "tail": f"e{(i + 1) % 6}"} for i in range(3)]
            f.write(json.dumps({"doc_id": f"doc{d}", "text": text, "entities": ents, "relations": rels}) + "\n")
    return types


def test_pretraining_scores_positives_plus_sampled_negatives_under_a_cap(tmp_path):
    corpus = tmp_path / "distilled.jsonl"
    types = _synthetic_corpus(corpus, n_docs=10, n_types=30)  # every type used
    cfg = tiny_training_config(
        tmp_path, train={"path": str(corpus), "format": "jsonl"}, dev_holdout=2, max_steps=4, eval_every=4,
        pretraining={"enabled": True, "negatives_per_batch": 6, "max_labels_per_batch": 8},
    )
    trainer = Trainer(cfg)
    assert trainer.sampler is not None and len(trainer.sampler.vocabulary) == len(types)
    seen: list[tuple[list[str], list[str]]] = []
    sample = trainer.sampler.sample

    def recording_sample(positives):
        positives = list(positives)
        labels = sample(positives)
        seen.append((positives, labels))
        return labels

    trainer.sampler.sample = recording_sample
    result = trainer.train()
    assert len(seen) == 4  # one label set per batch
    norm = trainer.model.config.normalize_label
    for positives, labels in seen:
        assert len(labels) <= 8
        assert set(positives) <= set(labels)  # 2 docs x 3 relations = 6 positives < cap
        assert len(labels) == 8  # topped up with negatives to the cap
        assert set(labels) <= {norm(t) for t in types}
    assert len({lab for _, labels in seen for lab in labels}) > 8  # negatives vary across batches
    assert all(r["train_loss"] == r["train_loss"] for r in result.history)  # finite
    assert result.history[-1]["step"] == 4


def test_dev_f1_recorded_for_the_best_checkpoint_is_its_final_evaluation(tmp_path):
    """The trainer's dev evaluation and the final evaluation of the best checkpoint are one
    scoring: same candidate labels (the model's label set, not the few labels the dev documents
    use), same threshold, labels compared as the model spells them. They used to disagree
    (benchmarks/llm_loop.sh: dev F1 0.052 recorded, 0.109 in the final evaluation)."""
    from glidre_core.evaluation import dev_predictor, evaluate_dev
    from glidre_core.modeling import GLiDRE
    from glidre_core.ray_train import train
    from glidre_core.training.trainer import split_train_dev

    corpus = tmp_path / "distilled.jsonl"
    types = _synthetic_corpus(corpus, n_docs=10, n_types=30)  # spelled TYPE_000_REL: normalised in pretraining
    cfg = tiny_training_config(
        tmp_path, train={"path": str(corpus), "format": "jsonl"}, dev_holdout=2, max_steps=4, eval_every=2,
        pretraining={"enabled": True, "negatives_per_batch": 6, "max_labels_per_batch": 8},
    )
    _, dev = split_train_dev(cfg)
    # the dev documents alone use a few of the 30 labels: scoring only those would be another task
    assert len({r.label for d in dev for r in d.relations}) < len(types)

    result = train(cfg)  # in-process (num_workers 0): the trainer, then finalize
    best = [r for r in result.history if r.get("saved")][-1]
    final = result.final_eval
    model = GLiDRE.from_pretrained(result.best_dir)
    assert final["docs"] == len(dev) == 2 and final["labels"] == len(model.config.labels) == len(types)
    assert final["threshold"] == best["dev_threshold"] == model.config.threshold
    assert (final["f1"], final["ign_f1"], final["precision"], final["recall"]) == (
        best["dev_f1"], best["dev_ign_f1"], best["dev_precision"], best["dev_recall"])
    # gold facts spelled TYPE_000_REL are found although the candidates are spelled "type 000 rel"
    assert best["dev_f1"] > 0
    assert evaluate_dev(dev_predictor(model), dev, threshold=1e-6)["recall"] == 1.0
    with pytest.raises(TypeError):
        dev_predictor(model, relation_labels=["type 000 rel"])


# -- Ray Train ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_local(ray_session):
    # step hooks are defined in this test module, which workers cannot import: ship it by value
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield ray_session
    cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


def ray_config(tmp_path: Path, run_name: str, mlflow_uri: str, **overrides) -> TrainingConfig:
    base = dict(
        train={"path": REDOCRED_DEV, "format": "docred", "limit": 6}, dev_holdout=2, batch_size=1,
        epochs=4, max_steps=4, eval_every=2,
        scaling={"num_workers": 2, "cpus_per_worker": 1},
        storage={"path": str(tmp_path / "ray_storage"), "run_name": run_name, "max_failures": 0},
        mlflow={"tracking_uri": mlflow_uri, "experiment": "ray-tests", "register_as": "glidre-ray-test"},
    )
    base.update(overrides)
    return tiny_training_config(tmp_path, **base)


class StepLog:
    """Step hook: appends ``rank step pid checksum`` per optimizer step to a file (workers are
    other processes); the checksum of the trainable weights shows whether DDP kept ranks equal."""

    def __init__(self, path: Path, fail_at: tuple[int, int] | None = None, marker: Path | None = None):
        self.path, self.fail_at, self.marker = str(path), fail_at, str(marker) if marker else None

    def __call__(self, trainer, step: int) -> None:
        total = sum(float(p.detach().double().sum()) for p in trainer.model.parameters() if p.requires_grad)
        with open(self.path, "a") as f:
            f.write(f"{trainer.rank} {step} {os.getpid()} {total:.10e}\n")
        if self.fail_at == (trainer.rank, step) and not os.path.exists(self.marker):
            import ray.train

            # Checkpoints are registered asynchronously by the controller: wait until the
            # reported ones are committed, so the test knows which one the restart must use.
            committed = ray.train.get_all_reported_checkpoints(
                consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED, timeout_s=120)
            with open(self.path, "a") as f:
                f.write(f"# committed {len(committed)}\n")
            open(self.marker, "w").close()  # first attempt only
            os._exit(1)  # a real worker death: the process is gone, nothing is cleaned up

    def rows(self) -> list[tuple[int, int, int, float]]:
        out = []
        for line in Path(self.path).read_text().split("\n"):
            if line and not line.startswith("#"):
                r, s, pid, c = line.split()
                out.append((int(r), int(s), int(pid), float(c)))
        return out


@pytest.fixture
def s3_bucket(monkeypatch):
    """A real S3 endpoint (moto's server on localhost) with the training documents uploaded."""
    import boto3
    from moto.server import ThreadedMotoServer

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(k, v)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket="glidre-test")
    docs = json.loads(Path(REDOCRED_DEV).read_text())[:6]
    s3.put_object(Bucket="glidre-test", Key="data/redocred_dev6.json", Body=json.dumps(docs).encode())
    yield endpoint, s3
    server.stop()


@pytest.mark.slow
def test_torchtrainer_two_workers_logs_to_mlflow_and_registers(ray_local, tmp_path, mlflow_uri, s3_bucket):
    """Data and checkpoints on S3 (moto's real HTTP endpoint), MLflow in sqlite."""
    from mlflow import MlflowClient

    from glidre_core import ray_train
    from glidre_core.model_loading import load_model

    endpoint, s3 = s3_bucket
    log = StepLog(tmp_path / "steps.log")
    cfg = ray_config(
        tmp_path, "two-workers", mlflow_uri,
        train={"path": "s3://glidre-test/data/redocred_dev6.json", "format": "docred"},
        storage={"path": "s3://glidre-test/ray", "run_name": "two-workers", "max_failures": 0,
                 "s3_endpoint_url": endpoint},
    )
    result = ray_train.train(cfg, step_hook=log)

    rows = log.rows()
    assert sorted({(r, s) for r, s, _, _ in rows}) == [(r, s) for r in (0, 1) for s in (1, 2, 3, 4)]
    by_step: dict[int, set[str]] = {}
    for _, s, _, c in rows:
        by_step.setdefault(s, set()).add(f"{c:.8e}")
    assert all(len(v) == 1 for v in by_step.values()), f"DDP ranks diverged: {by_step}"

    assert [r["step"] for r in result.history] == [2, 4]
    assert result.model_name == "glidre-ray-test" and result.model_version is not None
    assert (result.best_dir / "model.safetensors").exists()
    assert result.final_eval["eval_data"]["docs"] == 2

    c = MlflowClient(mlflow_uri)
    run = c.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["scaling.num_workers"] == "2"
    assert run.data.tags["glidre.world_size"] == "2"
    assert [m.step for m in c.get_metric_history(run.info.run_id, "dev_f1")] == [2, 4]
    assert {m.key for m in c.get_metric_history(run.info.run_id, "dev_ign_f1")} == {"dev_ign_f1"}
    artifacts = {f.path for f in c.list_artifacts(run.info.run_id, "plots")}
    assert {"plots/training_curves.png", "plots/f1_vs_threshold.png", "plots/per_relation_f1.png"} <= artifacts
    assert {f.path for f in c.list_artifacts(run.info.run_id, "evaluation")} == {"evaluation/final_eval.json"}
    assert c.list_artifacts(run.info.run_id, "config")[0].path == "config/training_config.yaml"

    mv = c.get_model_version("glidre-ray-test", result.model_version)
    for tag in ("glidre.data", "glidre.data_fingerprint", "glidre.config_hash", "glidre.git_commit",
                "eval.f1", "eval.ign_f1", "eval.data_fingerprint"):
        assert tag in mv.tags, tag
    assert float(mv.tags["eval.f1"]) == pytest.approx(result.final_eval["f1"], abs=1e-6)
    assert mv.tags["glidre.data"] == "s3://glidre-test/data/redocred_dev6.json"
    model = load_model(f"models:/glidre-ray-test/{result.model_version}", tracking_uri=mlflow_uri)
    assert model.config.threshold == pytest.approx(result.best_threshold)
    best = load_model(str(result.best_dir))
    a, b = model.state_dict(), best.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the registered artifact is the best checkpoint

    # checkpoints were written to S3: safetensors + JSON only, model and optimizer included
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="glidre-test", Prefix="ray/two-workers/")["Contents"]]
    # files inside checkpoint directories (S3 also holds directory marker objects)
    ckpt = [k for k in keys if re.search(r"/checkpoint_[^/]+/.*[^/]$", k)]
    assert {Path(k).suffix for k in ckpt} == {".json", ".safetensors"}
    assert any(k.endswith("/model/model.safetensors") for k in ckpt)
    assert any(k.endswith("/optimizer.safetensors") for k in ckpt)
    assert any(k.endswith("/rank_1.safetensors") for k in ckpt)  # both workers' parts merged
    assert result.checkpoint_path.startswith("glidre-test/ray/two-workers/checkpoint_")


@pytest.mark.slow
def test_worker_killed_midway_resumes_from_its_checkpoint(ray_local, tmp_path, mlflow_uri):
    from mlflow import MlflowClient

    from glidre_core import ray_train

    marker = tmp_path / "killed-once"
    log = StepLog(tmp_path / "steps.log", fail_at=(1, 3), marker=marker)
    cfg = ray_config(tmp_path, "killed-once", mlflow_uri, max_steps=6, epochs=6,
                     storage={"path": str(tmp_path / "ray_storage"), "run_name": "killed-once", "max_failures": 1})
    result = ray_train.train(cfg, step_hook=log)

    assert marker.exists()
    assert "# committed 1" in Path(log.path).read_text()  # the step-2 checkpoint, before the kill
    rows = log.rows()
    attempts: dict[int, list[int]] = {}
    for r, s, pid, _ in rows:
        if r == 0:
            attempts.setdefault(pid, []).append(s)
    first, second = list(attempts.values())
    assert first[:3] == [1, 2, 3]
    assert second == [3, 4, 5, 6], f"rank 0 after the restart ran {second}: it did not resume from step 2"
    assert result.resumed_from_steps == [2]
    assert [r["step"] for r in result.history] == [2, 4, 6]
    # one MLflow run across both attempts, metrics continued after the resume
    c = MlflowClient(mlflow_uri)
    run = c.get_run(result.mlflow_run_id)
    assert json.loads(run.data.tags["glidre.resumed_from_steps"]) == [2]
    assert sorted({m.step for m in c.get_metric_history(run.info.run_id, "dev_f1")}) == [2, 4, 6]
    assert result.model_version is not None

    # starting the same run again: Ray finds the finished run in storage and trains nothing more
    again = ray_train.train(cfg, step_hook=log)
    assert len(log.rows()) == len(rows)
    assert again.history == result.history and again.model_version == result.model_version


def test_dev_evaluation_scores_the_float16_checkpoint_it_saves(tmp_path):
    """With the default float16 ``save_dtype`` the trainer's dev evaluation is that of the saved
    checkpoint, reloaded: same scores (the full threshold sweep), same threshold, same F1."""
    from glidre_core.evaluation import dev_predictor, evaluate_dev
    from glidre_core.modeling import GLiDRE

    model = tiny_config(trainable_encoder_layers=1, encoder_config=NO_DROPOUT, label_encoder_config=NO_DROPOUT,
                        save_dtype="float16").model_dump()
    trainer = Trainer(tiny_training_config(tmp_path, model=model, max_steps=3, eval_every=100))
    result = trainer.train()
    live = trainer.last_dev_eval
    assert [r.get("saved") for r in result.history] == [True]
    best = GLiDRE.from_pretrained(result.best_dir)
    reloaded = evaluate_dev(dev_predictor(best), trainer.dev_docs, threshold="sweep")
    assert reloaded["curve"] == live["curve"]
    assert reloaded["f1"] == live["f1"] and live["threshold"] == best.config.threshold
    # the frozen layers the trainer caches are computed apart: scores agree to fp32 noise
    assert reloaded["threshold"] == pytest.approx(live["threshold"], abs=1e-6)
    # and the weights training goes on from were not rounded
    assert any(not torch.equal(p, p.half().float()) for p in trainer.model.scorer.parameters())


def test_every_dev_evaluation_scores_the_current_weights_with_bf16_heads(tmp_path):
    """With the heads in bf16 at inference (a CPU with AVX512-BF16/AMX, a GPU) the dev
    evaluation runs cached bf16 copies of them. The trainer's fused AdamW does not bump version
    counters, so the copies made at the first evaluation were reused at every later one: the
    recorded dev F1 and threshold were not those of the weights (regression test)."""
    from glidre_core.evaluation import dev_predictor, evaluate_dev
    from glidre_core.modeling import GLiDRE

    model = tiny_config(trainable_encoder_layers=1, encoder_config=NO_DROPOUT, label_encoder_config=NO_DROPOUT,
                        head_precision="bfloat16").model_dump()
    trainer = Trainer(tiny_training_config(tmp_path, model=model, max_steps=8, eval_every=2))
    trainer.train()
    recorded = trainer.last_dev_eval
    fresh_model = GLiDRE(trainer.model.config)
    fresh_model.load_state_dict(trainer.model.state_dict())
    fresh = evaluate_dev(dev_predictor(fresh_model), trainer.dev_docs, threshold="sweep")
    assert recorded["curve"] == fresh["curve"]
    assert (recorded["threshold"], recorded["f1"]) == (fresh["threshold"], fresh["f1"])
