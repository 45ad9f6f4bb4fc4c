"""Helpers shared by the ``test_extraction_*`` modules: a tiny saved model, corpora, readers.

Tiny random-weight models keep every pipeline run fast; with ``threshold`` far below any sigmoid
of a random logit and ``top_k=1`` the model emits exactly one triplet per ordered entity pair,
so the expected number of triplets of a document with n entities is n * (n - 1) - a count that
exposes any lost or duplicated document.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

from conftest import tiny_config
from glidre_core import GLiDRE

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "data" / "sample" / "docs.jsonl"
LABELS = ["country", "born in", "member of"]
#: Settings under which every ordered entity pair yields exactly one triplet.
ALL_PAIRS = {"labels": LABELS, "threshold": 0.001, "top_k": 1}


def save_tiny_model(directory: Path) -> Path:
    torch.manual_seed(0)
    model = GLiDRE(tiny_config())
    model.eval()
    model.save_pretrained(directory)
    return directory


def sample_records(n: int | None = None) -> list[dict[str, Any]]:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines[:n]]


def write_jsonl(path: Path, records: list[Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n")
    return path


def expected_pairs(records: list[dict[str, Any]]) -> int:
    return sum(len(r["entities"]) * (len(r["entities"]) - 1) for r in records)


def read_table(fs: pafs.FileSystem, directory: str) -> pa.Table | None:
    """All Parquet parts of one output table, or None if there are none."""
    infos = fs.get_file_info(pafs.FileSelector(directory, allow_not_found=True))
    paths = sorted(i.path for i in infos if i.path.endswith(".parquet"))
    if not paths:
        return None
    return pa.concat_tables([pq.read_table(p, filesystem=fs) for p in paths])


def triplet_keys(table: pa.Table) -> list[tuple[str, str, str, str]]:
    cols = [table.column(c).to_pylist() for c in ("doc_id", "head_id", "relation", "tail_id")]
    return list(zip(*cols))


def base_values(model_dir: Path, **extra: Any) -> dict[str, Any]:
    """Config values for a fast pipeline run on the tiny model (small blocks -> several parts)."""
    values: dict[str, Any] = {
        "model": str(model_dir), **ALL_PAIRS, "batch_size": 4, "lines_per_block": 8, "docs_per_file": 8,
        "progress_interval_s": 2, "actors.num_cpus": 1,
        "entity_recognizer": "model",  # explicit, so these tests do not depend on the rule of "auto"
    }
    values.update(extra)
    return values
