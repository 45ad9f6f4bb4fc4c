"""Few-shot: FREDo's official metric, episode loading, the adaptation recipe, the Ray episode
runner and ``glidre adapt``, on a tiny random-weight model and a tiny FREDo-format dataset."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from extraction_support import save_tiny_model
from glidre_core import GLiDRE
from glidre_core.fewshot.adapt import AdaptationRecipe, HeadAdapter
from glidre_core.fewshot.episodes import DEV_EPISODES, load_fredo, relation_text, sample_episodes
from glidre_core.fewshot.fredo import EpisodeRunner, FredoConfig, facts_above, run_fredo
from glidre_core.fewshot.metric import (
    EpisodeCounts, bootstrap_interval, count_document, count_episode, macro_scores,
)


# -- the official metric --------------------------------------------------------------------------
def official_macro_f1(episodes: list[tuple[list[list], list[list]]]) -> float:
    """A transcription of FREDo's code (nicpopovic/FREDo b7f0344): the counting loop of train.py's
    "SCIERC TEST EVAL" block and get_f1_macro of src/util.py. ``episodes``: per query document,
    (predictions, gold) as lists of [h, t, r]."""
    true_positives, false_positives, false_negatives = {}, {}, {}
    for preds, lbs in episodes:
        for inf in preds:
            if inf[2] not in true_positives.keys():
                true_positives[inf[2]] = 0
                false_positives[inf[2]] = 0
                false_negatives[inf[2]] = 0
            if inf in lbs:
                true_positives[inf[2]] += 1
            else:
                false_positives[inf[2]] += 1
        for label in lbs:
            if label[2] not in true_positives.keys():
                true_positives[label[2]] = 0
                false_positives[label[2]] = 0
                false_negatives[label[2]] = 0
            if label not in preds:
                false_negatives[label[2]] += 1
    f = []
    for rtype in true_positives.keys():
        tp, fp, fn = true_positives[rtype], false_positives[rtype], false_negatives[rtype]
        if tp + fn == 0:
            continue
        precision = 0 if tp + fp == 0 else tp / (tp + fp)
        recall = tp / (tp + fn)
        f.append(0 if precision + recall == 0 else 2 * precision * recall / (precision + recall))
    return 100 * sum(f) / len(f)


def test_metric_hand_computed_case():
    # episode 1, one query doc: A: 2 predicted, 1 right, 2 gold -> P 1/2 R 1/2 F1 1/2
    #                           B: predicted only, never gold -> skipped
    # episode 2, two query docs: A: 1 right of 1 predicted, 1 gold -> pooled A: tp 2 fp 1 fn 1
    #                           C: 1 gold fact listed twice, not predicted -> fn 2, F1 0
    e1 = count_episode([[(0, 1, "A"), (1, 2, "A"), (0, 2, "B")]], [[(0, 1, "A"), (2, 0, "A")]])
    e2 = count_episode([[(3, 4, "A")], []], [[(3, 4, "A")], [(1, 0, "C"), (1, 0, "C")]])
    assert e1.counts == {"A": [1, 1, 1], "B": [0, 1, 0]}
    assert e2.counts == {"A": [1, 0, 0], "C": [0, 0, 2]}
    s = macro_scores([e1, e2])
    # A pooled: tp 2, fp 1, fn 1 -> P 2/3, R 2/3, F1 2/3; C: F1 0; B skipped -> macro (2/3 + 0) / 2
    assert set(s["per_type"]) == {"A", "C"}
    assert s["macro_f1"] == pytest.approx(100 * (2 / 3) / 2)
    assert s["macro_precision"] == pytest.approx(100 * (2 / 3) / 2)  # C: no prediction -> P 0
    assert s["macro_recall"] == pytest.approx(100 * (2 / 3) / 2)
    # micro over every type (B's false positive counts here): tp 2, fp 2, fn 3
    assert s["micro_f1"] == pytest.approx(100 * 2 * (2 / 4) * (2 / 5) / (2 / 4 + 2 / 5))
    # pooled per type, not averaged per episode: episode 1 alone has A at 1/2, episode 2 at 1
    assert s["macro_f1"] != pytest.approx((macro_scores([e1])["macro_f1"] + macro_scores([e2])["macro_f1"]) / 2)
    assert s["macro_f1"] == pytest.approx(official_macro_f1(
        [([[0, 1, "A"], [1, 2, "A"], [0, 2, "B"]], [[0, 1, "A"], [2, 0, "A"]]),
         ([[3, 4, "A"]], [[3, 4, "A"]]), ([], [[1, 0, "C"], [1, 0, "C"]])]))


def test_metric_duplicate_gold_predicted_once_is_one_true_positive_and_no_false_negative():
    c = count_document([(1, 2, "A")], [(1, 2, "A"), (1, 2, "A")])
    assert c.counts == {"A": [1, 0, 0]}


def test_metric_matches_the_official_code_on_random_episodes():
    rng = random.Random(7)
    for _ in range(30):
        docs, counts = [], []
        for _ in range(rng.randint(1, 6)):
            episode_docs = []
            for _ in range(rng.randint(1, 3)):
                cand = [[h, t, r] for h in range(4) for t in range(4) if h != t for r in "ABC"]
                gold = rng.sample(cand, rng.randint(0, 4))
                preds = rng.sample(cand, rng.randint(0, 6))
                episode_docs.append((preds, gold))
            docs.extend(episode_docs)
            counts.append(count_episode([p for p, _ in episode_docs], [g for _, g in episode_docs]))
        if not any(g for _, g in docs):
            continue
        assert macro_scores(counts)["macro_f1"] == pytest.approx(official_macro_f1(docs))


def test_metric_without_gold_is_an_error_and_counts_round_trip():
    with pytest.raises(ValueError, match="no relation type"):
        macro_scores([count_episode([[(0, 1, "A")]], [[]])])
    c = count_episode([[(0, 1, "A")]], [[(0, 1, "A"), (1, 0, "B")]])
    assert EpisodeCounts.from_json(json.loads(json.dumps(c.to_json()))).counts == c.counts


def test_bootstrap_interval_brackets_the_estimate_and_is_seeded():
    rng = random.Random(1)
    eps = [EpisodeCounts({"A": [rng.randint(0, 3), rng.randint(0, 3), rng.randint(0, 3)],
                          "B": [rng.randint(0, 2), rng.randint(0, 4), rng.randint(1, 3)]}) for _ in range(40)]
    ci = bootstrap_interval(eps, resamples=600, seed=3)
    assert ci["low"] <= macro_scores(eps)["macro_f1"] <= ci["high"]
    assert ci["low"] < ci["high"]
    assert bootstrap_interval(eps, resamples=600, seed=3) == ci
    # one episode repeated: no variance
    same = bootstrap_interval([eps[0]] * 10, resamples=200)
    assert same["low"] == pytest.approx(same["high"])


# -- a tiny FREDo-format dataset -----------------------------------------------------------------
CODES = ["USED-FOR", "PART-OF", "COMPARE"]


def _doc(i: int, rng: random.Random) -> dict:
    words = [f"w{i}x{k}" for k in range(5)]
    sents = [["The", f"method{i}", "uses", f"parser{i}", "and", f"tagger{i}", "."],
             ["A", f"lexicon{i}", "is", "part", "of", f"system{i}", "with", *words, "."]]
    vertex = [
        [{"name": f"method{i}", "type": "Method", "pos": [1, 2], "sent_id": 0}],
        [{"name": f"parser{i}", "type": "Method", "pos": [3, 4], "sent_id": 0}],
        [{"name": f"tagger{i}", "type": "Method", "pos": [5, 6], "sent_id": 0}],
        [{"name": f"lexicon{i}", "type": "Material", "pos": [1, 2], "sent_id": 1}],
        [{"name": f"system{i}", "type": "Generic", "pos": [5, 6], "sent_id": 1}],
    ]
    labels = [{"r": "USED-FOR", "h": 1, "t": 0, "evidence": [0]}, {"r": "USED-FOR", "h": 2, "t": 0, "evidence": [0]},
              {"r": "PART-OF", "h": 3, "t": 4, "evidence": [1]}]
    if rng.random() < 0.5:
        labels.append({"r": "COMPARE", "h": 1, "t": 2, "evidence": [0]})
    return {"title": f"D{i}", "sents": sents, "vertexSet": vertex, "labels": labels}


@pytest.fixture(scope="module")
def fredo_dir(tmp_path_factory) -> Path:
    rng = random.Random(0)
    d = tmp_path_factory.mktemp("fredo")
    docs = [_doc(i, rng) for i in range(8)]
    (d / "test_scierc.json").write_text(json.dumps(docs))
    for k, q in ((1, 3), (3, 1)):
        eps = []
        for _ in range(DEV_EPISODES + 6):
            ids = rng.sample(range(8), k + q)
            types = sorted({lab["r"] for i in ids[:k] for lab in docs[i]["labels"]})
            eps.append({"support": ids[:k], "labeled_relations": types, "r_s": "USED-FOR", "query": ids[k:]})
        (d / f"test_cross_domain_{k}_doc_indices.json").write_text(json.dumps(eps))
    return d


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def test_load_fredo_keeps_codes_indices_and_gold(fredo_dir):
    data = load_fredo("cross_domain_1", fredo_dir)
    assert len(data.documents) == 8 and len(data.episodes) == DEV_EPISODES + 6
    assert data.label_names == {"USED-FOR": "used for", "PART-OF": "part of", "COMPARE": "compare"}
    raw = json.loads((fredo_dir / "test_scierc.json").read_text())
    assert data.gold(2, ["USED-FOR", "PART-OF"]) == [(lab["h"], lab["t"], lab["r"]) for lab in raw[2]["labels"]
                                                     if lab["r"] != "COMPARE"]
    assert relation_text("P17") == "country" and relation_text("HYPONYM-OF") == "hyponym of"


def test_samples_leave_the_dev_slice_out_and_are_seeded(fredo_dir):
    eps = load_fredo("cross_domain_3", fredo_dir).episodes
    a = sample_episodes(eps, 4, seed=5)
    assert a == sample_episodes(eps, 4, seed=5)
    assert all(e.episode_id >= DEV_EPISODES for e in a) and len(a) == 4
    assert len(sample_episodes(eps, None, seed=5)) == len(eps)
    with pytest.raises(ValueError, match="between 1 and 6"):
        sample_episodes(eps, 7, seed=0)


# -- adaptation -----------------------------------------------------------------------------------
def test_adaptation_lowers_the_loss_changes_predictions_and_resets_exactly(fredo_dir, tiny_dir):
    torch.manual_seed(0)
    data = load_fredo("cross_domain_1", fredo_dir)
    model = GLiDRE.from_pretrained(tiny_dir)
    adapter = HeadAdapter(model, AdaptationRecipe(method="finetune", epochs=15, lr=3e-3,
                                                  train=["scorer.", "label_encoder.ffn."]))
    assert set(adapter.params) and all(n.startswith(("scorer.", "label_encoder.ffn.")) for n in adapter.params)
    assert any(n.startswith("scorer.") for n in adapter.params)
    assert not any(p.requires_grad for p in model.encoder.parameters())
    runner = EpisodeRunner(adapter, data)
    ep = data.episodes[0]
    text = {c: data.label_names[c] for c in ep.labeled_relations}
    labels = list(text.values())
    query = [data.documents[i] for i in ep.query]
    adapter.encode(query)
    code_of = {t: c for c, t in text.items()}
    before = facts_above(adapter.predictor(labels, adapted=False), query, code_of, 0.0)
    with adapter.adapted(runner.support_documents(ep, text), labels) as losses:
        during = facts_above(adapter.predictor(labels, adapted=False), query, code_of, 0.0)
    after = facts_above(adapter.predictor(labels, adapted=False), query, code_of, 0.0)
    assert len(losses) == 15 and losses[-1] < 0.5 * losses[0]
    probs = lambda facts: np.array([f[3] for doc in facts for f in doc])  # noqa: E731
    assert np.abs(probs(during) - probs(before)).max() > 1e-3
    np.testing.assert_array_equal(probs(after), probs(before))


def test_recipe_refuses_to_train_the_encoder():
    with pytest.raises(ValueError, match="frozen"):
        AdaptationRecipe(train=["encoder.model."])


# -- the episode runner, in-process and on Ray -------------------------------------------------------
def test_fredo_cli_in_process_writes_the_documented_json(fredo_dir, tiny_dir, tmp_path):
    from glidre_core.cli import main

    out = tmp_path / "fredo.json"
    res = CliRunner().invoke(main, [
        "fewshot", "fredo", "--split", "cross_domain_1", "--model", str(tiny_dir), "--data-dir", str(fredo_dir),
        "--episodes", "3", "--seed", "1", "--num-cpus", "0", "--set", "method=finetune", "--set", "epochs=3",
        "--output-json", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["episodes"] == 3 and result["units"] == "percent"
    assert 0 <= result["macro_f1"] <= 100 and 0 <= result["zero_shot_macro_f1"] <= 100
    assert result["macro_f1_ci95"][0] <= result["macro_f1"] <= result["macro_f1_ci95"][1]
    assert all(e["id"] >= DEV_EPISODES for e in result["per_episode"])
    assert result["recipe"]["epochs"] == 3 and result["comparable_with_published"] is True


@pytest.mark.slow
def test_fredo_on_ray_matches_the_in_process_run(fredo_dir, tiny_dir):
    """Real local Ray, 2 tasks: per-episode seeds make results independent of chunking."""
    base = dict(split="cross_domain_3", model=str(tiny_dir), data_dir=str(fredo_dir), episodes=4, seed=2,
                recipe=AdaptationRecipe(method="finetune", epochs=4, lr=1e-3), bootstrap_resamples=200)
    on_ray = run_fredo(FredoConfig(**base, num_cpus=1, chunk_size=2))
    local = run_fredo(FredoConfig(**base, num_cpus=0, chunk_size=3))
    assert on_ray["episode_ids"] == local["episode_ids"]
    assert on_ray["per_episode"] == [{**e, "seconds": r["seconds"]} for e, r in zip(local["per_episode"],
                                                                                      on_ray["per_episode"])]
    assert on_ray["macro_f1"] == local["macro_f1"]


# -- glidre adapt ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_glidre_adapt_saves_a_loadable_model_and_tracks_it(fredo_dir, tiny_dir, tmp_path, mlflow_uri):
    from glidre_core.cli import main
    from glidre_core.readers import read_documents

    docs = read_documents(fredo_dir / "test_scierc.json", "docred", rel_info={c: c.lower().replace("-", " ")
                                                                             for c in CODES})[:2]
    support = tmp_path / "support.jsonl"
    support.write_text("\n".join(d.model_dump_json() for d in docs))
    out = tmp_path / "adapted"
    args = ["adapt", "--model", str(tiny_dir), "--data", str(support), "--labels", "used for,part of",
            "--output", str(out), "--set", "method=finetune", "--set", "epochs=5", "--set", "threshold=0.4",
            "--tracking-uri", mlflow_uri, "--run-name", "adapt-test"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    record = json.loads((out / "adaptation.json").read_text())
    assert record["examples"] == {"used for": 4, "part of": 2} and len(record["losses"]) == 5
    assert record["losses"][-1] < record["losses"][0]  # the default recipe (label FFN) learns
    adapted = GLiDRE.from_pretrained(out)
    assert adapted.config.labels[-2:] == ["used for", "part of"] and adapted.config.threshold == 0.4
    base = GLiDRE.from_pretrained(tiny_dir)
    # the default recipe trains the label FFN alone
    assert not torch.equal(adapted.label_encoder.ffn[0].weight, base.label_encoder.ffn[0].weight)
    assert torch.equal(adapted.scorer.pair_ffn[0].weight, base.scorer.pair_ffn[0].weight)
    assert torch.equal(adapted.encoder.model.embeddings.word_embeddings.weight,
                       base.encoder.model.embeddings.word_embeddings.weight)
    from glidre_core.tracking import client

    c = client(mlflow_uri)
    run = c.get_run(record["mlflow_run_id"])
    assert run.data.params["recipe.epochs"] == "5"
    assert len(c.get_metric_history(run.info.run_id, "adapt_loss")) == 5
    assert CliRunner().invoke(main, args).exit_code != 0  # the output exists: refused without --overwrite
    bad = CliRunner().invoke(main, [*args[:6], "used for,spouse", *args[7:], "--overwrite"])
    assert bad.exit_code != 0 and "spouse" in bad.output


# -- the prototype method -----------------------------------------------------------------------------
def _varied_documents(fredo_dir) -> list:
    """FREDo test documents with 5, 3, 2 and 4 entities (padding, several pair counts)."""
    docs = load_fredo("cross_domain_1", fredo_dir).documents
    return [d.model_copy(update={"entities": d.entities[:n], "relations": []}) for d, n in zip(docs, (5, 3, 2, 4))]


@pytest.mark.parametrize("chunk", [4096, 2])
def test_pair_representations_reproduce_the_forward_logits(fredo_dir, chunk):
    from conftest import tiny_config

    torch.manual_seed(0)
    model = GLiDRE(tiny_config(pair_chunk_size=chunk)).eval()
    docs = _varied_documents(fredo_dir)
    batch, _ = model.collate([model.prepare(d) for d in docs])
    labels = model.encode_labels(["used for", "part of", "compare"]).vectors.detach()
    with torch.no_grad():
        logits = model(batch, labels).relation_logits
        reps = model.pair_representations(batch)
    assert reps.shape == (sum(n * (n - 1) for n in (5, 3, 2, 4)), model.dim) == (logits.shape[0], labels.shape[1])
    torch.testing.assert_close(reps @ labels.T, logits, atol=1e-5, rtol=1e-5)
    # the inference layer: per document, in the pair order of score_relations
    predictor = model.predictor(relation_labels=["used for", "part of", "compare"])
    vectors, scores = predictor.pair_representations(docs), predictor.score_relations(docs)
    lab = predictor.relations.vectors.numpy()
    for v, s in zip(vectors, scores):
        np.testing.assert_array_equal(v.heads, s.heads)
        np.testing.assert_array_equal(v.tails, s.tails)
        np.testing.assert_allclose(1 / (1 + np.exp(-(v.vectors @ lab.T))), s.probs, atol=1e-5)
    assert [len(v.heads) for v in vectors] == [20, 6, 2, 12]


def _pairs(ids: list[str], vectors: list[list[float]]):
    """PairVectors of every ordered pair of ``ids`` (in itertools order) with the given vectors."""
    from types import SimpleNamespace

    from glidre_core.inference import PairVectors

    pairs = [(h, t) for h in range(len(ids)) for t in range(len(ids)) if h != t]
    assert len(pairs) == len(vectors)
    return PairVectors(SimpleNamespace(entity_ids=ids), np.array([h for h, _ in pairs]),
                       np.array([t for _, t in pairs]), np.asarray(vectors, dtype=np.float32))


#: the prototype method without its dev-chosen options (mean prototype and mean NOTA, all pairs, no centering,
#: no context vectors)
NEUTRAL = dict(method="prototype", candidates="all", center=False, positive="mean", nota="mean", margin=0.0,
               prototype_mix=1.0, single_label=False, direction="any", context_weight=0.0)


def test_prototypes_on_a_hand_made_case():
    from glidre_core.documents import Document, Entity, Mention, Relation
    from glidre_core.fewshot.prototype import Prototypes, pair_targets

    # support: 3 entities, 6 ordered pairs (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)
    # "a" on (0,1) and (1,2) along x; "b" on (2,0) along y; NOTA pairs along z (one off-axis)
    e = ["e0", "e1", "e2"]
    support = _pairs(e, [[1, 0.1, 0], [0, 0, 1], [0, 0.2, 1], [1, -0.1, 0], [0, 1, 0], [0.6, 0, 0.8]])
    doc = Document(doc_id="s", text="A B C", entities=[
        Entity(id=f"e{i}", type="X", mentions=[Mention(start=2 * i, end=2 * i + 1)]) for i in range(3)], relations=[
        Relation(head="e0", label="a", tail="e1"), Relation(head="e1", label="a", tail="e2"),
        Relation(head="e2", label="b", tail="e0"), Relation(head="e2", label="other", tail="e1")])
    np.testing.assert_array_equal(pair_targets(support, doc, ["a", "b"]).nonzero(), [[0, 3, 4], [0, 0, 1]])
    label_vectors = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32)  # the names point the other way
    build = lambda **kw: Prototypes.from_support([(support, doc)], ["a", "b"], label_vectors,  # noqa: E731
                                                  AdaptationRecipe(**{**NEUTRAL, **kw}))
    p = build()
    np.testing.assert_allclose(p.types, [[1, 0, 0], [0, 1, 0]], atol=1e-6)
    assert p.positives == [2, 1] and len(p.nota) == 3  # (2,1) has only "other": NOTA
    # queries: along x -> a, along y -> b, along z -> nothing, between x and z -> a vs NOTA
    q = np.array([[2, 0, 0], [0, 3, 0], [0, 0, 1], [1, 0, 1]], dtype=np.float32)
    nota = np.array([[0, 0, 1], [0, 0.2, 1], [0.6, 0, 0.8]])
    nota_mean = (nota / np.linalg.norm(nota, axis=1, keepdims=True)).sum(0)  # the mean of the unit vectors
    nota_mean /= np.linalg.norm(nota_mean)
    s = np.array([[1, 0], [0, 1], [0, 0], [2 ** -0.5, 0]])
    np.testing.assert_allclose(p.margins(q), s - (q / np.linalg.norm(q, axis=1, keepdims=True) @ nota_mean)[:, None],
                               atol=1e-6)
    assert (p.probabilities(q) > 0.5).tolist() == [[True, False], [False, True], [False, False], [False, False]]
    # nearest NOTA: the off-axis NOTA vector (0.6, 0, 0.8) beats "a" for x+z (0.99 > 0.71)
    assert (build(nota="nearest").probabilities(q) > 0.5)[3].tolist() == [False, False]
    # no NOTA, absolute margin 0.5: x+z (cos 0.71 with "a") becomes "a"
    assert (build(nota="none", margin=0.5).probabilities(q) > 0.5)[3].tolist() == [True, False]
    # the label strings alone (mix 0) swap the answers: x -> "b", y -> "a"
    assert (build(prototype_mix=0.0, nota="none", margin=0.5).probabilities(q) > 0.5)[:2].tolist() == [
        [False, True], [True, False]]
    # single label: a pair close to both keeps only the best
    both = np.array([[1, 0.9, 0]], dtype=np.float32)
    assert (build(nota="none").probabilities(both) > 0.5).tolist() == [[True, True]]
    assert (build(nota="none", single_label=True).probabilities(both) > 0.5).tolist() == [[True, False]]
    # a type without a support positive falls back to its label vector
    lone = Prototypes.from_support([(support, doc)], ["a", "c"], label_vectors, AdaptationRecipe(**NEUTRAL))
    np.testing.assert_allclose(lone.types[1], [1, 0, 0])
    assert lone.positives == [2, 0]


def test_prototype_candidates_centering_and_nearest_positive():
    from glidre_core.documents import Document, Entity, Mention, Relation
    from glidre_core.fewshot.prototype import NOT_A_CANDIDATE, Prototypes, pair_rules

    raw = [[1, 0.1, 0], [0, 0, 1], [0, 0.2, 1], [1, -0.1, 0], [0, 1, 0], [0.6, 0, 0.8]]
    support = _pairs(["e0", "e1", "e2"], raw)
    rels = [Relation(head="e0", label="a", tail="e1"), Relation(head="e1", label="a", tail="e2"),
            Relation(head="e2", label="b", tail="e0")]

    def doc(sent_ids):
        return Document(doc_id="s", text="A B C", relations=rels, entities=[
            Entity(id=f"e{i}", mentions=[Mention(start=2 * i, end=2 * i + 1, sent_id=s)]) for i, s in enumerate(sent_ids)])

    # e0 and e1 share sentence 0, e2 is alone in sentence 1: candidates (0,1) and (1,0) only
    split = doc([0, 0, 1])
    assert pair_rules(support, split, "same_sentence")[0].tolist() == [True, False, True, False, False, False]
    assert pair_rules(support, split, "all")[0].all() and pair_rules(support, split, "all")[1] is None
    # one geometry pass gives both: orders of the same-sentence pairs, 0 for the others
    assert pair_rules(support, split, "same_sentence", orders=True)[1].tolist() == [1, 0, -1, 0, 0, 0]
    # a mention without sent_id: the document is split by the rule instead ("A B C" is one sentence)
    assert pair_rules(support, doc([None, 0, 1]), "same_sentence")[0].all()
    assert pair_rules(support, doc([None, 0, 1]), "all", orders=True)[1].tolist() == [1, 1, -1, 1, -1, -1]
    labels = np.array([[0, 1, 0], [1, 0, 0]], dtype=np.float32)
    build = lambda d, **kw: Prototypes.from_support([(support, d)], ["a", "b"], labels,  # noqa: E731
                                                     AdaptationRecipe(**{**NEUTRAL, **kw}))
    # NOTA keeps candidate pairs only: (1,0); positives count wherever they are
    p = build(split, candidates="same_sentence")
    assert p.positives == [2, 1] and len(p.nota) == 1
    np.testing.assert_allclose(p.nota[0], np.array([0, 0.2, 1]) / np.linalg.norm([0, 0.2, 1]), atol=1e-6)
    assert len(build(split).nota) == 3
    # centering subtracts the mean of the kept support vectors (here: positives and (1,0))
    c = build(split, candidates="same_sentence", center=True)
    np.testing.assert_allclose(c.center, np.mean([raw[i] for i in (0, 2, 3, 4)], 0), atol=1e-6)
    np.testing.assert_allclose(build(split, center=True).center, np.mean(raw, 0), atol=1e-6)
    assert not build(split).center.any()
    # non-candidates are never predicted
    q = np.array([[1, 0, 0], [1, 0, 0]], dtype=np.float32)
    m = p.margins(q, np.array([True, False]))
    assert m[1].tolist() == [NOT_A_CANDIDATE] * 2 and m[0, 0] > 0
    assert (p.probabilities(q, np.array([True, False]))[1] < 1e-30).all()
    # nearest positive: the best single positive, not the mean of the positives
    near = np.array([[1, 0.1, 0]], dtype=np.float32)
    assert build(split, positive="nearest").type_scores(near)[0, 0] == pytest.approx(1.0, abs=1e-6)
    assert build(split).type_scores(near)[0, 0] == pytest.approx(1 / np.linalg.norm([1, 0.1]), abs=1e-6)


def test_prototype_recipe_validation():
    # the default is the dev-chosen prototype recipe; fine-tuning keeps its own defaults
    d = AdaptationRecipe()
    assert (d.method, d.candidates, d.max_gap, d.direction, d.center, d.positive, d.nota, d.prototype_mix,
            d.single_label, d.margin, d.threshold) == (
        "prototype", "same_sentence", 2, "support", True, "nearest", "none", 1.0, True, 0.12, 0.5)
    assert d.context_weight == 1.0
    f = AdaptationRecipe(method="finetune")
    assert (f.epochs, f.lr, f.train, f.threshold) == (10, 1e-4, ["label_encoder.ffn."], 0.25)
    r = AdaptationRecipe(method="prototype", margin=0.1)
    assert r.threshold == 0.5 and AdaptationRecipe(**r.model_dump()) == r  # round trip (Ray tasks)
    assert AdaptationRecipe(method="prototype", threshold=0.3).threshold == 0.3
    # every pair: the default gap goes with the default rule; None switches the gap off
    assert AdaptationRecipe(candidates="all").max_gap is None
    assert AdaptationRecipe(max_gap=None).max_gap is None
    for bad, match in [
        ({"method": "nearest"}, "method"),
        ({"method": "prototype", "prototype_mix": 1.5}, "prototype_mix"),
        ({"method": "prototype", "nota": "max"}, "nota"),
        ({"method": "prototype", "candidates": "sentence"}, "candidates"),
        ({"method": "prototype", "positive": "max"}, "positive"),
        ({"method": "prototype", "temperature": 0}, "temperature"),
        ({"method": "finetune", "center": False}, r"\['center'\] do not apply"),
        ({"method": "finetune", "margin": 0.1}, "do not apply to method='finetune'"),
        ({"method": "finetune", "nota": "nearest"}, "do not apply"),
        ({"epochs": 3}, r"\['epochs'\] do not apply to method='prototype'"),
        ({"method": "prototype", "threshold": None}, "needs a threshold"),
        ({"method": "prototype", "candidates": "all", "max_gap": 2}, "max_gap needs"),
        ({"method": "prototype", "max_gap": -1}, "max_gap"),
        ({"method": "finetune", "max_gap": 3}, r"\['max_gap'\] do not apply"),
    ]:
        with pytest.raises(ValueError, match=match):
            AdaptationRecipe(**bad)


@pytest.mark.parametrize("max_gap", [None, 1])
def test_prototype_method_in_the_runner_trains_nothing(fredo_dir, tiny_dir, tmp_path, max_gap):
    from glidre_core.fewshot.prototype import pair_rules
    from glidre_core.fewshot.workflow import adapt_to_documents

    data = load_fredo("cross_domain_3", fredo_dir)
    model = GLiDRE.from_pretrained(tiny_dir)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    recipe = AdaptationRecipe(method="prototype", nota="none", margin=0.2, max_gap=max_gap)
    runner = EpisodeRunner(HeadAdapter(model, recipe), data)
    ep = data.episodes[DEV_EPISODES]
    res = runner.run(ep, zero_shot=False)
    assert res.losses == [] and set(res.counts) == {"adapted"}
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())
    # the runner's predictions are exactly the pairs whose prototype margin is positive
    text = {c: data.label_names[c] for c in ep.labeled_relations}
    protos = runner.adapter.prototypes(runner.support_documents(ep, text), list(text.values()))
    expected = []
    for i in ep.query:
        pv = runner.adapter.pair_vectors([data.documents[i]])[0]
        rules = pair_rules(pv, data.documents[i], recipe.candidates, recipe.max_gap, orders=True, contexts=True)
        assert rules.candidates.sum() == (8 if max_gap is None else 4)  # see the same-sentence baseline test
        p, r = (protos.margins(pv.vectors, *rules) > 0).nonzero()
        ids = pv.prepared.entity_ids
        expected.append([(int(ids[pv.heads[a]]), int(ids[pv.tails[a]]), ep.labeled_relations[b]) for a, b in zip(p, r)])
    assert res.counts["adapted"].counts == count_episode(expected, [data.gold(i, ep.labeled_relations)
                                                                    for i in ep.query]).counts
    with pytest.raises(ValueError, match="trains nothing"):
        runner.adapter.adapt(runner.support_documents(ep, text), list(text.values()))
    # glidre adapt saves these prototypes; the saved model scores exactly what the runner scored
    labels = list(text.values())
    adapt_to_documents(str(tiny_dir), runner.support_documents(ep, text), labels, tmp_path / "out", recipe)
    saved = GLiDRE.from_pretrained(tmp_path / "out").predictor(relation_labels=labels)
    queries = [data.documents[i] for i in ep.query]
    for got, want in zip(saved.score_relations(queries),
                         runner.adapter.prototype_predictor(runner.support_documents(ep, text), labels)
                         .score_relations(queries)):
        np.testing.assert_allclose(got.probs, want.probs, rtol=0, atol=1e-6)


def test_fredo_cli_runs_the_prototype_method(fredo_dir, tiny_dir, tmp_path):
    from glidre_core.cli import main

    out = tmp_path / "fredo.json"
    res = CliRunner().invoke(main, [
        "fewshot", "fredo", "--split", "cross_domain_1", "--model", str(tiny_dir), "--data-dir", str(fredo_dir),
        "--episodes", "3", "--seed", "1", "--num-cpus", "0", "--no-zero-shot", "--set", "margin=0.1",
        "--set", "max_gap=null", "--set", "direction=any", "--output-json", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    assert result["recipe"]["method"] == "prototype" and result["recipe"]["margin"] == 0.1
    assert result["recipe"]["max_gap"] is None
    assert result["thresholds"]["adapted"] == 0.5 and all(e["loss"] is None for e in result["per_episode"])
    assert result["recipe"]["candidates"] == "same_sentence"  # the default method and its options
    assert 0 <= result["same_sentence_pairs_macro_f1"] <= 100 and "recipe_candidate_pairs_macro_f1" not in result
    gap = CliRunner().invoke(main, [
        "fewshot", "fredo", "--split", "cross_domain_1", "--model", str(tiny_dir), "--data-dir", str(fredo_dir),
        "--episodes", "3", "--seed", "1", "--num-cpus", "0", "--no-zero-shot", "--set", "max_gap=1",
        "--output-json", str(out)])
    assert gap.exit_code == 0, gap.output
    result = json.loads(out.read_text())
    assert result["recipe"]["max_gap"] == 1 and 0 <= result["recipe_candidate_pairs_macro_f1"] <= 100
    bad = CliRunner().invoke(main, ["fewshot", "fredo", "--split", "cross_domain_1", "--model", str(tiny_dir),
                                    "--data-dir", str(fredo_dir), "--set", "epochs=3"])
    assert bad.exit_code != 0 and "epochs" in bad.output


def test_the_dev_sweep_counts_like_the_official_metric():
    """benchmarks/fredo_prototype_dev.py counts every margin at once; it must equal count_document."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fredo_prototype_dev.py"
    spec = importlib.util.spec_from_file_location("fredo_prototype_dev", path)
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    rng = np.random.default_rng(0)
    types = ["A", "B", "C", "D"]
    for _ in range(20):
        n = int(rng.integers(2, 6))
        pairs = [(h, t) for h in range(n) for t in range(n) if h != t]
        rows = {(str(h), str(t)): p for p, (h, t) in enumerate(pairs)}
        codes = ["A", "C", "D"][: int(rng.integers(1, 4))]
        margins = rng.normal(0, 0.3, (len(pairs), len(codes))).astype(np.float32)
        gold = [(*pairs[int(rng.integers(len(pairs)))], codes[int(rng.integers(len(codes)))]) for _ in range(4)]
        gold += [gold[0], (1, 1, codes[0])]  # a duplicate and a self pair
        got = dev.sweep_counts(margins, rows, codes, gold, types)
        for k, m in enumerate(dev.MARGINS):
            p, r = (margins > np.float32(m)).nonzero()
            ref = count_document([(*pairs[a], codes[b]) for a, b in zip(p, r)], gold).counts
            assert {t: got[k, i].tolist() for i, t in enumerate(types) if got[k, i].any()} == \
                {t: v for t, v in ref.items() if any(v)}


def test_the_same_sentence_baseline_predicts_every_label_for_same_sentence_pairs_only(fredo_dir):
    from glidre_core.fewshot.fredo import all_pairs_counts

    data = load_fredo("cross_domain_3", fredo_dir)
    ep = data.episodes[0]
    # each tiny document: entities 0-2 in sentence 0, 3-4 in sentence 1 -> 3*2 + 2*1 = 8 ordered pairs (of 20)
    for rule, pairs in (("same_sentence", 8), ("all", 20)):
        counts = all_pairs_counts(data, ep, rule).counts
        assert sum(tp + fp for tp, fp, _ in counts.values()) == pairs * len(ep.labeled_relations) * len(ep.query)
    # every gold fact of the tiny documents is within a sentence: nothing is missed
    assert all(fn == 0 for _, _, fn in all_pairs_counts(data, ep, "same_sentence").counts.values())
    with pytest.raises(ValueError, match="candidate rule"):
        all_pairs_counts(data, ep, "window")
    # words between mentions: sentence 0 "The method uses parser and tagger ." -> method-parser 1,
    # parser-tagger 1, method-tagger 3; sentence 1 "A lexicon is part of system ..." -> 3
    for gap, pairs in ((0, 0), (1, 4), (2, 4), (3, 8), (40, 8)):
        counts = all_pairs_counts(data, ep, "same_sentence", gap).counts
        assert sum(tp + fp for tp, fp, _ in counts.values()) == pairs * len(ep.labeled_relations) * len(ep.query)
    # support directions: every tiny document writes USED-FOR tail first (parser -> method), PART-OF and
    # COMPARE head first, so each label keeps one of the two orders of each pair: 4 of the 8, and no
    # gold fact is lost
    directed = all_pairs_counts(data, ep, "same_sentence", None, "support").counts
    assert sum(tp + fp for tp, fp, _ in directed.values()) == 4 * len(ep.labeled_relations) * len(ep.query)
    assert all(fn == 0 for _, _, fn in directed.values())
    with pytest.raises(ValueError, match="direction"):
        all_pairs_counts(data, ep, "same_sentence", None, "backwards")


def test_word_gap_candidates_on_a_hand_made_document():
    from glidre_core.documents import Document, Entity, Mention
    from glidre_core.fewshot.candidates import entity_candidates, mention_geometry, word_gaps

    # sentence 0: "Alpha uses Beta and the Gamma ." ; sentence 1: "Delta , Alpha !"
    text = "Alpha uses Beta and the Gamma . Delta , Alpha !"
    spans = {"a": [(0, 5, 0), (40, 45, 1)], "b": [(11, 15, 0)], "g": [(24, 29, 0)], "d": [(32, 37, 1)]}
    doc = Document(doc_id="h", text=text, entities=[
        Entity(id=k, mentions=[Mention(start=s, end=e, sent_id=i) for s, e, i in v]) for k, v in spans.items()])
    gaps = word_gaps(doc)
    inf = np.inf
    # alpha-beta 1 ("uses"), alpha-gamma 4, beta-gamma 2, alpha-delta 1 (",", second Alpha mention)
    np.testing.assert_array_equal(gaps, [[inf, 1, 4, 1], [1, inf, 2, inf], [4, 2, inf, inf], [1, inf, inf, inf]])
    assert entity_candidates(doc, "same_sentence").sum() == 8
    # text order of the closest mentions: Alpha before Beta; Delta before the second Alpha
    order = mention_geometry(doc)[1]
    assert order[0, 1] == 1 and order[1, 0] == -1 and order[0, 3] == -1 and order[3, 0] == 1
    assert order[1, 3] == 0 and (np.diag(order) == 0).all() and (order == -order.T).all()
    assert entity_candidates(doc, "same_sentence", 1).nonzero()[0].tolist() == [0, 0, 1, 3]
    assert entity_candidates(doc, "same_sentence", 1).nonzero()[1].tolist() == [1, 3, 0, 0]
    assert entity_candidates(doc, "all").sum() == 12 and not entity_candidates(doc, "all").diagonal().any()
    # overlapping or touching mentions are 0 apart
    touching = Document(doc_id="t", text="New York City", entities=[
        Entity(id="x", mentions=[Mention(start=0, end=8, sent_id=0)]),
        Entity(id="y", mentions=[Mention(start=4, end=13, sent_id=0)])])
    assert word_gaps(touching)[0, 1] == 0 and entity_candidates(touching, "same_sentence", 0).sum() == 2
    with pytest.raises(ValueError, match="max_gap needs"):
        entity_candidates(doc, "all", 2)
    with pytest.raises(ValueError, match="candidate rule"):
        entity_candidates(doc, "window")
    # without sentence ids the text is split by the rule ("." then a capital): the same geometry
    no_ids = Document(doc_id="n", text=text, entities=[
        Entity(id=k, mentions=[Mention(start=s, end=e) for s, e, _ in v]) for k, v in spans.items()])
    np.testing.assert_array_equal(word_gaps(no_ids), gaps)
    np.testing.assert_array_equal(mention_geometry(no_ids)[1], order)
    # given sentence spans win over the rule: one span over the whole text joins the two sentences
    one = no_ids.model_copy(update={"sentences": [(0, len(text))]})
    assert np.isfinite(word_gaps(one)[1, 3])


def test_split_sentences_rule():
    from glidre_core.fewshot.candidates import split_sentences

    text = 'He left. "Why?" she asked (twice). 3 more came! e.g. this. And done'
    spans = split_sentences(text)
    assert [text[a:b] for a, b in spans] == ["He left.", '"Why?" she asked (twice).', "3 more came! e.g. this.",
                                             "And done"]
    assert split_sentences("") == [(0, 0)]


def test_paired_bootstrap_difference_is_zero_for_identical_arms_and_signed():
    from glidre_core.fewshot.metric import paired_bootstrap_difference

    rng = np.random.default_rng(1)
    eps = [EpisodeCounts({"A": [int(rng.integers(0, 4)), int(rng.integers(0, 6)), int(rng.integers(0, 3))],
                          "B": [int(rng.integers(0, 2)), int(rng.integers(0, 6)), int(rng.integers(0, 3))]})
           for _ in range(40)]
    same = paired_bootstrap_difference(eps, eps, resamples=500)
    assert same["difference"] == 0 and same["low"] == 0 and same["high"] == 0
    # a worse arm: every true positive of A turned into a false negative
    worse = [EpisodeCounts({**e.counts, "A": [0, e.counts["A"][1], e.counts["A"][0] + e.counts["A"][2]]})
             for e in eps]
    d = paired_bootstrap_difference(eps, worse, resamples=500)
    assert d["difference"] > 0 and 0 < d["low"] <= d["difference"] <= d["high"]
    with pytest.raises(ValueError, match="same"):
        paired_bootstrap_difference(eps, eps[:-1])


def test_fredo_compare_scores_the_baselines_on_the_result_episodes(fredo_dir, tiny_dir, tmp_path):
    import importlib.util

    from glidre_core.cli import main

    out = tmp_path / "fredo.json"
    res = CliRunner().invoke(main, [
        "fewshot", "fredo", "--split", "cross_domain_1", "--model", str(tiny_dir), "--data-dir", str(fredo_dir),
        "--episodes", "4", "--seed", "2", "--num-cpus", "0", "--no-zero-shot", "--output-json", str(out)])
    assert res.exit_code == 0, res.output
    result = json.loads(out.read_text())
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fredo_compare.py"
    spec = importlib.util.spec_from_file_location("fredo_compare", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.parse_rule("same_sentence:2") == ("same_sentence", 2, "any")
    assert mod.parse_rule("all") == ("all", None, "any")
    assert mod.parse_rule("same_sentence:1:support") == ("same_sentence", 1, "support")
    cmp = mod.compare(result, fredo_dir, ["same_sentence", "same_sentence:2", "same_sentence:2:support", "all"],
                      resamples=300)
    entry = cmp["subsets"]["all"]
    assert entry["episodes"] == 4 and entry["macro_f1"] == pytest.approx(result["macro_f1"])
    assert entry["baselines"]["same_sentence"]["macro_f1"] == pytest.approx(result["same_sentence_pairs_macro_f1"])
    assert entry["baselines"]["all"]["macro_f1"] == pytest.approx(result["all_pairs_macro_f1"])
    assert entry["baselines"]["same_sentence:2:support"]["macro_f1"] == pytest.approx(
        result["recipe_candidate_pairs_macro_f1"])  # the default recipe's rules without its pair vectors
    diff = entry["baselines"]["all"]["result_minus_baseline"]
    assert diff["difference"] == pytest.approx(result["macro_f1"] - result["all_pairs_macro_f1"])
    assert diff["low"] <= diff["high"]
    assert cmp["subsets"]["ids >= 50"]["episodes"] == 4  # samples never hold the dev slice
    with pytest.raises(ValueError, match="zero_shot"):
        mod.compare(result, fredo_dir, ["all"], mode="zero_shot")


def test_prototype_direction_rule_keeps_the_text_orders_the_support_shows():
    from glidre_core.documents import Document, Entity, Mention, Relation
    from glidre_core.fewshot.prototype import NOT_A_CANDIDATE, Prototypes, pair_rules

    # "A B C" in one sentence; "a" annotated on (0,1) and (1,2): head first both times; "b" never
    support = _pairs(["e0", "e1", "e2"], [[1, 0, 0]] * 6)
    doc = Document(doc_id="s", text="A B C", relations=[
        Relation(head="e0", label="a", tail="e1"), Relation(head="e1", label="a", tail="e2")], entities=[
        Entity(id=f"e{i}", mentions=[Mention(start=2 * i, end=2 * i + 1, sent_id=0)]) for i in range(3)])
    assert pair_rules(support, doc, "all", orders=True)[1].tolist() == [1, 1, -1, 1, -1, -1]  # (0,1) (0,2) (1,0) (1,2) (2,0) (2,1)
    labels = np.array([[1, 0, 0], [1, 0, 0]], dtype=np.float32)
    recipe = dict(NEUTRAL, nota="none", margin=-1.0)
    p = Prototypes.from_support([(support, doc)], ["a", "b"], labels,
                                AdaptationRecipe(**{**recipe, "direction": "support"}))
    assert p.directions.tolist() == [[True, False], [True, True]]
    q = np.ones((3, 3), dtype=np.float32)
    m = p.margins(q, orders=np.array([1, -1, 0]))
    assert m[1, 0] == NOT_A_CANDIDATE and (m[[0, 2], 0] > 0).all() and (m[:, 1] > 0).all()
    with pytest.raises(ValueError, match="orders"):
        p.margins(q)
    # "any" ignores the orders
    anyway = Prototypes.from_support([(support, doc)], ["a", "b"], labels, AdaptationRecipe(**recipe))
    assert (anyway.margins(q, orders=np.array([1, -1, 0])) > 0).all()


def test_the_dev_baselines_script_mode(fredo_dir):
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "fredo_prototype_dev.py"
    spec = importlib.util.spec_from_file_location("fredo_prototype_dev", path)
    dev = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(dev)
    out = dev.dev_baselines("cross_domain_1", str(fredo_dir))
    # the tiny documents' mentions are at most 3 words apart: from gap 3 on, the gap rule is the sentence rule
    assert out["same_sentence_gap_pairs_macro_f1"][3] == out["same_sentence_pairs_macro_f1"]
    assert out["same_sentence_gap_pairs_macro_f1"][0] == 0  # no two mentions touch
    assert out["same_sentence_support_direction_pairs_macro_f1"] > out["same_sentence_pairs_macro_f1"] > \
        out["all_pairs_macro_f1"] > 0


# -- glidre adapt with prototypes (the default recipe) ------------------------------------------------
def _scierc_docs(fredo_dir) -> list:
    from glidre_core.readers import read_documents

    return read_documents(fredo_dir / "test_scierc.json", "docred",
                          rel_info={c: c.lower().replace("-", " ") for c in CODES})


def test_glidre_adapt_saves_prototypes_that_every_predictor_uses(fredo_dir, tiny_dir, tmp_path, mlflow_uri):
    from glidre_core.cli import main
    from glidre_core.fewshot.prototype import PROTOTYPES_CONFIG, PROTOTYPES_WEIGHTS

    docs = _scierc_docs(fredo_dir)
    support, queries = docs[:2], docs[2:6]
    path = tmp_path / "support.jsonl"
    path.write_text("\n".join(d.model_dump_json() for d in support))
    out = tmp_path / "adapted"
    res = CliRunner().invoke(main, ["adapt", "--model", str(tiny_dir), "--data", str(path), "--labels",
                                    "used for,part of", "--output", str(out), "--tracking-uri", mlflow_uri])
    assert res.exit_code == 0, res.output
    record = json.loads((out / "adaptation.json").read_text())
    assert record["recipe"]["method"] == "prototype" and record["losses"] == [] and record["threshold"] == 0.5
    assert record["support_positives"] == {"used for": 4, "part of": 2} and "mlflow_run_id" in record
    assert (out / PROTOTYPES_WEIGHTS).exists() and (out / PROTOTYPES_CONFIG).exists()

    base, adapted = GLiDRE.from_pretrained(tiny_dir), GLiDRE.from_pretrained(out)
    assert base.prototypes is None and adapted.prototypes.labels == ["used for", "part of"]
    assert adapted.config.labels == base.config.labels + ["used for", "part of"]
    assert all(torch.equal(a, b) for a, b in zip(adapted.state_dict().values(), base.state_dict().values()))

    # the prototype labels score exactly as the FREDo runner's prototype predictor does
    labels = ["used for", "part of"]
    recipe = AdaptationRecipe()
    want = HeadAdapter(base, recipe).prototype_predictor(support, labels).score_relations(queries)
    pred = adapted.predictor(relation_labels=["compare", *labels])  # an unadapted label alongside
    got = pred.score_relations(queries)
    plain = base.predictor(relation_labels=["compare", *labels]).score_relations(queries)
    for g, w, p in zip(got, want, plain):
        np.testing.assert_allclose(g.probs[:, 1:], w.probs, rtol=0, atol=1e-6)
        np.testing.assert_allclose(g.probs[:, 0], p.probs[:, 0], rtol=0, atol=1e-6)  # other labels: the heads
        assert not np.allclose(g.probs[:, 1:], p.probs[:, 1:])
    np.testing.assert_array_equal(pred.thresholds, [base.config.threshold, 0.5, 0.5])
    np.testing.assert_allclose(adapted.predictor(relation_labels=labels, threshold=0.3).thresholds, [0.3, 0.3])
    # rows: only same-sentence pairs at most 2 words apart can hold a prototype label
    rows = [r for rs in pred.predict(queries) for r in rs if r["relation"] in labels]
    assert rows and all(r["score"] > 0.5 for r in rows)
    from glidre_core.evaluation import evaluate_model

    assert evaluate_model(adapted, queries, ["compare", *labels])["prototype_labels"] == labels
    assert "prototype_labels" not in evaluate_model(base, queries, labels)

    # the MLflow pyfunc of the directory carries and uses them
    import mlflow

    from glidre_core.registry import save_pyfunc

    pyfunc = mlflow.pyfunc.load_model(str(save_pyfunc(out, tmp_path / "pyfunc")))
    frame = [{"doc_id": d.doc_id, "text": d.text, "entities": json.dumps([e.model_dump() for e in d.entities]),
              "labels": json.dumps(labels)} for d in queries]
    expected = adapted.predictor(relation_labels=labels).predict(queries)
    assert any(expected) and pyfunc.predict(frame) == expected

    # a second save keeps them; a corrupt file is refused by name
    again = adapted.save_pretrained(tmp_path / "again")
    reloaded = GLiDRE.from_pretrained(again).prototypes
    np.testing.assert_array_equal(reloaded.types, adapted.prototypes.types)
    assert reloaded.directions.tolist() == adapted.prototypes.directions.tolist()
    settings = json.loads((again / PROTOTYPES_CONFIG).read_text())
    (again / PROTOTYPES_CONFIG).write_text(json.dumps({**settings, "labels": ["used for"]}))
    with pytest.raises(ValueError, match="prototypes.safetensors: types has shape"):
        GLiDRE.from_pretrained(again)

    # adapting again replaces the prototypes (and drops the labels only they held); fine-tuning is refused
    record2 = CliRunner().invoke(main, ["adapt", "--model", str(out), "--data", str(path), "--labels", "part of",
                                        "--output", str(tmp_path / "twice")])
    assert record2.exit_code == 0, record2.output
    twice = GLiDRE.from_pretrained(tmp_path / "twice")
    assert twice.prototypes.labels == ["part of"] and twice.config.labels == base.config.labels + ["part of"]
    bad = CliRunner().invoke(main, ["adapt", "--model", str(out), "--data", str(path), "--output",
                                    str(tmp_path / "ft"), "--set", "method=finetune"])
    assert bad.exit_code != 0 and "stale" in bad.output


def test_prototypes_score_entities_found_in_raw_text(fredo_dir, tmp_path):
    """The joint path (span head, then relations) scores prototype labels on the pairs it found,
    with sentences from the rule (raw text has no sentence ids)."""
    from conftest import tiny_config
    from glidre_core.fewshot.workflow import adapt_to_documents

    torch.manual_seed(0)
    model = GLiDRE(tiny_config(span_head=True, max_span_width=3, entity_labels=["method", "task"],
                               entity_threshold=0.3))
    model.eval()
    model.save_pretrained(tmp_path / "span")
    support = _scierc_docs(fredo_dir)[:2]
    adapt_to_documents(str(tmp_path / "span"), support, ["used for"], tmp_path / "out",
                       AdaptationRecipe(max_gap=None, direction="any", margin=-2.0))  # every same-sentence pair
    adapted = GLiDRE.from_pretrained(tmp_path / "out")
    text = "We use a parser for tagging. The tagger helps translation systems"
    pred = adapted.predictor(relation_labels=["used for"])
    (result,) = pred.extract([text])
    ents = result.document.entities
    assert len(ents) >= 2
    sentence = {e.id: 0 if e.mentions[0].start < text.index("The") else 1 for e in ents}
    rows = result.relations
    expected = sum(sentence[a.id] == sentence[b.id] for a in ents for b in ents if a.id != b.id)
    assert len(rows) == expected > 0  # every same-sentence pair passes the margin -2; no cross-sentence pair
    assert all(sentence[r["head_id"]] == sentence[r["tail_id"]] for r in rows)


def test_context_vectors_average_the_words_between_the_closest_mentions(tiny_model):
    from glidre_core.documents import Document, Entity, Mention
    from glidre_core.fewshot.prototype import pair_rules
    from glidre_core.inference import PairVectors

    # words: Alpha(0) uses(1) Beta(2) for(3) Gamma(4) .(5) Delta(6) Alpha(7); sentence 1 starts at Delta
    text = "Alpha uses Beta for Gamma . Delta Alpha"
    spans = {"a": [(0, 5, 0), (34, 39, 1)], "b": [(11, 15, 0)], "g": [(20, 25, 0)], "d": [(28, 33, 1)]}
    doc = Document(doc_id="c", text=text, entities=[
        Entity(id=k, mentions=[Mention(start=s, end=e, sent_id=i) for s, e, i in v]) for k, v in spans.items()])
    prepared = tiny_model.prepare(doc)
    pairs = [(h, t) for h in range(4) for t in range(4) if h != t]
    words = np.repeat(np.arange(8, dtype=np.float32)[:, None], 3, axis=1)  # word i's vector = (i, i, i)
    pv = PairVectors(prepared, np.array([h for h, _ in pairs]), np.array([t for _, t in pairs]),
                     np.zeros((len(pairs), 3), np.float32), words)
    rules = pair_rules(pv, doc, "same_sentence", orders=True, contexts=True)
    got = {(doc.entities[h].id, doc.entities[t].id): c[0] for (h, t), c in zip(pairs, rules.contexts)}
    assert got["a", "b"] == got["b", "a"] == 1.0  # "uses"
    assert got["a", "g"] == got["g", "a"] == 2.0  # "uses Beta for": (1 + 2 + 3) / 3
    assert got["b", "g"] == 3.0  # "for"
    assert got["d", "a"] == got["a", "d"] == 0.0  # Delta Alpha (second mention) touch: no word between
    assert got["b", "d"] == 0.0  # no common sentence
    assert rules.candidates.sum() == 8 and rules.orders is not None
    with pytest.raises(ValueError, match="word vectors"):
        pair_rules(PairVectors(prepared, pv.heads, pv.tails, pv.vectors), doc, "same_sentence", contexts=True)


def test_context_prototypes_score_saved_and_loaded(fredo_dir, tiny_dir, tmp_path):
    from glidre_core.fewshot.prototype import Prototypes

    docs = _scierc_docs(fredo_dir)
    support, queries, labels = docs[:2], docs[2:6], ["used for", "part of"]
    recipe = AdaptationRecipe(context_weight=0.5, max_gap=None, nota="mean")
    adapter = HeadAdapter(GLiDRE.from_pretrained(tiny_dir), recipe)
    protos = adapter.prototypes(support, labels)
    assert protos.context_weight == 0.5 and protos.context_types.shape == protos.types.shape
    no_ctx = HeadAdapter(GLiDRE.from_pretrained(tiny_dir), AdaptationRecipe(max_gap=None, nota="mean", context_weight=0.0)).prototypes(
        support, labels)
    assert protos.context_nota.shape == protos.nota.shape
    pv = adapter.pair_vectors(queries[:1])[0]
    assert not np.allclose(protos.pair_probabilities(pv), no_ctx.pair_probabilities(pv))
    with pytest.raises(ValueError, match="context vectors"):
        protos.margins(pv.vectors)
    protos.save(tmp_path / "p")
    back = Prototypes.load(tmp_path / "p", dim=protos.types.shape[1])
    np.testing.assert_array_equal(back.pair_probabilities(pv), protos.pair_probabilities(pv))
    # the saved model's predictor (words from the same encoder pass) scores exactly the runner's way
    from glidre_core.fewshot.workflow import adapt_to_documents

    adapt_to_documents(str(tiny_dir), support, labels, tmp_path / "out", recipe)
    got = GLiDRE.from_pretrained(tmp_path / "out").predictor(relation_labels=labels).score_relations(queries)
    for g, w in zip(got, adapter.prototype_predictor(support, labels).score_relations(queries)):
        np.testing.assert_allclose(g.probs, w.probs, rtol=0, atol=1e-6)
