"""Extraction building blocks without a Ray cluster: config, labels, storage, reading, the two UDF
stages (with a real tiny model), the sink's table split and the output commit / resume rules."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import yaml

from extraction_support import LABELS, REPO, sample_records, save_tiny_model, write_jsonl
from glidre_core.documents import parse_document
from glidre_core.extraction.config import StorageConfig, cli_values, load_extract_config
from glidre_core.extraction.errors import InputError, LabelError, OutputError
from glidre_core.extraction.labels import resolve_labels, threshold_spec
from glidre_core.extraction.output import ExtractionSink, OutputLayout, recover, split_results
from glidre_core.extraction.pipeline import prepare_output
from glidre_core.extraction.schemas import PREPARED, RESULT
from glidre_core.extraction.source import (
    FileSkip, JsonLinesDatasource, ParquetRecordsDatasource, UnitBlocks, discover_inputs, iter_lines, records_table,
)
from glidre_core.extraction.state import OutputIndex, resume_plan
from glidre_core.extraction.storage import Location, Storage
from glidre_core.extraction.udf import (
    Extractor, TokenizerSpec, decode_prepared, prepare_document, preprocess_batch, preprocess_record,
)
from glidre_core.model_loading import load_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tiny(tiny_dir):
    return load_model(str(tiny_dir))


@pytest.fixture(scope="module")
def spec(tiny) -> TokenizerSpec:
    return TokenizerSpec.from_model(tiny)


def local(path) -> Location:
    return Storage(StorageConfig()).location(str(path))


# -- config -------------------------------------------------------------------------------------
def test_config_yaml_overrides_and_cli_values(tmp_path):
    cfg = load_extract_config(REPO / "configs" / "extract.yaml")
    assert cfg.labels == "redocred" and cfg.actors.num_gpus == 0 and cfg.model == "default"
    cfg = load_extract_config(
        REPO / "configs" / "extract.yaml",
        ["actors.num_cpus=0.5", "thresholds={country: 0.7}"],
        cli_values(input="s3://b/in", output="s3://b/out", num_actors=3, batch_size=2, num_gpus_per_actor=0.5,
                   resume=True),
    )
    assert (cfg.input, cfg.output, cfg.batch_size) == ("s3://b/in", "s3://b/out", 2)
    assert (cfg.actors.min_size, cfg.actors.max_size, cfg.actors.num_gpus, cfg.actors.num_cpus) == (3, 3, 0.5, 0.5)
    assert cfg.thresholds == {"country": 0.7} and cfg.resume and not cfg.overwrite
    with pytest.raises(ValueError, match="mutually exclusive"):
        load_extract_config(None, values={"input": "a", "output": "b", "resume": True, "overwrite": True})
    with pytest.raises(ValueError, match="min_size"):
        load_extract_config(None, values={"input": "a", "output": "b", "actors.min_size": 3, "actors.max_size": 2})
    with pytest.raises(ValueError, match="extra"):
        load_extract_config(None, ["nonsense=1"], {"input": "a", "output": "b"})


# -- labels -------------------------------------------------------------------------------------
def test_labels_named_set_file_and_thresholds(tmp_path):
    rel_info = json.loads((REPO / "glidre_core" / "resources" / "rel_info.json").read_text())
    assert resolve_labels("redocred") == list(rel_info.values()) and len(rel_info) == 96
    f = tmp_path / "labels.txt"
    f.write_text("# comment\ncountry\n\n  born in \nmember of\n")
    assert resolve_labels(str(f)) == LABELS
    assert resolve_labels(None, ["a", "b"]) == ["a", "b"]
    with pytest.raises(LabelError, match="no relation labels"):
        resolve_labels(None, [])
    with pytest.raises(LabelError, match="no such file"):
        resolve_labels(str(tmp_path / "missing.txt"))
    f.write_text("Country\ncountry\n")
    with pytest.raises(LabelError, match="duplicate"):
        resolve_labels(str(f), normalize=str.lower)
    assert threshold_spec(LABELS, 0.3, {}) == 0.3
    assert threshold_spec(LABELS, None, {"country": 0.9}) == {"country": 0.9}
    assert threshold_spec(LABELS, 0.2, {"country": 0.9}) == {"country": 0.9, "born in": 0.2, "member of": 0.2}
    with pytest.raises(LabelError, match="not in the label set"):
        threshold_spec(LABELS, None, {"capital": 0.5})


# -- storage and reading ------------------------------------------------------------------------
def test_storage_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    storage = Storage(StorageConfig())
    loc = storage.location("s3://bucket/some/prefix/")
    assert loc.is_s3 and loc.path == "bucket/some/prefix" and loc.bucket == "bucket"
    assert isinstance(loc.fs, pafs.S3FileSystem)
    assert storage.location("s3://other/x").fs is loc.fs  # one filesystem per run
    assert storage.location(str(tmp_path)).path == str(tmp_path)
    assert storage.location(f"file://{tmp_path}").path == str(tmp_path)
    with pytest.raises(InputError, match="unsupported URI scheme"):
        storage.location("gs://bucket/x")


def test_discover_inputs(tmp_path):
    with pytest.raises(InputError, match="no JSON Lines or Parquet input files"):
        discover_inputs(local(tmp_path))
    with pytest.raises(InputError, match="no JSON Lines or Parquet"):
        discover_inputs(local(tmp_path / "missing"))
    write_jsonl(tmp_path / "a.jsonl", [{"x": 1}])
    (tmp_path / "sub").mkdir()
    with gzip.open(tmp_path / "sub" / "b.jsonl.gz", "wt") as f:
        f.write("{}\n")
    (tmp_path / "_SUCCESS").write_text("")
    (tmp_path / "notes.txt").write_text("")
    files, fmt = discover_inputs(local(tmp_path))
    assert fmt == "jsonl" and [Path(p).name for p in files] == ["a.jsonl", "b.jsonl.gz"]
    pq.write_table(pa.table({"doc_id": ["1"]}), tmp_path / "c.parquet")
    with pytest.raises(InputError, match="mixes"):
        discover_inputs(local(tmp_path))
    assert discover_inputs(local(tmp_path), "parquet")[1] == "parquet"


def test_line_splitting_and_datasource_blocks(tmp_path):
    chunks = [b'{"a": 1}\r\n\n{"b"', b': 2}\n   \n', b'{"c": 3}']
    assert list(iter_lines(chunks)) == [(1, b'{"a": 1}'), (3, b'{"b": 2}'), (5, b'{"c": 3}')]
    path = tmp_path / "in" / "docs.json"
    path.parent.mkdir()
    path.write_text(json.dumps([{"doc_id": "a"}, {"doc_id": "b"}]))  # DocRED-style JSON array
    src = JsonLinesDatasource([str(path)], root=str(path.parent), lines_per_block=1)
    with open(path, "rb") as f:
        blocks = list(src._read_stream(pa.input_stream(f), str(path)))
    assert [b.num_rows for b in blocks] == [1, 1]
    rows = pa.concat_tables(blocks).to_pylist()
    assert [(r["source"], r["line"], json.loads(r["raw"])["doc_id"]) for r in rows] == [
        ("docs.json", 0, "a"), ("docs.json", 1, "b")]
    assert [(r["block"], r["block_size"], r["block_last"]) for r in rows] == [(0, 1, False), (1, 1, True)]
    pq.write_table(pa.table({"doc_id": ["p1", "p2", "p3"], "text": ["t", "u", "v"]}), tmp_path / "in" / "x.parquet")
    psrc = ParquetRecordsDatasource([str(tmp_path / "in" / "x.parquet")], root=str(tmp_path), lines_per_block=2)
    with open(tmp_path / "in" / "x.parquet", "rb") as f:
        prow = pa.concat_tables(list(psrc._read_stream(pa.PythonFile(f), str(tmp_path / "in" / "x.parquet"))))
    assert [(r["source"], r["line"], json.loads(r["raw"])["doc_id"], r["block"], r["block_size"], r["block_last"])
            for r in prow.to_pylist()] == [("in/x.parquet", 0, "p1", 0, 2, False), ("in/x.parquet", 1, "p2", 0, 2, False),
                                           ("in/x.parquet", 2, "p3", 1, 1, True)]


def test_unit_blocks_number_the_file_and_skip_what_is_committed():
    records = [(i, f'{{"i": {i}}}'.encode()) for i in range(1, 8)]  # 7 records, blocks of 3: 3 + 3 + 1
    whole = pa.concat_tables(list(UnitBlocks(3)("f", iter(records))))
    assert whole.column("block").to_pylist() == [0, 0, 0, 1, 1, 1, 2]
    assert whole.column("block_size").to_pylist() == [3, 3, 3, 3, 3, 3, 1]
    assert whole.column("block_last").to_pylist() == [False] * 6 + [True]
    skip = FileSkip(blocks=frozenset({0}), lines={1: frozenset({4, 6})})
    rest = pa.concat_tables(list(UnitBlocks(3, skip)("f", iter(records))))
    # block 0 is not emitted; block 1 keeps only line 5, still with its full size (3)
    assert list(zip(rest.column("line").to_pylist(), rest.column("block").to_pylist(),
                    rest.column("block_size").to_pylist())) == [(5, 1, 3), (7, 2, 1)]


# -- stage 1: validate + tokenize -----------------------------------------------------------------
def test_prepare_document_matches_the_model(tiny, spec):
    for raw in sample_records(3):
        doc = parse_document(raw)
        ours, theirs = prepare_document(doc, spec), tiny.prepare(doc)
        assert ours.tokens == theirs.tokens and ours.mention_spans == theirs.mention_spans
        assert ours.entity_ids == theirs.entity_ids
        row = preprocess_record("f", 1, json.dumps(raw).encode(), spec, max_entities=100, max_text_chars=10**6)
        back = decode_prepared(row["document"], row["tokens"])
        assert back.tokens == theirs.tokens and back.mention_spans == theirs.mention_spans
        # word shapes are computed once in the CPU stage and travel with the tokens
        assert back.word_shapes is not None and back.word_shapes.tolist() == theirs.word_shapes.tolist()
        assert len(theirs.word_shapes) == len(theirs.words.tokens)


BROKEN = {
    # line content -> (doc_id, stage, error_type, field)
    b'{"doc_id": "cut", "text": ': ("f.jsonl:1", "read", "invalid_json", "<line>"),
    b'\xff\xfe{"doc_id": "latin"}': ("f.jsonl:2", "read", "invalid_encoding", "<line>"),
    b'{"doc_id": "no-text", "entities": []}': ("no-text", "validate", "invalid_document", "text"),
    b'{"doc_id": "num-text", "text": 5}': ("num-text", "validate", "invalid_document", "text"),
    b'[1, 2]': ("f.jsonl:5", "validate", "invalid_document", "<root>"),
    b'{"doc_id": "offsets", "text": "Paris is nice", "entities": [{"id": "p", "mentions": [{"start": 0, "end": 50}]}]}':
        ("offsets", "validate", "invalid_document", "entities[0].mentions[0]"),
    b'{"doc_id": "dup", "text": "a b", "entities": [{"id": "x", "mentions": [{"start": 0, "end": 1}]}, '
    b'{"id": "x", "mentions": [{"start": 2, "end": 3}]}]}': ("dup", "validate", "invalid_document", "entities[1].id"),
    b'{"doc_id": "many", "text": "a b c", "entities": [{"id": "1", "mentions": [{"start": 0, "end": 1}]}, '
    b'{"id": "2", "mentions": [{"start": 2, "end": 3}]}, {"id": "3", "mentions": [{"start": 4, "end": 5}]}]}':
        ("many", "validate", "too_many_entities", "entities"),
    b'{"doc_id": "long", "text": "' + b"x " * 60 + b'"}': ("long", "validate", "text_too_long", "text"),
    b'{"doc_id": "blank-mention", "text": "a  b", "entities": [{"id": "1", "mentions": [{"start": 1, "end": 3}]}]}':
        ("blank-mention", "validate", "invalid_document", "entities[0].mentions[0]"),
}


def test_preprocess_turns_every_bad_record_into_an_error_row(spec):
    good_line = b'{"text": "Ada met Bob .", "entities": [{"id": "a", "mentions": [{"start": 0, "end": 3}]}, ' \
        b'{"id": "b", "mentions": [{"start": 8, "end": 11}]}]}'
    lines = [*BROKEN, good_line]
    batch = records_table("f.jsonl", list(range(1, len(lines) + 1)), lines)
    out = preprocess_batch(batch, spec=spec, max_entities=2, max_text_chars=100).to_pylist()
    assert len(out) == len(lines)
    for row, (doc_id, stage, etype, field) in zip(out, BROKEN.values()):
        assert row["status"] == "failed", row
        assert (row["doc_id"], row["stage"], row["error_type"], row["field"]) == (doc_id, stage, etype, field), row
        assert row["message"] and (field in row["message"] or stage == "read")
    good = out[-1]
    assert good["status"] == "ok" and good["doc_id"] == f"f.jsonl:{len(lines)}" and good["num_entities"] == 2


# -- stage 2: the model actor, called in-process ------------------------------------------------------
def test_extractor_rows_and_per_document_isolation(tiny_dir, spec):
    records = sample_records(3)
    rows = [preprocess_record("s.jsonl", i + 1, json.dumps(r).encode(), spec, max_entities=100,
                              max_text_chars=10**6) for i, r in enumerate(records)]
    poisoned = dict(rows[1])
    tokens = json.loads(poisoned["tokens"])
    tokens["ids"][0] = 10**7  # out of the vocabulary: this document's forward pass fails
    poisoned["tokens"] = json.dumps(tokens)
    failed_before = {**rows[0], "doc_id": "early", "status": "failed", "stage": "validate",
                     "error_type": "invalid_json", "field": "<line>", "message": "m", "document": None,
                     "tokens": None}
    batch = pa.Table.from_pylist([rows[0], poisoned, rows[2], failed_before], schema=PREPARED)
    ex = Extractor(model_ref=str(tiny_dir), labels=LABELS, threshold=0.001, top_k=1)
    out = ex(batch)
    assert out.schema == RESULT
    res = out.to_pylist()
    assert [r["status"] for r in res] == ["extracted", "failed", "extracted", "failed"]
    assert res[1]["stage"] == "extract" and records[1]["doc_id"] in res[1]["message"]
    assert res[3]["doc_id"] == "early" and res[3]["error_type"] == "invalid_json"
    for r, rec in ((res[0], records[0]), (res[2], records[2])):
        n = len(rec["entities"])
        assert r["num_triplets"] == len(r["triplets"]) == n * (n - 1)
        assert {(t["head_id"], t["tail_id"]) for t in r["triplets"]} == {
            (a["id"], b["id"]) for a in rec["entities"] for b in rec["entities"] if a["id"] != b["id"]}
        assert all(t["relation"] in LABELS and 0 < t["score"] < 1 for t in r["triplets"])
        assert [e["entity_id"] for e in r["entities"]] == [e["id"] for e in rec["entities"]]
        assert [e["mention_count"] for e in r["entities"]] == [len(e["mentions"]) for e in rec["entities"]]
    # the sink's split of these rows into the four tables
    tables = split_results(out, "tiny", "run1")
    assert tables["triplets"].num_rows == res[0]["num_triplets"] + res[2]["num_triplets"]
    assert set(tables["triplets"].column("doc_id").to_pylist()) == {records[0]["doc_id"], records[2]["doc_id"]}
    assert set(tables["triplets"].column("model").to_pylist()) == {"tiny"}
    assert tables["errors"].column("doc_id").to_pylist() == [records[1]["doc_id"], "early"]
    assert tables["documents"].column("status").to_pylist() == ["extracted", "failed", "extracted", "failed"]
    assert tables["entities"].num_rows == len(records[0]["entities"]) + len(records[2]["entities"])


# -- output: commit protocol, refuse / overwrite / resume -------------------------------------------------
def _write_part(layout: OutputLayout, rows: list[dict], task_idx: int = 0) -> list[dict]:
    sink = ExtractionSink(layout, "run1", "tiny", docs_per_file=2)
    return sink.write([pa.Table.from_pylist(rows, schema=RESULT)], SimpleNamespace(task_idx=task_idx))["summaries"]


def _doc(doc_id: str, status: str = "extracted", line: int = 1, block: int = 0, size: int = 4) -> dict:
    trip = [{"head_id": "a", "head_text": "A", "head_type": None, "relation": "r", "tail_id": "b", "tail_text": "B",
             "tail_type": None, "score": 0.9}]
    return {"doc_id": doc_id, "source": "s", "line": line, "status": status, "num_entities": 2,
            "num_triplets": 1 if status == "extracted" else 0, "triplets": trip if status == "extracted" else None,
            "entities": [], "stage": None if status == "extracted" else "validate",
            "block": block, "block_size": size, "block_last": True}


def test_sink_parts_commit_and_orphans_are_removed(tmp_path):
    layout = OutputLayout(local(tmp_path / "out"))
    layout.make_dirs()
    rows = [_doc("d1", line=1), _doc("d2", line=2), _doc("d3", "failed", line=3)]
    summaries = _write_part(layout, rows)
    assert [s["units"] for s in summaries] == [[["s", 0, 4, True, 2]], [["s", 0, 4, True, 1]]]
    assert summaries[0]["counts"] == {"extracted": 2, "failed": 0, "predicted": 0, "triplets": 2, "entities": 0,
                                      "errors": 0, "predicted_triplets": 0, "predicted_entities": 0}
    index, removed = recover(layout, OutputIndex())  # from the ledger footers alone
    assert removed == 0 and index.totals()["extracted"] == 2 and index.totals()["failed"] == 1
    # Retrying the same write task rewrites the same part names: still two parts, no duplicates.
    _write_part(layout, rows)
    files = {d: len(list((tmp_path / "out" / d).iterdir())) for d in ("triplets", "errors", "documents")}
    assert files == {"triplets": 1, "errors": 1, "documents": 2}
    # A crash after the data files but before the ledger leaves orphans; a torn ledger is not a commit.
    _write_part(layout, [_doc("d4", line=4)], task_idx=1)
    ledger = next(p for p in (tmp_path / "out" / "documents").iterdir() if "-00001-" in p.name)
    ledger.write_bytes(ledger.read_bytes()[:20])
    index, removed = recover(layout, OutputIndex())
    assert removed == 2 and index.parts.num_rows == 2
    assert not any("-00001-" in p.name for p in (tmp_path / "out").rglob("*.parquet"))
    # 3 of the 4 records of unit (s, 0) are committed: the plan re-reads only line 4
    plan = resume_plan(index, layout.fs, layout.dir("documents"))
    assert plan.committed_docs == 3 and not plan.done_files
    assert plan.skip == {"s": FileSkip(frozenset(), {0: frozenset({1, 2, 3})})}
    assert index.overcommitted() == 0
    _write_part(layout, [_doc("d4", line=4)], task_idx=2)
    index, _ = recover(layout, index)
    assert resume_plan(index, layout.fs, layout.dir("documents")).done_files == {"s"}
    # committing a record twice is caught per unit
    _write_part(layout, [_doc("d4", line=4)], task_idx=3)
    assert recover(layout, index)[0].overcommitted() == 1
    # the index round-trips through _state/
    index.save(layout.fs, layout.loc.path)
    again = OutputIndex.load(layout.fs, layout.loc.path)
    assert again.totals() == index.totals() and again.parts.num_rows == index.parts.num_rows


def test_prepare_output_refuses_overwrites_and_checks_resume_settings(tmp_path):
    out = tmp_path / "out"
    layout = OutputLayout(local(out))
    settings = {"model": "tiny", "labels": LABELS, "threshold": None, "top_k": None, "max_entities": 128,
                "max_text_chars": 200000}
    values = {"input": "x", "output": str(out)}
    assert prepare_output(layout, load_extract_config(None, values=values), settings).parts.num_rows == 0
    layout.make_dirs()
    _write_part(layout, [_doc("d1")])
    layout.write_json(layout.run_state_path, settings)
    with pytest.raises(OutputError, match="already exists.*--resume.*--overwrite"):
        prepare_output(layout, load_extract_config(None, values=values), settings)
    with pytest.raises(OutputError, match="labels"):
        prepare_output(layout, load_extract_config(None, values={**values, "resume": True}),
                       {**settings, "labels": ["other"]})
    prepare_output(layout, load_extract_config(None, values={**values, "overwrite": True}), settings)
    assert not [p for p in out.rglob("*") if p.is_file()]


def test_config_file_is_valid_yaml_for_the_job():
    data = yaml.safe_load((REPO / "configs" / "extract.yaml").read_text())
    assert data["input"] == "data/sample/docs.jsonl" and (REPO / data["input"]).exists()


def test_unit_status_needs_every_block_up_to_the_last():
    from glidre_core.extraction.state import UNITS

    units = pa.table({"part": ["a", "b", "c", "d", "e"], "source": ["f", "f", "g", "f", "g"],
                      "block": [0, 0, 1, None, 0], "block_size": [4, 4, 2, 1, 3],
                      "block_last": [False, True, True, False, False], "docs": [3, 1, 2, 1, 1]}, schema=UNITS)
    index = OutputIndex(units=units)
    table = {(r["source"], r["block"]): r for r in index.unit_table().to_pylist()}
    assert table[("f", 0)] == {"source": "f", "block": 0, "block_size": 4, "block_last": True, "committed": 4}
    done, complete, partial = index.file_status()
    # f: its only block is complete (two parts); g: block 1 complete, block 0 has 1 of 3 records
    assert done == {"f"} and complete == {"g": {1}} and partial == {"g": {0}}
    assert index.overcommitted() == 0


def test_index_written_before_a_count_existed_still_loads(tmp_path):
    from glidre_core.extraction.state import PARTS, OutputIndex

    layout = OutputLayout(local(tmp_path / "out"))
    layout.make_dirs()
    index = OutputIndex()
    index.add([{"part": "p1", "run_id": "r", "counts": {"extracted": 3, "triplets": 5, "predicted_triplets": 2},
                "units": [["s", 0, 3, True, 3]]}])
    index.save(layout.fs, layout.loc.path)
    state = tmp_path / "out" / "_state"
    spec = json.loads((state / "index.json").read_text())
    assert spec["version"] == 2 and spec["parts"].endswith(".arrow")
    # as an earlier version wrote it: index version 1 (Parquet tables), without the later counts
    old = index.parts.drop_columns(["predicted_triplets", "predicted_entities"])
    pq.write_table(old, state / "parts-old.parquet")
    pq.write_table(index.units, state / "units-old.parquet")
    (state / "index.json").write_text(json.dumps({"version": 1, "parts": "parts-old.parquet",
                                                  "units": "units-old.parquet", "finalized_runs": []}))
    again = OutputIndex.load(layout.fs, layout.loc.path)
    assert again.parts.schema == PARTS and again.totals()["extracted"] == 3 and again.totals()["predicted_triplets"] == 0


def _file_status_reference(units: list[dict]) -> tuple[set, dict, dict]:
    """The per-row definition of file status that OutputIndex.file_status vectorises."""
    from collections import defaultdict

    complete, partial, last = defaultdict(set), defaultdict(set), {}
    for u in units:
        if u["block"] is None or u["block"] < 0:
            continue
        if u["committed"] >= u["block_size"]:
            complete[u["source"]].add(u["block"])
        elif u["committed"] > 0:
            partial[u["source"]].add(u["block"])
        if u["block_last"]:
            last[u["source"]] = u["block"]
    done = {s for s, lb in last.items() if not partial.get(s) and all(b in complete[s] for b in range(lb + 1))}
    return done, {s: b for s, b in complete.items() if s not in done}, dict(partial)


def test_file_status_matches_the_per_unit_definition_on_random_indexes():
    import random

    from glidre_core.extraction.state import UNITS

    rng = random.Random(7)
    for trial in range(200):
        rows = []
        for f in range(rng.randint(1, 6)):
            n_blocks = rng.randint(1, 5)
            for b in range(n_blocks):
                if rng.random() < 0.2:
                    continue  # a block no part has committed yet
                size = rng.randint(1, 4)
                left = size if rng.random() < 0.7 else rng.randint(1, size)
                while left > 0:  # spread the block's committed records over parts
                    take = rng.randint(1, left)
                    rows.append((f"p{len(rows)}", f"f{f}", b, size, b == n_blocks - 1, take))
                    left -= take
        if rng.random() < 0.3:
            rows.append(("px", "f0", None, 1, False, 1))  # a record without a unit
        units = pa.table(dict(zip(UNITS.names, zip(*rows))), schema=UNITS)
        index = OutputIndex(units=units)
        got = index.file_status()
        assert got == _file_status_reference(index.unit_table().to_pylist()), trial
