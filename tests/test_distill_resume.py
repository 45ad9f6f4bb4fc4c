"""``glidre distill --resume``: an interrupted run continues where it stopped, on a real local
Ray with a tiny random GLiDRE model as the teacher (no mocks).

The crash is made the way ``tests/test_extraction_pipeline.py`` makes one for extract: after a
finished run, the last part loses its ledger file (its data files stay: a crash between the data
files and the commit), a torn ledger and an uncommitted data file are added, ``_run.json`` names
a run that never finished, and a new input file arrives.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from extraction_support import REPO, write_jsonl

FIRST = [{"doc_id": f"a{i}", "text": f"Marie Curie{i} was born in Warsaw . She worked in Paris{i} ."} for i in range(9)]
LATER = [{"doc_id": f"b{i}", "text": f"Barack Obama{i} was born in Honolulu{i} ."} for i in range(4)]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory) -> Path:
    import torch

    from conftest import tiny_config
    from glidre_core import GLiDRE

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("teacher") / "tiny"
    GLiDRE(tiny_config(span_head=True, entity_labels=["person", "location"],
                       labels=["born in", "lives in"])).save_pretrained(path)
    return path


def _config(inp: Path, out: Path, teacher_dir: Path, *extra: str, **values):
    from glidre_core.llm.config import load_distill_config

    return load_distill_config(None, [
        f"input={inp}", f"output={out}",
        f"teacher={{kind: glidre, model: '{teacher_dir}', threshold: 0.01, entity_threshold: 0.01}}",
        "batch_size=2", "lines_per_block=3", "workers.num_cpus=1", "progress_interval_s=2", *extra,
    ], values)


def _records(out: Path) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(source, line) of every document line in documents/ and every row in errors/."""
    docs = [(d["distill"]["source"], d["distill"]["line"]) for p in sorted((out / "documents").glob("*.jsonl"))
            for d in map(json.loads, p.read_text().splitlines())]
    errs = [(e["source"], e["line"]) for p in sorted((out / "errors").glob("*.jsonl"))
            for e in map(json.loads, p.read_text().splitlines())]
    return docs, errs


def _keys_of_run(out: Path, run_id: str) -> set[tuple[str, int]]:
    keys = set()
    for p in [*(out / "documents").glob(f"{run_id}-*.jsonl"), *(out / "errors").glob(f"{run_id}-*.jsonl")]:
        for rec in map(json.loads, p.read_text().splitlines()):
            src = rec.get("distill", rec)
            keys.add((src["source"], src["line"]))
    return keys


def test_distill_resume_after_a_crash_redoes_only_what_was_lost(tmp_path, ray_session, teacher_dir):
    from glidre_core.llm.distill import DistillError, run_distill

    inp, out = tmp_path / "in", tmp_path / "out"
    write_jsonl(inp / "a.jsonl", [*FIRST[:4], "{not json", *FIRST[4:]])  # 10 records, one an InputError
    # --resume on an output that does not exist yet: a fresh run
    first = run_distill(_config(inp, out, teacher_dir, resume=True))
    assert first["reconciled"] and first["docs_read"] == 10 and first["docs_skipped_resume"] == 0
    assert first["this_run"]["parts_written"] >= 3, first["this_run"]
    assert first["errors_by_type"] == {"InputError": 1}

    # the crash (see the module docstring)
    ledgers = sorted((out / "_ledger").glob("*.parquet"))
    lost = pq.read_table(ledgers[-1])
    lost_keys = set(zip(lost.column("source").to_pylist(), lost.column("line").to_pylist()))
    ledgers[-1].unlink()
    (out / "_ledger" / "crashed-part.parquet").write_bytes(b"PAR1 torn write")
    (out / "documents" / "crashed-part.jsonl").write_text(json.dumps({"doc_id": "ghost", "text": "x"}) + "\n")
    (out / "_manifest.json").unlink()
    state = json.loads((out / "_run.json").read_text())
    (out / "_run.json").write_text(json.dumps({**state, "run_id": "crashed-run"}))
    write_jsonl(inp / "b.jsonl", LATER)  # a new input file is picked up by --resume

    with pytest.raises(DistillError, match="already exists.*--resume"):
        run_distill(_config(inp, out, teacher_dir))
    # a setting that changes what is written: refused, naming the setting
    with pytest.raises(DistillError, match=r"teacher\.threshold=0\.01.*teacher\.threshold=0\.5"):
        run_distill(_config(inp, out, teacher_dir, "teacher.threshold=0.5", resume=True))
    with pytest.raises(DistillError, match="chunk_chars"):
        run_distill(_config(inp, out, teacher_dir, "chunk_chars=400", resume=True))

    # where and how fast the teacher runs may change (teacher.batch_size)
    second = run_distill(_config(inp, out, teacher_dir, "teacher.batch_size=4", resume=True))
    total = 10 + len(LATER)
    assert second["reconciled"], second
    assert second["docs_read"] == total == second["docs_written"] + second["docs_errored"]
    assert second["docs_skipped_resume"] == 10 - len(lost_keys) > 0
    assert second["this_run"]["docs_written"] + second["this_run"]["docs_errored"] == len(lost_keys) + len(LATER)
    assert second["errors_by_type"] == {"InputError": 1} and second["duplicate_records"] == 0
    assert second["uncommitted_files_removed"] >= 2  # the lost part's data file(s), the torn ledger, the ghost

    # every input record exactly once in documents/ + errors/, nothing lost
    docs, errs = _records(out)
    want = {("a.jsonl", n) for n in range(1, 11)} | {("b.jsonl", n) for n in range(1, len(LATER) + 1)}
    assert len(docs) + len(errs) == len(set(docs) | set(errs)) == total
    assert set(docs) | set(errs) == want and errs == [("a.jsonl", 5)]
    # the teacher saw again only the records of the uncommitted part, plus the new file
    assert _keys_of_run(out, second["run_id"]) == lost_keys | {("b.jsonl", n) for n in range(1, len(LATER) + 1)}
    assert not list(out.rglob("crashed-part*"))
    # the merged training file: each document once, the committed ones only
    merged = [json.loads(line) for line in (out / "distilled.jsonl").read_text().splitlines()]
    ids = [d["doc_id"] for d in merged]
    assert len(ids) == len(set(ids)) == second["docs_written"] == len(docs)
    assert set(ids) == {r["doc_id"] for r in FIRST + LATER} and "ghost" not in ids
    assert json.loads((out / "_manifest.json").read_text())["run_id"] == second["run_id"]

    # a resume of a complete output has nothing to send to the teacher (no Ray stage) and
    # still reconciles
    third = run_distill(_config(inp, out, teacher_dir, resume=True))
    assert third["reconciled"] and third["docs_skipped_resume"] == total == third["docs_read"]
    assert third["this_run"]["parts_written"] == 0 and third["throughput"]["steady_docs_per_second"] is None
    assert [d["doc_id"] for d in map(json.loads, (out / "distilled.jsonl").read_text().splitlines())] == ids


def test_distill_resume_and_overwrite_together_are_refused(tmp_path):
    """A configuration error, before anything is read or started: config, CLI and job."""
    from glidre_core.cli import main
    from glidre_core.llm.config import load_distill_config

    with pytest.raises(ValueError, match="resume and overwrite are mutually exclusive"):
        load_distill_config(None, [], {"input": "a", "output": "b", "resume": True, "overwrite": True})
    result = CliRunner().invoke(main, ["distill", "--input", str(tmp_path / "a"), "--output", str(tmp_path / "b"),
                                       "--resume", "--overwrite"])
    assert result.exit_code != 0 and "mutually exclusive" in result.output, result.output
    spec = importlib.util.spec_from_file_location("jobs_distill", REPO / "jobs" / "distill.py")
    job = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(job)
    config = tmp_path / "distill.yaml"
    config.write_text(f"input: {tmp_path / 'a'}\noutput: {tmp_path / 'b'}\n")
    assert job.main(["--config", str(config), "--resume", "--overwrite"]) == 1
    assert not (tmp_path / "b").exists()


def test_resume_settings_name_the_nested_setting_and_ignore_operational_teacher_options():
    from glidre_core.extraction.errors import OutputError
    from glidre_core.extraction.state import check_resume_settings
    from glidre_core.llm.config import GlidreTeacherConfig, OpenAIBackendConfig
    from glidre_core.llm.distill import teacher_settings

    old = {"teacher": {"model": "m", "threshold": 0.8}, "chunk_chars": 1500}
    check_resume_settings("out", old, dict(old), ["teacher", "chunk_chars"])
    with pytest.raises(OutputError, match=r"teacher\.threshold=0\.8, this run has teacher\.threshold=0\.9"):
        check_resume_settings("out", old, {**old, "teacher": {"model": "m", "threshold": 0.9}}, ["teacher"])
    check_resume_settings("out", {}, old, ["teacher"])  # an output from before the setting existed
    a = OpenAIBackendConfig(base_url="http://a:1/v1", model="m", max_concurrency=2)
    b = OpenAIBackendConfig(base_url="http://b:2/v1", model="m", max_concurrency=16, timeout_s=5)
    assert teacher_settings(a) == teacher_settings(b)  # moved endpoint, more concurrency: same answers
    assert teacher_settings(a) != teacher_settings(a.model_copy(update={"model": "other"}))
    g = GlidreTeacherConfig(model="d", device="cpu")
    assert teacher_settings(g) == teacher_settings(g.model_copy(update={"device": "cuda", "batch_size": 64}))
    assert teacher_settings(g, {"relation_labels": ["x"]})["relation_labels"] == ["x"]
