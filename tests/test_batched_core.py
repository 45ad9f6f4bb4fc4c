"""The batched model core and the inference layer on top of it.

* a batch gives the same logits as each document alone (0, 1, 2 and 300 entities, several
  windows), for relations and for entity spans, with and without window-length bucketing;
* the forward pass (and the whole ``Predictor.predict`` call) performs no host synchronisation;
* label embeddings used for dev evaluation are the eval-mode ones (dropout > 0);
* the joint path, the MLflow pyfunc and the vectorised threshold sweeps agree with their
  one-at-a-time definitions.
"""

from __future__ import annotations

import random

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from glidre_core import GLiDRE, parse_document
from glidre_core.evaluation import entity_predictions, entity_threshold_sweep
from glidre_core.joint_metrics import entity_scores
from glidre_core.metrics import sweep_threshold
from glidre_core.modeling.batch import DevicePack
from glidre_core.registry import GLiDREPyfunc

from conftest import tiny_config

SYNC_OPS = {"aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero", "aten::unique",
            "aten::_unique", "aten::_unique2", "aten::unique_dim", "aten::unique_consecutive", "aten::equal"}
LABELS = ["place of birth", "country", "spouse", "employer"]


def synthetic(doc_id: str, n_entities: int, filler: int = 3, seed: int = 0) -> dict:
    """A document with ``n_entities`` entities, some with two mentions, separated by filler words."""
    rng = random.Random(seed)
    parts, ents = [], []
    pos = 0
    for i in range(n_entities):
        name = f"Name{i} Kin{i % 7}"
        parts.append(name)
        mentions = [{"start": pos, "end": pos + len(name)}]
        pos += len(name) + 1
        fill = " ".join(rng.choice(["the", "city", "of", "a", "river", "."]) for _ in range(filler))
        parts.append(fill)
        pos += len(fill) + 1
        ents.append({"id": f"e{i}", "type": "PER" if i % 2 else "LOC", "mentions": mentions})
    # second mentions for every third entity, at the end of the text
    for i in range(0, n_entities, 3):
        name = f"Name{i}"
        parts.append(name)
        ents[i]["mentions"].append({"start": pos, "end": pos + len(name)})
        pos += len(name) + 1
    text = " ".join(parts) if parts else "Nothing to see here ."
    return {"doc_id": doc_id, "text": text, "entities": ents}


def _by_pair(scores) -> dict:
    out = {}
    for sc in scores:
        for k, (h, t) in enumerate(zip(sc.heads.tolist(), sc.tails.tolist())):
            out[(sc.prepared.doc.doc_id, h, t)] = sc.probs[k]
    return out


@pytest.fixture(scope="module")
def model() -> GLiDRE:
    torch.manual_seed(0)
    m = GLiDRE(tiny_config(span_head=True, max_span_width=4, max_length=128, window_overlap=32))
    return m.eval()


@pytest.fixture(scope="module")
def docs():
    return [parse_document(synthetic(f"d{n}", n, seed=n)) for n in (0, 1, 2, 5, 9)]


def test_batch_equals_each_document_alone(model, docs):
    batched = _by_pair(model.predictor(relation_labels=LABELS, batch_size=8).score_relations(docs))
    alone = _by_pair(model.predictor(relation_labels=LABELS, batch_size=1).score_relations(docs))
    assert set(batched) == set(alone)
    n = {d.doc_id: len(d.entities) for d in docs}
    assert len(batched) == sum(k * (k - 1) for k in n.values())  # every ordered pair, no self pairs
    for key in batched:
        np.testing.assert_allclose(batched[key], alone[key], rtol=1e-5, atol=1e-6)


def test_documents_with_zero_and_one_entity_have_no_pairs(model, docs):
    scores = model.predictor(relation_labels=LABELS).score_relations(docs[:2])
    assert [sc.probs.shape for sc in scores] == [(0, len(LABELS)), (0, len(LABELS))]
    assert model.predict_documents(docs[:2], LABELS, threshold=1e-9) == [[], []]


def test_span_logits_of_a_batch_equal_each_document_alone(model, docs):
    types = ["person", "location"]
    batched = model.predictor(entity_labels=types, batch_size=8).score_spans(docs)
    alone = model.predictor(entity_labels=types, batch_size=1).score_spans(docs)
    for a, b in zip(batched, alone):
        assert a.prepared.doc.doc_id == b.prepared.doc.doc_id
        np.testing.assert_array_equal(a.spans, b.spans)
        np.testing.assert_allclose(a.probs, b.probs, rtol=1e-5, atol=1e-6)


def test_window_length_bucketing_does_not_change_logits(docs):
    torch.manual_seed(0)
    m = GLiDRE(tiny_config(max_length=128, window_overlap=32)).eval()
    plain = _by_pair(m.predictor(relation_labels=LABELS).score_relations(docs))
    m.config.length_multiple = 64
    batch, _ = m.collate([m.prepare(d) for d in docs])
    assert batch.window_length % 64 == 0
    bucketed = _by_pair(m.predictor(relation_labels=LABELS).score_relations(docs))
    for key in plain:
        np.testing.assert_allclose(plain[key], bucketed[key], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("chunk", [64, 4096])  # 64: 16 pairs per chunk, about 2,800 chunks
def test_300_entities_in_a_batch_match_the_document_alone(chunk):
    torch.manual_seed(0)
    m = GLiDRE(tiny_config(max_length=256, window_overlap=64, pair_chunk_size=chunk)).eval()
    big = parse_document(synthetic("big", 300, filler=1, seed=3))
    small = parse_document(synthetic("small", 4, seed=4))
    labels = LABELS[:2]
    prepared = m.prepare(big)
    assert len(prepared.tokens.windows) > 1  # several encoder windows
    batched = _by_pair(m.predictor(relation_labels=labels, batch_size=2).score_relations([big, small]))
    alone = _by_pair(m.predictor(relation_labels=labels, batch_size=1).score_relations([big]))
    assert sum(1 for k in batched if k[0] == "big") == 300 * 299
    for key, value in alone.items():
        np.testing.assert_allclose(batched[key], value, rtol=1e-4, atol=1e-6)


def _sync_ops(fn) -> dict[str, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for e in prof.events():
        if e.name in SYNC_OPS:
            counts[e.name] = counts.get(e.name, 0) + 1
    return counts


def test_forward_and_predict_do_not_synchronise_with_the_host(model, docs):
    predictor = model.predictor(relation_labels=LABELS, entity_labels=["person", "location"])
    _ = predictor.relations, predictor.entity_types
    prepared = [model.prepare(d) for d in docs]
    batch, _ = model.collate(prepared)
    with torch.no_grad():
        assert _sync_ops(lambda: model(batch, predictor.relations, predictor.entity_types)) == {}
    assert _sync_ops(lambda: predictor.predict(prepared)) == {}


def test_predictor_restores_train_mode_and_encodes_labels_in_eval_mode():
    torch.manual_seed(0)
    m = GLiDRE(tiny_config(dropout=0.4))
    m.train()
    emb = m.predictor(relation_labels=LABELS).relations.vectors
    assert m.training  # restored
    m.eval()
    with torch.no_grad():
        ref = m.encode_labels(LABELS).vectors
    torch.testing.assert_close(emb, ref)


def test_two_dev_evaluations_of_the_same_weights_agree_with_dropout(tmp_path):
    from test_joint_extraction import training_config

    from glidre_core.training.trainer import Trainer

    cfg = training_config(tmp_path, model={**tiny_config(span_head=True, max_span_width=3, dropout=0.4).model_dump()})
    torch.manual_seed(0)
    trainer = Trainer(cfg)
    trainer.model.train()
    first = trainer.dev_evaluation()
    second = trainer.dev_evaluation()
    assert trainer.model.training
    assert first["curve"] == second["curve"] and first["threshold"] == second["threshold"]
    assert first["entity_f1"] == second["entity_f1"] and first["entity_threshold"] == second["entity_threshold"]


def test_joint_extraction_of_a_batch_equals_each_document_alone(model):
    texts = ["Marie Curie was born in Warsaw . She moved to Paris .", "Berlin is in Germany .",
             "Niels Bohr worked in Copenhagen with Lise Meitner and Otto Hahn ."]
    kw = dict(entity_threshold=0.3, threshold=0.3)
    batched = model.extract_documents(texts, ["person", "location"], LABELS, batch_size=3, **kw)
    alone = [model.extract_documents([t], ["person", "location"], LABELS, batch_size=1, **kw)[0] for t in texts]
    assert any(r.entities for r in batched)
    for a, b in zip(batched, alone):
        assert [(e["text"], e["type"]) for e in a.entities] == [(e["text"], e["type"]) for e in b.entities]
        assert {(r["head_id"], r["relation"], r["tail_id"]) for r in a.relations} == {
            (r["head_id"], r["relation"], r["tail_id"]) for r in b.relations}
        for ra, rb in zip(sorted(a.relations, key=str), sorted(b.relations, key=str)):
            assert ra["score"] == pytest.approx(rb["score"], abs=1e-5)


def test_pyfunc_predicts_in_batches_grouped_by_label_set(model, docs):
    wrapper = GLiDREPyfunc()
    wrapper.model = model
    rows = []
    for i, d in enumerate(docs[2:]):
        rows.append({"doc_id": d.doc_id, "text": d.text,
                     "entities": [e.model_dump() for e in d.entities],
                     "labels": LABELS if i % 2 else ["spouse"]})
    out = wrapper.predict(None, pd.DataFrame(rows), params={"threshold": 1e-9, "batch_size": 2})
    assert len(out) == len(rows)
    for row, got, d in zip(rows, out, docs[2:]):
        want = model.predict_documents([d], row["labels"], threshold=1e-9)[0]
        assert {(r["head_id"], r["relation"], r["tail_id"]) for r in got} == {
            (r["head_id"], r["relation"], r["tail_id"]) for r in want}


def test_device_pack_round_trips_mixed_dtypes_in_one_buffer():
    pack = DevicePack()
    arrays = {"a": np.arange(7, dtype=np.int64).reshape(7, 1), "b": np.array([[True, False, True]]),
              "c": np.linspace(0, 1, 5, dtype=np.float32), "empty": np.zeros((0, 3), dtype=np.int64)}
    for k, v in arrays.items():
        pack.add(k, v)
    out = pack.to(torch.device("cpu"))
    for k, v in arrays.items():
        np.testing.assert_array_equal(out[k].numpy(), v)
        assert tuple(out[k].shape) == v.shape


def _reference_sweep(scored, gold, floor=0.05):
    """The loop the vectorised sweep replaced (kept here as its definition)."""
    items = sorted(((s, f in gold) for f, s in scored if s > floor), key=lambda x: -x[0])
    scores = [s for s, _ in items]
    cum, hits = [], 0
    for _, hit in items:
        hits += hit
        cum.append(hits)

    def f1_at(k):
        c = cum[k - 1] if k else 0
        return 2 * c / (k + len(gold)) if (k + len(gold)) else 0.0

    best_f1, best_thr = 0.0, 0.5
    for k in range(1, len(items) + 1):
        nxt = scores[k] if k < len(items) else floor
        if nxt < scores[k - 1] and f1_at(k) > best_f1:
            best_f1, best_thr = f1_at(k), (scores[k - 1] + nxt) / 2
    curve = [(g, f1_at(sum(1 for s in scores if s > g))) for g in [x / 100 for x in range(5, 100, 5)]]
    return min(max(best_thr, 0.01), 0.99), best_f1, curve


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_vectorised_relation_sweep_equals_the_loop(seed):
    rng = random.Random(seed)
    facts = [(f"d{i % 7}", f"h{i}", "r", f"t{i}") for i in range(400)]
    # ties on purpose: rounded scores
    scored = [(f, round(rng.random(), 2)) for f in facts]
    gold = {f for f in facts if rng.random() < 0.3} | {("d0", "x", "r", "y")}
    got = sweep_threshold(scored, gold)
    thr, f1, curve = _reference_sweep(scored, gold)
    assert got.best_threshold == pytest.approx(thr) and got.best_f1 == pytest.approx(f1)
    assert [(g, pytest.approx(v)) for g, v in curve] == got.curve


def test_vectorised_entity_sweep_equals_decoding_at_every_threshold(model, docs):
    gold = docs[2:]
    predictor = model.predictor(entity_labels=["person", "location"])
    scored = predictor.score_spans(gold)
    grid = (0.3, 0.45, 0.5, 0.55, 0.7)
    fast = entity_threshold_sweep(model, scored, gold, predictor.entity_types, grid=grid)
    for thr, f1 in fast["curve"]:
        preds = entity_predictions(scored, predictor.entity_types, thr)
        slow = entity_scores(gold, preds, type_name=model.config.entity_label)["f1"]
        assert f1 == pytest.approx(slow), thr
    assert any(f > 0 for _, f in fast["curve"])


def test_batch_span_targets_equal_each_documents_targets(model, docs):
    from glidre_core.modeling.spans import enumerate_spans
    from glidre_core.modeling.targets import document_span_targets, span_target_arrays

    types = ["person", "location"]
    prepared = [model.prepare(d) for d in docs]
    arrays = span_target_arrays(model.config, prepared, types)
    batch, _ = model.collate(prepared)
    assert arrays["span_targets"].shape == (len(docs), len(batch.span_grid), len(types))
    for b, p in enumerate(prepared):
        spans = enumerate_spans(p.tokens.num_words, model.config.max_span_width)
        want = document_span_targets(model.config, p, types, spans)
        np.testing.assert_array_equal(arrays["span_targets"][b][batch.span_valid[b]], want)
        assert not arrays["span_targets"][b][~batch.span_valid[b]].any()
        weights = arrays["span_loss_mask"][b][batch.span_valid[b]]
        np.testing.assert_allclose(weights, 1.0 / (len(spans) * len(prepared)))
    # every gold mention (all are short enough to be candidates here) is marked once
    assert int(arrays["span_targets"].sum()) == sum(len(m) for p in prepared for m in p.mention_spans)


def test_pair_chunks_follow_the_device_and_stay_bounded_in_elements():
    from glidre_core.modeling.batch import MAX_CHUNK_ELEMENTS, pair_chunk

    model = GLiDRE(tiny_config())
    assert model.config.pair_chunk_size is None
    assert model.pair_chunk_size(torch.device("cpu")) == 4096
    assert model.pair_chunk_size(torch.device("cuda")) == 32768  # a larger chunk: fewer launches
    assert GLiDRE(tiny_config(pair_chunk_size=64)).pair_chunk_size(torch.device("cuda")) == 64
    assert pair_chunk(32768, 32, 496, max_words=300) == 512  # a Re-DocRED batch: one chunk
    # a 1,000-entity document of 11,000 words: the element cap, not the pair count, decides
    step = pair_chunk(32768, 1, 499500, max_words=11000)
    assert step * 11000 <= MAX_CHUNK_ELEMENTS < (step + 1) * 11000
    assert pair_chunk(None, 4, 10) == 10


@pytest.mark.parametrize("logsumexp,chunk_size", [(False, None), (False, 20), (True, 20), (True, None)])
def test_entity_arrays_pool_and_pairs_equal_the_per_mention_definition(logsumexp, chunk_size):
    """The vectorised pooling weights and pair chunks equal the per-mention / per-chunk loops
    they replaced (kept here as the reference)."""
    from glidre_core.modeling.batch import entity_arrays, ordered_pairs, pair_chunk

    rng = np.random.default_rng(0)
    docs, wmax = [], 40
    for n in (0, 1, 2, 7, 12):
        doc = []
        for _ in range(n):
            spans = []
            for _ in range(int(rng.integers(1, 4))):
                w0 = int(rng.integers(0, wmax - 3))
                spans.append((w0, w0 + int(rng.integers(1, 4))))
            doc.append(spans)
        docs.append(doc)
    arrays, meta = entity_arrays(docs, wmax, logsumexp=logsumexp, chunk_size=chunk_size)
    expected = np.zeros_like(arrays["pool"])
    nmax = max(len(d) for d in docs)
    for b, doc in enumerate(docs):
        m = 0
        for e, spans in enumerate(doc):
            for j, (w0, w1) in enumerate(spans):
                expected[b, e, w0:w1] += 1.0 / ((w1 - w0) * len(spans))
                if logsumexp:
                    assert arrays["entity_mentions"][b, e, j] == m
                    np.testing.assert_allclose(arrays["mention_pool"][b, m, w0:w1], 1.0 / (w1 - w0))
                    assert arrays["mention_pool"][b, m].sum() == pytest.approx(1.0)
                m += 1
            if logsumexp:
                assert (arrays["entity_mentions"][b, e, len(spans):] == -1).all()
    np.testing.assert_allclose(arrays["pool"], expected, rtol=1e-6, atol=1e-7)
    assert ("mention_pool" in arrays) == logsumexp
    for doc, h, t in zip(docs, meta["heads"], meta["tails"]):
        eh, et = ordered_pairs(len(doc))
        assert h.tolist() == eh.tolist() and t.tolist() == et.tolist()
    # the chunk layout, against the per-chunk, per-document loop
    high, low = np.tril_indices(nmax, -1)
    counts = [len(d) * (len(d) - 1) // 2 for d in docs]
    umax = nmax * (nmax - 1) // 2
    step = pair_chunk(chunk_size, len(docs), umax, wmax)
    base = np.concatenate([[0], np.cumsum(counts)])
    position = np.zeros(int(base[-1]), dtype=np.int64)
    rows, lo, hi, chunks, done = [], [], [], [], 0
    for s in range(0, umax, step):
        width, first = min(step, umax - s), done
        for b, u in enumerate(counts):
            j = np.arange(max(0, min(width, u - s)))
            rows += (b * width + j).tolist()
            lo += (b * nmax + low[s + j]).tolist()
            hi += (b * nmax + high[s + j]).tolist()
            position[base[b] + s + j] = done + j
            done += len(j)
        if done > first:
            chunks.append((s, width, first, done))
    assert meta["chunks"] == chunks and len(chunks) > (1 if chunk_size else 0)
    assert arrays["pair_rows"].tolist() == rows
    assert arrays["pair_low_flat"].tolist() == lo and arrays["pair_high_flat"].tolist() == hi
    if len(chunks) > 1:
        assert arrays["pair_perm"].tolist() == (2 * position[:, None] + np.arange(2)).reshape(-1).tolist()


def test_window_arrays_equal_the_per_window_definition():
    """The vectorised window arrays (from each document's cached layout) equal a per-window
    construction: ids framed by the specials, owned words' rows, their targets and sources."""
    from glidre_core.modeling.batch import _window_arrays
    from glidre_core.modeling.windows import TokenizedDocument, plan_windows

    rng = np.random.default_rng(1)
    prepared = []
    for n_words in (3, 40, 90):
        widths = rng.integers(1, 4, size=n_words)
        first = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
        end = np.cumsum(widths).tolist()
        ids = rng.integers(1000, 2000, size=int(end[-1])).tolist()
        tokens = TokenizedDocument(ids, first, end, plan_windows(len(ids), 30, 8))
        prepared.append(SimpleNamespace(tokens=tokens))
    wmax = 90
    got = _window_arrays(prepared, wmax, cls_id=1, sep_id=2, pad_id=0, multiple=16)
    assert sum(len(p.tokens.windows) for p in prepared) == len(got["lengths"]) > 3
    k = 0
    for b, p in enumerate(prepared):
        t = p.tokens
        first = np.asarray(t.word_first_token)
        token_word = np.searchsorted(first, np.arange(len(t.token_ids)), side="right") - 1
        for win in t.windows:
            n = win.tok_end - win.tok_start + 2
            assert got["input_ids"][k, :n].tolist() == [1, *t.token_ids[win.tok_start:win.tok_end], 2]
            assert (got["input_ids"][k, n:] == 0).all() and got["key_mask"][k].sum() == n
            assert got["col_target"][k, 1 : n - 1].tolist() == token_word[win.tok_start:win.tok_end].tolist()
            owned = np.nonzero((first >= win.own_start) & (first < win.own_end))[0]
            pos = first[owned] - win.tok_start + 1
            assert got["row_positions"][k, : len(owned)].tolist() == pos.tolist()
            assert got["row_target"][k, : len(owned)].tolist() == (b * wmax + owned).tolist()
            assert (got["row_target"][k, len(owned):] == len(prepared) * wmax).all()
            assert got["word_source"][b * wmax + owned].tolist() == (k * got["length"] + pos).tolist()
            assert got["owners"][k] == b
            k += 1
    assert got["length"] % 16 == 0


@pytest.mark.parametrize("shape", [(210, 96), (0, 5), (7, 0), (1, 1), (33, 3)])
def test_mask_indices_equal_numpys_nonzero(shape):
    """The decoder's (pair, label) selection is ``np.nonzero``, computed the faster flat way."""
    from glidre_core.inference import mask_indices

    rng = np.random.default_rng(sum(shape))
    for density in (0.0, 0.02, 0.5, 1.0):
        mask = rng.random(shape) < density
        got, want = mask_indices(mask), np.nonzero(mask)
        assert len(got) == 2
        for g, w in zip(got, want):
            assert g.dtype.kind == "i" and np.array_equal(g, w)


def test_rows_decoded_in_the_batch_loop_equal_decoding_the_scores_afterwards(model, docs):
    """``predict`` and ``predict_with_candidates`` decode inside the batch loop (overlapping the
    next batch's device work); the rows are those of decoding ``score_relations`` afterwards, in
    input order, over several batches."""
    many = [parse_document(synthetic(f"m{n}", n, seed=n)) for n in (3, 0, 6, 4, 2, 5, 1, 7)]
    probe = model.predictor(relation_labels=LABELS, batch_size=3).score_relations(many)
    middle = float(np.median(np.concatenate([sc.probs.ravel() for sc in probe])))  # rows for sure
    spread = float(np.std(np.concatenate([sc.probs.ravel() for sc in probe])))
    predictor = model.predictor(relation_labels=LABELS, threshold=middle, batch_size=3,
                                candidate_band=(spread, spread))
    scores = predictor.score_relations(many)
    rows = predictor.predict(many)
    assert [[r["head_id"] for r in rs] for rs in rows] == [
        [r["head_id"] for r in predictor.decode_relations(sc)] for sc in scores]
    assert rows == [predictor.decode_relations(sc) for sc in scores]
    assert sum(map(len, rows)) > 0
    banded = predictor.predict_with_candidates(many)
    assert [b.rows for b in banded] == rows
    assert [b.candidates for b in banded] == [predictor.band_candidates(sc) for sc in scores]
    assert sum(len(b.candidates) for b in banded) > 0


def test_candidate_arrays_give_the_facts_and_sweep_of_one_tuple_per_candidate(model, docs):
    """The dev sweep's candidates are arrays (a pretraining vocabulary made one Python tuple per
    candidate run out of memory); hits, the sweep and the kept facts equal the tuple form."""
    from glidre_core.evaluation import relation_candidates
    from glidre_core.metrics import sweep_scores

    labels = ["Place of Birth", "employer", "spouse", "place of birth x"]
    predictor = model.predictor(relation_labels=labels)
    rng = random.Random(3)
    scored = list(predictor.score_relations(docs))
    tuples, gold = [], set()
    for sc in scored:
        ids = sc.prepared.entity_ids
        for p in range(len(sc.heads)):
            for r, lab in enumerate(labels):
                fact = (sc.prepared.doc.doc_id, ids[sc.heads[p]], lab.lower(), ids[sc.tails[p]])
                if float(sc.probs[p, r]) > 0.05:
                    tuples.append((fact, float(sc.probs[p, r])))
                if rng.random() < 0.15:
                    gold.add(fact)
    gold.add(("d9", "e0", "not a candidate", "e1"))  # a gold fact no candidate can hit
    cands = relation_candidates(predictor, docs, 0.05)
    assert len(cands) == len(tuples) > 0
    hits = cands.hits(gold, str.lower)
    assert hits.tolist() == [f in gold for f, _ in tuples]
    want, got = sweep_threshold(tuples, gold), sweep_scores(cands.all_scores(), hits, len(gold))
    assert got.best_threshold == want.best_threshold and got.best_f1 == want.best_f1 and got.curve == want.curve
    thr = np.array([0.3, 0.5, 0.4, 0.6], dtype=np.float32)
    expected = [f for f, s in tuples if s > float(thr[[lab.lower() for lab in labels].index(f[2])])]
    assert cands.facts_above(thr, str.lower) == expected
