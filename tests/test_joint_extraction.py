"""Joint entity recognition + relation extraction end to end: training the span head with the
joint loss through the Trainer (also as a second stage on a saved relation model), loading a
checkpoint without a span head, and ``model.extract`` on raw text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import TINY_BERT, tiny_config
from glidre_core import GLiDRE
from glidre_core.documents import parse_document
from glidre_core.evaluation import evaluate_entities, evaluate_joint
from glidre_core.training import Trainer, TrainingConfig

NO_DROPOUT = {**TINY_BERT, "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}

PEOPLE = ["Marie Curie", "Pierre Curie", "Albert Einstein", "Niels Bohr", "Lise Meitner", "Max Planck"]
CITIES = ["Paris", "Warsaw", "Berlin", "Copenhagen", "Vienna", "Zurich"]


def corpus() -> list[dict]:
    """Small synthetic corpus: "<person> lived in <city> ." sentences with typed entities."""
    docs = []
    for i, person in enumerate(PEOPLE):
        for j, city in enumerate(CITIES):
            if (i + j) % 2:
                continue
            text = f"{person} lived in {city} . {person.split()[1]} liked {city} ."
            p0, c0 = 0, text.index(city)
            p1 = text.index(person.split()[1] + " liked")
            c1 = text.rindex(city)
            docs.append({
                "doc_id": f"d{i}{j}", "text": text,
                "entities": [
                    {"id": "p", "type": "PER", "mentions": [{"start": p0, "end": len(person)},
                                                            {"start": p1, "end": p1 + len(person.split()[1])}]},
                    {"id": "c", "type": "LOC", "mentions": [{"start": c0, "end": c0 + len(city)},
                                                            {"start": c1, "end": c1 + len(city)}]},
                ],
                "relations": [{"head": "p", "label": "residence", "tail": "c"}],
            })
    return docs


def write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def training_config(tmp_path: Path, **overrides) -> TrainingConfig:
    rows = corpus()
    data = dict(
        model=tiny_config(span_head=True, max_span_width=3, encoder_config=NO_DROPOUT,
                          label_encoder_config=NO_DROPOUT).model_dump(),
        train={"path": write_jsonl(tmp_path / "train.jsonl", rows[:-2]), "format": "jsonl"},
        dev={"path": write_jsonl(tmp_path / "dev.jsonl", rows[-2:]), "format": "jsonl"},
        output_dir=str(tmp_path / "out"), epochs=25, batch_size=4, eval_every=15, threads=1,
        lr_encoder=1e-3, lr_heads=3e-3, warmup_ratio=0.0,
    )
    data.update(overrides)
    return TrainingConfig.model_validate(data)


@pytest.fixture(scope="module")
def joint_model(tmp_path_factory) -> GLiDRE:
    tmp = tmp_path_factory.mktemp("joint")
    torch.manual_seed(0)
    result = Trainer(training_config(tmp)).train()
    assert result.history and "dev_entity_f1" in result.history[-1]
    return GLiDRE.from_pretrained(result.best_dir)


def test_trained_span_head_finds_the_people_and_places(joint_model):
    cfg = joint_model.config
    assert cfg.span_head and cfg.entity_labels == ["location", "person"]
    out = joint_model.extract("Niels Bohr lived in Paris . Bohr liked Paris .", relation_labels=["residence"])
    found = {(m["text"], e["type"]) for e in out["entities"] for m in e["mentions"]}
    assert ("Niels Bohr", "person") in found and ("Paris", "location") in found
    text = "Niels Bohr lived in Paris . Bohr liked Paris ."
    for e in out["entities"]:
        assert e["id"].startswith("E") and 0 < e["score"] <= 1
        for m in e["mentions"]:
            assert text[m["start"] : m["end"]] == m["text"]
    ids = {e["id"] for e in out["entities"]}
    assert all(r["head_id"] in ids and r["tail_id"] in ids for r in out["relations"])


def test_extract_groups_repeated_and_partial_names(joint_model):
    text = "Niels Bohr lived in Paris . Bohr liked Paris ."
    out = joint_model.extract(text, ["person", "location"], ["residence"], entity_threshold=0.3)
    by_text = {m["text"]: e["id"] for e in out["entities"] for m in e["mentions"]}
    if {"Niels Bohr", "Bohr"} <= set(by_text):
        assert by_text["Niels Bohr"] == by_text["Bohr"]
    mentions = [m for e in out["entities"] for m in e["mentions"] if m["text"] == "Paris"]
    if len(mentions) == 2:
        assert len({by_text["Paris"]}) == 1 and sum(
            1 for e in out["entities"] if any(m["text"] == "Paris" for m in e["mentions"])) == 1
    # the switch: one entity per mention
    single = joint_model.extract(text, ["person", "location"], ["residence"], entity_threshold=0.3, coreference="none")
    assert all(len(e["mentions"]) == 1 for e in single["entities"])
    assert sum(len(e["mentions"]) for e in single["entities"]) == sum(len(e["mentions"]) for e in out["entities"])


def test_ner_and_joint_evaluation_on_the_training_distribution(joint_model):
    docs = [parse_document(r) for r in corpus()[:4]]
    ner = evaluate_entities(joint_model, docs)
    assert ner["n_gold"] == 16 and ner["f1"] > 0.5
    joint = evaluate_joint(joint_model, docs, match="relaxed")
    assert joint["n_gold"] == 4 and 0 <= joint["f1"] <= 1 and joint["entity"]["n_gold"] == 16


def test_second_stage_trains_only_the_span_head_of_a_saved_relation_model(tmp_path):
    torch.manual_seed(0)
    base = GLiDRE(tiny_config(encoder_config=NO_DROPOUT, label_encoder_config=NO_DROPOUT, threshold=0.37))
    base_dir = base.save_pretrained(tmp_path / "relation_only")
    cfg = training_config(
        tmp_path, init_from=str(base_dir), train_only=["span_head."], epochs=3,
        model={"span_head": True, "max_span_width": 3, "relation_loss_weight": 0.0},
    )
    # init_from: the saved config is the base, the YAML's model keys override it
    assert cfg.init_from == str(base_dir)
    trainer = Trainer(cfg)
    assert trainer.cache is not None and trainer.cache.mode == "encoded"  # whole encoder frozen: cached once
    result = trainer.train()
    # the relation heads were not trained: their dev-chosen threshold is kept
    assert GLiDRE.from_pretrained(result.best_dir).config.threshold == pytest.approx(0.37)
    assert result.best_threshold == pytest.approx(0.37)
    after = trainer.model.state_dict()
    before = base.state_dict()
    unchanged = [k for k in before if torch.equal(before[k], after[k])]
    assert len(unchanged) == len(before), "only span-head tensors may change in this stage"
    assert any(k.startswith("span_head.") for k in after)


def test_checkpoint_without_span_head_still_loads_and_predicts(tmp_path):
    torch.manual_seed(0)
    old = GLiDRE(tiny_config())
    directory = old.save_pretrained(tmp_path / "old")
    cfg = json.loads((directory / "config.json").read_text())
    for key in [k for k in cfg if k.startswith(("span", "entity", "max_span", "relation_loss", "coreference"))]:
        del cfg[key]  # a config.json written before the span head existed
    (directory / "config.json").write_text(json.dumps(cfg))
    model = GLiDRE.from_pretrained(directory)
    assert model.span_head is None
    rows = model.predict_relations(
        "Marie Curie lived in Paris.",
        [{"id": "a", "mentions": [{"start": 0, "end": 11}]}, {"id": "b", "mentions": [{"start": 21, "end": 26}]}],
        ["residence"], threshold=0.01,
    )
    assert {(r["head_id"], r["tail_id"]) for r in rows} == {("a", "b"), ("b", "a")}
    with pytest.raises(ValueError, match="no entity \\(span\\) head"):
        model.extract("Marie Curie lived in Paris.")


def test_refit_trains_on_dev_too_keeps_the_last_weights_and_the_given_thresholds(tmp_path):
    """SpERT's protocol (RefitSection): dev joins training, nothing is chosen on it."""
    from glidre_core.training.trainer import split_train_dev

    cfg = training_config(tmp_path, epochs=4, refit={"threshold": 0.41, "entity_threshold": 0.33})
    train, dev = split_train_dev(cfg)
    assert {d.doc_id for d in dev} <= {d.doc_id for d in train}
    assert len(train) == len(corpus())
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    result = trainer.train()
    history = result.history
    # an evaluation every eval_every steps still runs, but only the last weights are kept
    assert len(history) == 2 and history[-1]["step"] == trainer.total_steps()
    assert [r.get("saved", False) for r in history] == [False, True]
    assert all(r["dev_seen_in_training"] for r in history)
    assert all(r["dev_threshold"] == pytest.approx(0.41) for r in history)  # no sweep on seen data
    saved = GLiDRE.from_pretrained(result.best_dir)
    assert saved.config.threshold == pytest.approx(0.41)
    assert saved.config.entity_threshold == pytest.approx(0.33)
    final = trainer.model.state_dict()
    assert all(torch.equal(v.float(), final[k].float()) for k, v in saved.state_dict().items())


def test_refit_config_needs_a_dev_file_and_an_entity_threshold_with_a_span_head(tmp_path):
    with pytest.raises(ValueError, match="refit.entity_threshold"):
        training_config(tmp_path, refit={"threshold": 0.5})
    with pytest.raises(ValueError, match="set 'dev'"):
        training_config(tmp_path, dev=None, refit={"threshold": 0.5, "entity_threshold": 0.5})


def test_refit_reads_the_thresholds_from_the_dev_chosen_model(tmp_path):
    chosen = GLiDRE(tiny_config(span_head=True, max_span_width=3, threshold=0.37, entity_threshold=0.29))
    chosen_dir = str(chosen.save_pretrained(tmp_path / "chosen"))
    cfg = training_config(tmp_path, refit={"from_model": chosen_dir})
    assert (cfg.refit.threshold, cfg.refit.entity_threshold) == (pytest.approx(0.37), pytest.approx(0.29))
    with pytest.raises(ValueError, match="not both"):
        training_config(tmp_path, refit={"from_model": chosen_dir, "threshold": 0.5})
    with pytest.raises(ValueError, match="no saved model"):
        training_config(tmp_path, refit={"from_model": str(tmp_path / "nowhere")})
    with pytest.raises(ValueError, match="refit needs threshold"):
        training_config(tmp_path, refit={"entity_threshold": 0.5})
