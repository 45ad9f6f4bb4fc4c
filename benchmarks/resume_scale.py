"""Resume bookkeeping at corpus scale, without a model.

For each N it builds, in a temporary directory, a corpus of N tiny JSON Lines documents
(``--docs-per-file`` per file) and the output of two earlier runs, written with the job's own sink:
run 1 finished (and was finalized: index saved) after 40% of the files; run 2 then committed
another 10% and *crashed* (its parts are only in the ledger, one file is left half done, cut
through a block). Then, each in a fresh process so that peak memory is its own:

* ``driver``: the job's real resume planning, :func:`prepare_output` (index load + crash
  recovery from the ledger footers) and :func:`resume_plan`, then building the read
  datasource; measures the planning time, the driver's peak RSS and the bytes of everything
  shipped to the tasks (the pickled datasource, i.e. paths + skip plan, and the preprocess
  arguments);
* ``driver-clean``: the same after run 2 was finalized (the common case: no recovery);
* the crashed case again with ``ARROW_DEFAULT_MEMORY_POOL=system`` (pyarrow's jemalloc pool keeps
  freed memory; the job already switches the pool of its own calls, not the C++ readers');
* ``worker``: a read task, which unpickles what the datasource carries (paths and skip plan) and
  reads the half-done file through the skip plan; measures its peak RSS and checks it emits
  exactly the uncommitted records.

Peak RSS is reported absolute and above the process's baseline after its imports (pyarrow,
pydantic and Ray's modules: what the job's processes load anyway).

It also reports what the old design (a ``frozenset`` of every committed ``doc_id`` shipped to
every task) would ship, measured up to ``--legacy-max`` documents.

    python benchmarks/resume_scale.py --docs 100000 1000000 10000000 \\
        --output-json benchmarks/results/resume_scale.json
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

LINES_PER_BLOCK = 256
DOCS_PER_PART = 512


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


# -- building the corpus and the earlier runs' output ---------------------------------------------
def write_corpus(root: Path, docs: int, per_file: int) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    files = []
    for i, start in enumerate(range(0, docs, per_file)):
        path = root / f"shard-{i:05d}.jsonl"
        n = min(per_file, docs - start)
        with open(path, "w") as f:
            f.write("".join(f'{{"doc_id":"d{start + k}","text":"x","entities":[]}}\n' for k in range(n)))
        files.append(path)
    return files


def result_rows(source: str, first_doc: int, lines: range, block_sizes: dict[int, tuple[int, bool]]):
    import pyarrow as pa

    from glidre_core.extraction.schemas import RESULT

    n = len(lines)
    blocks = [(ln - 1) // LINES_PER_BLOCK for ln in lines]
    return pa.table({
        "doc_id": [f"d{first_doc + ln - 1}" for ln in lines], "source": [source] * n, "line": list(lines),
        "status": ["extracted"] * n, "stage": [None] * n, "error_type": [None] * n, "field": [None] * n,
        "message": [None] * n, "num_entities": [0] * n, "block": blocks,
        "block_size": [block_sizes[b][0] for b in blocks], "block_last": [block_sizes[b][1] for b in blocks],
        "entity_source": ["given"] * n, "num_triplets": [0] * n, "triplets": [[]] * n, "entities": [[]] * n,
        "verify": [None] * n,
    }, schema=RESULT)


def commit(layout, run_id: str, files: list[Path], per_file: int, first_file: int, upto_lines: dict[int, int]):
    """Commit, as run ``run_id``, the first ``upto_lines[i]`` lines of file ``i`` (all if absent)."""
    from glidre_core.extraction.output import ExtractionSink

    sink = ExtractionSink(layout, run_id, "bench", DOCS_PER_PART)
    task = 0
    for i in upto_lines:
        n_lines = sum(1 for _ in open(files[i]))
        blocks = {b: (min(LINES_PER_BLOCK, n_lines - b * LINES_PER_BLOCK), (b + 1) * LINES_PER_BLOCK >= n_lines)
                  for b in range((n_lines + LINES_PER_BLOCK - 1) // LINES_PER_BLOCK)}
        upto = upto_lines[i]
        for start in range(1, upto + 1, 8 * DOCS_PER_PART):
            lines = range(start, min(upto, start + 8 * DOCS_PER_PART - 1) + 1)
            table = result_rows(files[i].name, i * per_file, lines, blocks)
            result = sink.write([table], SimpleNamespace(task_idx=task))
            sink.summaries.extend(result["summaries"])
            task += 1
    return sink.summaries


def build(tmp: Path, docs: int, per_file: int) -> dict:
    from glidre_core.extraction.output import OutputLayout
    from glidre_core.extraction.state import OutputIndex
    from glidre_core.extraction.storage import Storage
    from glidre_core.extraction.config import StorageConfig

    t0 = time.perf_counter()
    per_file = min(per_file, max(1, docs // 10))  # at least 10 files: 40% / 10% / the rest
    files = write_corpus(tmp / "in", docs, per_file)
    layout = OutputLayout(Storage(StorageConfig()).location(str(tmp / "out")))
    layout.make_dirs()
    n = len(files)
    run1_files = range(0, max(1, int(0.4 * n)))
    run2_files = range(run1_files.stop, max(run1_files.stop + 1, int(0.5 * n)))
    lines = {i: sum(1 for _ in open(files[i])) for i in (*run1_files, *run2_files)}
    s1 = commit(layout, "run1", files, per_file, 0, {i: lines[i] for i in run1_files})
    index = OutputIndex()
    index.add(s1)
    index.finalized_runs.append("run1")
    index.save(layout.fs, layout.loc.path)
    half = run2_files[-1]
    cut = lines[half] // 2 + LINES_PER_BLOCK // 3  # through the middle of a block
    upto = {i: lines[i] for i in run2_files}
    upto[half] = cut
    commit(layout, "run2", files, per_file, 0, upto)
    settings = settings_for(tmp)
    layout.write_json(layout.run_state_path, {**settings, "run_id": "run2"})
    committed = sum(upto.values()) + sum(lines[i] for i in run1_files)
    return {"files": n, "committed_docs": committed, "half_done_file": files[half].name,
            "half_done_uncommitted": lines[half] - cut, "build_seconds": time.perf_counter() - t0}


def settings_for(tmp: Path) -> dict:
    return {"model": "bench", "labels": ["r"], "threshold": None, "top_k": None, "max_entities": 128,
            "max_text_chars": 200000, "entity_labels": None, "entity_threshold": None, "coreference": None,
            "lines_per_block": LINES_PER_BLOCK}


# -- measured steps, each in its own process --------------------------------------------------------
def driver(tmp: Path, out: str = "out") -> dict:
    from glidre_core.extraction.config import ExtractConfig
    from glidre_core.extraction.output import LEDGER, OutputLayout
    from glidre_core.extraction.pipeline import prepare_output
    from glidre_core.extraction.source import discover_inputs, relative_source
    from glidre_core.extraction.state import resume_plan
    from glidre_core.extraction.storage import Storage
    from glidre_core.extraction.udf import TokenizerSpec

    base = peak_rss_mb()
    cfg = ExtractConfig.model_validate({"input": str(tmp / "in"), "output": str(tmp / out), "resume": True,
                                        "lines_per_block": LINES_PER_BLOCK})
    storage = Storage(cfg.storage)
    t0 = time.perf_counter()
    inp = storage.location(cfg.input)
    files, _ = discover_inputs(inp)
    layout = OutputLayout(storage.location(cfg.output))
    index = prepare_output(layout, cfg, settings_for(tmp))
    plan = resume_plan(index, layout.fs, layout.dir(LEDGER))
    todo = [f for f in files if relative_source(f, inp.path) not in plan.done_files]
    seconds = time.perf_counter() - t0
    # What the read datasource carries into every read task: the paths to read and the skip plan
    # (JsonLinesDatasource(todo, skip=plan.skip, ...); building it would start Ray here).
    shipped_ds = pickle.dumps({"paths": todo, "skip": plan.skip, "lines_per_block": LINES_PER_BLOCK,
                               "root": inp.path})
    fn_kwargs = {"spec": TokenizerSpec(None, 512, 128), "max_entities": 128, "max_text_chars": 200000}
    shipped = len(shipped_ds) + len(pickle.dumps(fn_kwargs))
    (tmp / "datasource.pkl").write_bytes(shipped_ds)
    return {"resume_plan_seconds": seconds, "driver_peak_mb": peak_rss_mb(), "driver_baseline_mb": base,
            "shipped_bytes": shipped, "skip_plan_bytes": plan.shipped_bytes(), "files_to_read": len(todo),
            "files_partly_done": len(plan.skip), "committed_docs_seen": plan.committed_docs,
            "parts_indexed": index.parts.num_rows, "units_indexed": index.units.num_rows}


def finalize_run2(tmp: Path) -> None:
    """Mark run 2 finalized (as a clean end of run 2 would) for the ``driver-clean`` measure."""
    from glidre_core.extraction.config import StorageConfig
    from glidre_core.extraction.output import OutputLayout
    from glidre_core.extraction.state import OutputIndex
    from glidre_core.extraction.storage import Storage

    layout = OutputLayout(Storage(StorageConfig()).location(str(tmp / "out")))
    index = OutputIndex.load(layout.fs, layout.loc.path)
    index.finalized_runs.append("run2")
    index.save(layout.fs, layout.loc.path)


def worker(tmp: Path, half_file: str) -> dict:
    """A read task: the shipped plan in, the half-done file read through it (the same
    ``UnitBlocks`` + ``iter_lines`` as ``JsonLinesDatasource._read_stream``)."""
    from glidre_core.extraction.source import UnitBlocks, iter_lines, relative_source

    base = peak_rss_mb()
    shipped = pickle.loads((tmp / "datasource.pkl").read_bytes())
    path = str(tmp / "in" / half_file)
    source = relative_source(path, shipped["root"])
    blocks = UnitBlocks(shipped["lines_per_block"], shipped["skip"].get(source))
    rows = 0
    with open(path, "rb") as f:
        for block in blocks(source, iter_lines(iter(lambda: f.read(4 << 20), b""))):
            rows += block.num_rows
    return {"worker_peak_mb": peak_rss_mb(), "worker_baseline_mb": base, "worker_records_emitted": rows}


def legacy(n: int) -> dict:
    t0 = time.perf_counter()
    before = rss_mb()
    done = frozenset(f"d{i}" for i in range(n))
    mem = rss_mb() - before
    data = pickle.dumps(done)
    return {"legacy_done_set_mb": mem, "legacy_pickled_mb": len(data) / 2**20,
            "legacy_seconds": time.perf_counter() - t0}


def sub(step: str, *args: str, env: dict | None = None) -> dict:
    out = subprocess.run([sys.executable, __file__, "--step", step, *args], capture_output=True, text=True,
                         check=False, env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"step {step} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def hardware() -> dict:
    flags = ""
    try:
        flags = next(ln for ln in open("/proc/cpuinfo") if ln.startswith("flags"))
    except (OSError, StopIteration):
        pass
    model = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    return {"cpu": model, "cores": os.cpu_count(), "avx512_bf16": "avx512_bf16" in flags,
            "python": platform.python_version(), "disk": "local filesystem (tmp)"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--docs", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    p.add_argument("--docs-per-file", type=int, default=100_000)
    p.add_argument("--legacy-max", type=int, default=1_000_000)
    p.add_argument("--output-json")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--dir", help=argparse.SUPPRESS)
    p.add_argument("--arg", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.step:
        tmp = Path(args.dir) if args.dir else None
        result = {"driver": lambda: driver(tmp, args.arg or "out"), "worker": lambda: worker(tmp, args.arg),
                  "finalize": lambda: (finalize_run2(tmp), {})[1],
                  "build": lambda: build(tmp, int(args.arg), args.docs_per_file),
                  "legacy": lambda: legacy(int(args.arg))}[args.step]()
        print(json.dumps(result))
        return
    results = []
    for n in args.docs:
        with tempfile.TemporaryDirectory(prefix="resume_scale_") as d:
            built = sub("build", "--dir", d, "--arg", str(n), "--docs-per-file", str(args.docs_per_file))
            shutil.copytree(Path(d) / "out", Path(d) / "out_system_pool")
            crashed = sub("driver", "--dir", d)
            system = sub("driver", "--dir", d, "--arg", "out_system_pool", env={"ARROW_DEFAULT_MEMORY_POOL": "system"})
            work = sub("worker", "--dir", d, "--arg", built["half_done_file"])
            sub("finalize", "--dir", d)
            clean = sub("driver", "--dir", d)
            row = {"docs": n, **built, **crashed, **work,
                   "clean": {k: clean[k] for k in ("resume_plan_seconds", "driver_peak_mb", "driver_baseline_mb",
                                                   "shipped_bytes")},
                   "crashed_system_pool": {k: system[k] for k in ("resume_plan_seconds", "driver_peak_mb",
                                                                  "driver_baseline_mb")},
                   "worker_emits_exactly_the_uncommitted": work["worker_records_emitted"] == built["half_done_uncommitted"],
                   "plan_sees_every_committed_doc": crashed["committed_docs_seen"] == built["committed_docs"]}
            if n <= args.legacy_max:
                row.update(sub("legacy", "--arg", str(n)))
            results.append(row)
            print(json.dumps(row), flush=True)
    report = {"hardware": hardware(), "lines_per_block": LINES_PER_BLOCK, "docs_per_part": DOCS_PER_PART,
              "docs_per_file": args.docs_per_file, "results": results,
              "command": "python benchmarks/resume_scale.py " + " ".join(sys.argv[1:])}
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
