"""The extraction job end to end on a real local Ray (one per session) and a real S3 endpoint
(moto in server mode): broken documents, resume after a crash, fail-fast whole-input errors,
S3 in and out, Parquet input, and the ``glidre extract`` command."""

from __future__ import annotations

import gzip
import json
import os
from collections import Counter
from pathlib import Path

import boto3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from extraction_support import (
    ALL_PAIRS, LABELS, base_values, expected_pairs, read_table, sample_records, save_tiny_model, triplet_keys,
    write_jsonl,
)
from glidre_core import read_documents
from glidre_core.cli import main as cli
from glidre_core.extraction import (
    InputError, ModelLoadError, OutputError, load_extract_config, run_extraction,
)
from glidre_core.extraction.config import StorageConfig
from glidre_core.extraction.storage import build_s3_filesystem
from glidre_core.model_loading import load_model


@pytest.fixture(scope="session")
def local_ray(ray_session):
    """The session's shared local Ray (tests/conftest.py)."""
    yield


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _run(**values):
    return run_extraction(load_extract_config(None, values=values))


def _count_triplets_per_doc(table: pa.Table) -> Counter:
    return Counter(table.column("doc_id").to_pylist())


# -- (b) broken documents, through the CLI -------------------------------------------------------------
def test_broken_documents_all_land_in_errors_and_counts_reconcile(local_ray, tiny_dir, tmp_path):
    good = sample_records(12)
    anonymous = {k: v for k, v in good[0].items() if k != "doc_id"}  # no doc_id: gets "broken.jsonl:<line>"
    broken = [
        '{"doc_id": "truncated", "text": "Paris',                                   # not JSON
        '{"doc_id": "no-text", "entities": []}',                                     # missing text
        json.dumps({"doc_id": "bad-offsets", "text": "Paris is in France .",
                    "entities": [{"id": "0", "mentions": [{"start": 12, "end": 99}]}]}),
        json.dumps({"doc_id": "crowded", "text": "x " * 40,
                    "entities": [{"id": str(i), "mentions": [{"start": 2 * i, "end": 2 * i + 1}]} for i in range(40)]}),
        json.dumps({"doc_id": "no-mentions", "text": "a b", "entities": [{"id": "0", "mentions": []}]}),
        '"just a string"',
    ]
    lines = [json.dumps(r) for r in good[:6]] + broken[:3] + [""] + [json.dumps(anonymous)] + broken[3:] \
        + [json.dumps(r) for r in good[6:]]
    corpus = write_jsonl(tmp_path / "in" / "broken.jsonl", lines)
    with open(corpus, "ab") as f:
        f.write(b'{"doc_id": "latin-1", "text": "caf\xe9"}\n')  # not UTF-8
    out = tmp_path / "out"
    labels_file = tmp_path / "labels.txt"
    labels_file.write_text("\n".join(LABELS) + "\n")
    result = CliRunner().invoke(cli, [
        "extract", "--input", str(corpus.parent), "--output", str(out), "--model", str(tiny_dir),
        "--labels", str(labels_file), "--num-actors", "1", "--batch-size", "4",
        "--set", "threshold=0.001", "--set", "top_k=1", "--set", "max_entities=35", "--set", "lines_per_block=8",
    ])
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "docs failed     7" in result.output

    manifest = json.loads((out / "_manifest.json").read_text())
    n_good = len(good) + 1
    assert manifest["docs_read"] == n_good + 7 == manifest["docs_extracted"] + manifest["docs_failed"]
    assert (manifest["docs_extracted"], manifest["docs_failed"], manifest["reconciled"]) == (n_good, 7, True)
    assert manifest["labels"] == LABELS and manifest["model"] == str(tiny_dir)
    assert manifest["started_at"] < manifest["ended_at"] and manifest["config"]["max_entities"] == 35

    fs = pa.fs.LocalFileSystem()
    errors = {r["doc_id"]: r for r in read_table(fs, str(out / "errors")).to_pylist()}
    assert errors.keys() == {"broken.jsonl:7", "no-text", "bad-offsets", "crowded", "no-mentions",
                             "broken.jsonl:14", "broken.jsonl:21"}
    assert errors["broken.jsonl:7"]["error_type"] == "invalid_json" and errors["broken.jsonl:7"]["line"] == 7
    assert errors["no-text"]["field"] == "text" and "missing text" in errors["no-text"]["message"]
    assert errors["bad-offsets"]["field"] == "entities[0].mentions[0]"
    assert "outside the text" in errors["bad-offsets"]["message"]
    assert errors["crowded"]["error_type"] == "too_many_entities" and "max_entities=35" in errors["crowded"]["message"]
    assert errors["no-mentions"]["field"] == "entities[0].mentions"
    assert errors["broken.jsonl:21"]["error_type"] == "invalid_encoding"
    assert all(e["stage"] in ("read", "validate") and e["run_id"] == manifest["run_id"] for e in errors.values())

    triplets = read_table(fs, str(out / "triplets"))
    per_doc = _count_triplets_per_doc(triplets)
    expected = {r["doc_id"]: len(r["entities"]) * (len(r["entities"]) - 1) for r in good}
    expected["broken.jsonl:11"] = expected[good[0]["doc_id"]]
    assert per_doc == +Counter(expected)
    assert manifest["triplets_written"] == triplets.num_rows == sum(expected.values())
    assert len(set(triplet_keys(triplets))) == triplets.num_rows
    assert set(triplets.column("model").to_pylist()) == {str(tiny_dir)}
    assert set(triplets.column("relation").to_pylist()) <= set(LABELS)
    entities = read_table(fs, str(out / "entities"))
    assert entities.num_rows == sum(len(r["entities"]) for r in good) + len(anonymous["entities"])
    assert entities.schema.names[:5] == ["doc_id", "entity_id", "text", "type", "mention_count"]


# -- (c) resume after an interrupted run ---------------------------------------------------------------
def test_resume_after_crash_skips_done_documents_and_never_duplicates(local_ray, tiny_dir, tmp_path):
    records = sample_records(40)
    write_jsonl(tmp_path / "in" / "a.jsonl", records[:24])
    full = tmp_path / "in"
    out = tmp_path / "out"
    first = _run(input=str(full), output=str(out), **base_values(tiny_dir))
    assert first["docs_extracted"] == 24 and first["this_run"]["parts_written"] >= 3
    write_jsonl(tmp_path / "in" / "b.jsonl", records[24:])  # new input files are picked up by --resume

    # Simulate a crash of a later run: it started (its run id is in _run.json), the last part's
    # data files were written but its ledger was not, and another write died half-way through
    # its ledger file.
    ledgers = sorted((out / "documents").iterdir())
    lost_ids = set(pq.read_table(ledgers[-1]).column("doc_id").to_pylist())
    ledgers[-1].unlink()
    (out / "documents" / "crashed-part.parquet").write_bytes(b"PAR1 torn write")
    (out / "_manifest.json").unlink()
    state = json.loads((out / "_run.json").read_text())
    (out / "_run.json").write_text(json.dumps({**state, "run_id": "crashed-run"}))
    with pytest.raises(OutputError, match="already exists"):
        _run(input=str(full), output=str(out), **base_values(tiny_dir))

    second = _run(input=str(full), output=str(out), resume=True, **base_values(tiny_dir))
    assert second["docs_skipped_resume"] == 24 - len(lost_ids)
    assert second["this_run"]["docs_extracted"] == 40 - 24 + len(lost_ids)
    assert second["docs_read"] == 40 == second["docs_extracted"] and second["reconciled"]
    assert len(second["runs"]) == 2

    fs = pa.fs.LocalFileSystem()
    triplets = read_table(fs, str(out / "triplets"))
    keys = triplet_keys(triplets)
    assert len(keys) == len(set(keys)) == expected_pairs(records)  # no duplicates, nothing missing
    ledger = read_table(fs, str(out / "documents"))
    assert sorted(ledger.column("doc_id").to_pylist()) == sorted(r["doc_id"] for r in records)
    redone = {d for d, rid in zip(triplets.column("doc_id").to_pylist(), triplets.column("run_id").to_pylist())
              if rid == second["run_id"]}
    assert lost_ids <= redone and not redone & (set(r["doc_id"] for r in records[:24]) - lost_ids)
    assert not (out / "documents" / "crashed-part.parquet").exists()

    # The rows are the library's own predictions (same model, labels, thresholds).
    model = load_model(str(tiny_dir))
    docs = [d for f in ("a.jsonl", "b.jsonl") for d in read_documents(full / f, "jsonl")]
    preds = model.predict_documents(docs, LABELS, threshold=ALL_PAIRS["threshold"], top_k=1, batch_size=4)
    want = {(d.doc_id, r["head_id"], r["relation"], r["tail_id"]) for d, rows in zip(docs, preds) for r in rows}
    assert want == set(keys)


# -- whole-input failures fail fast ----------------------------------------------------------------------
def test_whole_input_failures_fail_fast(tiny_dir, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no JSON Lines or Parquet input files"):
        _run(input=str(tmp_path / "empty"), output=str(tmp_path / "o1"), **base_values(tiny_dir))
    corpus = write_jsonl(tmp_path / "in" / "docs.jsonl", sample_records(2))
    bad_model = tmp_path / "bad_model"
    bad_model.mkdir()
    (bad_model / "config.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot load model"):
        _run(input=str(corpus), output=str(tmp_path / "o2"), **base_values(bad_model))
    with pytest.raises(ModelLoadError, match="cannot load model"):
        _run(input=str(corpus), output=str(tmp_path / "o3"), **base_values(tmp_path / "nowhere"))
    registry = f"sqlite:///{tmp_path / 'mlflow.db'}"  # the tracking URI from the config reaches MLflow
    with pytest.raises(ModelLoadError, match="cannot load model 'models:/nobody@prod'.*nobody"):
        _run(input=str(corpus), output=str(tmp_path / "o4"), tracking_uri=registry,
             **base_values("models:/nobody@prod"))
    assert (tmp_path / "mlflow.db").exists()
    with pytest.raises(OutputError, match="overlap"):
        _run(input=str(corpus.parent), output=str(corpus.parent / "out"), **base_values(tiny_dir))
    assert not any((tmp_path / n).exists() for n in ("o1", "o2", "o3", "o4"))


# -- (a) S3 in, S3 out (moto server) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3(monkeypatch_module):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch_module.setenv(key, value)
    monkeypatch_module.delenv("AWS_ENDPOINT_URL", raising=False)
    endpoint = f"http://{host}:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
    client.create_bucket(Bucket="corpus")
    client.create_bucket(Bucket="results")
    yield {"endpoint": endpoint, "client": client, "fs": build_s3_filesystem(StorageConfig(endpoint_url=endpoint))}
    server.stop()


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


def test_s3_jsonl_in_parquet_tables_out(local_ray, tiny_dir, s3):
    records = sample_records(30)
    client = s3["client"]
    client.put_object(Bucket="corpus", Key="docs/part-0.jsonl",
                      Body="\n".join(json.dumps(r) for r in records[:18]).encode())
    client.put_object(Bucket="corpus", Key="docs/nested/part-1.jsonl.gz",
                      Body=gzip.compress(("\n".join(json.dumps(r) for r in records[18:]) + "\nnot json\n").encode()))
    client.put_object(Bucket="corpus", Key="docs/_SUCCESS", Body=b"")
    manifest = _run(input="s3://corpus/docs/", output="s3://results/run1", **{"storage.endpoint_url": s3["endpoint"]},
                    **base_values(tiny_dir))
    assert (manifest["docs_read"], manifest["docs_extracted"], manifest["docs_failed"]) == (31, 30, 1)
    assert manifest["input_files"] == 2 and manifest["reconciled"]

    fs = s3["fs"]
    triplets = read_table(fs, "results/run1/triplets")
    assert triplets.schema.names == ["doc_id", "head_id", "head_text", "head_type", "relation", "tail_id",
                                     "tail_text", "tail_type", "score", "verification", "model", "run_id"]
    assert triplets.column("verification").null_count == triplets.num_rows  # the verify stage is off
    assert triplets.num_rows == manifest["triplets_written"] == expected_pairs(records)
    assert len(set(triplet_keys(triplets))) == triplets.num_rows
    assert set(triplets.column("run_id").to_pylist()) == {manifest["run_id"]}
    first = records[0]
    names = {e["id"]: first["text"][e["mentions"][0]["start"]:e["mentions"][0]["end"]] for e in first["entities"]}
    row = next(r for r in triplets.to_pylist() if r["doc_id"] == first["doc_id"])
    assert row["head_text"] in first["text"] and row["head_type"] in {e["type"] for e in first["entities"]}
    assert row["head_id"] in names and 0 < row["score"] < 1
    errors = read_table(fs, "results/run1/errors").to_pylist()
    assert [(e["doc_id"], e["error_type"]) for e in errors] == [("nested/part-1.jsonl.gz:13", "invalid_json")]
    entities = read_table(fs, "results/run1/entities")
    assert entities.num_rows == sum(len(r["entities"]) for r in records)
    manifest_obj = json.loads(client.get_object(Bucket="results", Key="run1/_manifest.json")["Body"].read())
    assert manifest_obj["docs_read"] == 31 and manifest_obj["output"] == "s3://results/run1"

    with pytest.raises(OutputError, match="already exists"):
        _run(input="s3://corpus/docs/", output="s3://results/run1", **{"storage.endpoint_url": s3["endpoint"]},
             **base_values(tiny_dir))
    with pytest.raises(InputError, match="bucket 'missing-bucket' does not exist"):
        _run(input="s3://missing-bucket/docs/", output="s3://results/run2",
             **{"storage.endpoint_url": s3["endpoint"]}, **base_values(tiny_dir))
    with pytest.raises(InputError, match="no JSON Lines or Parquet input files"):
        _run(input="s3://corpus/nothing-here/", output="s3://results/run2",
             **{"storage.endpoint_url": s3["endpoint"]}, **base_values(tiny_dir))


def test_parquet_input_from_s3(local_ray, tiny_dir, s3, tmp_path):
    records = sample_records(10)
    table = pa.Table.from_pylist(records[:9] + [{"doc_id": "empty", "text": "   ", "title": None, "entities": []}])
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    s3["client"].put_object(Bucket="corpus", Key="pq/docs.parquet", Body=sink.getvalue().to_pybytes())
    manifest = _run(input="s3://corpus/pq", output=str(tmp_path / "out"), **{"storage.endpoint_url": s3["endpoint"]},
                    **base_values(tiny_dir))
    assert (manifest["input_format"], manifest["docs_read"], manifest["docs_extracted"]) == ("parquet", 10, 9)
    errors = read_table(pa.fs.LocalFileSystem(), str(tmp_path / "out" / "errors")).to_pylist()
    assert [(e["doc_id"], e["field"]) for e in errors] == [("empty", "text")]
    assert manifest["triplets_written"] == expected_pairs(records[:9])
    assert os.path.exists(tmp_path / "out" / "_manifest.json")
