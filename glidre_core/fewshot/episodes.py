"""FREDo episodes: the benchmark's documents, its episode index files, and seeded samples.

FREDo (Popovic & Färber, NAACL 2022; ``github.com/nicpopovic/FREDo``) fixes its test episodes in
index files. Each episode names support documents (1 or 3), query documents (3 or 1), the
``labeled_relations`` to extract (the types annotated in the support documents) and ``r_s``, the
type the episode was sampled for. Documents are DocRED-format records. We read them with the
project's DocRED reader, keeping the dataset's own relation codes (``USED-FOR``, ``P17``) as
labels, so gold facts compare exactly to what FREDo's code compares: ``[h, t, r]`` with ``h``
and ``t`` the ``vertexSet`` indices.

Why a dev slice: the adaptation recipe (epochs, learning rate, threshold) has to be chosen on
episodes that are never reported. Episode ids ``0 .. DEV_EPISODES-1`` of each split are the dev
slice. Seeded samples for reporting leave them out; only the full official set (all 3,000)
contains them, and then the result says so.

Why the in-domain split is flagged: its test documents are DocRED dev documents, the same ones
Re-DocRED dev and test were built from, and the default model trained on Re-DocRED dev. Its
numbers are not comparable with published ones (see ``CONTAMINATED_SPLITS``).
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from glidre_core.documents import Document
from glidre_core.readers import load_rel_info, read_documents

logger = logging.getLogger(__name__)

FredoSplit = Literal["cross_domain_1", "cross_domain_3", "in_domain_1", "in_domain_3"]
SPLITS: tuple[str, ...] = ("cross_domain_1", "cross_domain_3", "in_domain_1", "in_domain_3")
#: split -> (documents file, episode index file), names as in FREDo's ``data/``
SPLIT_FILES: dict[str, tuple[str, str]] = {
    "cross_domain_1": ("test_scierc.json", "test_cross_domain_1_doc_indices.json"),
    "cross_domain_3": ("test_scierc.json", "test_cross_domain_3_doc_indices.json"),
    "in_domain_1": ("test_docred.json", "test_in_domain_1_doc_indices.json"),
    "in_domain_3": ("test_docred.json", "test_in_domain_3_doc_indices.json"),
}
#: splits whose documents the default model has seen in training (Re-DocRED dev = DocRED dev)
CONTAMINATED_SPLITS: frozenset[str] = frozenset({"in_domain_1", "in_domain_3"})
#: episode ids below this are the dev slice (recipe selection), never in a reported sample
DEV_EPISODES = 50
DEFAULT_DATA_DIR = Path("../shared/data/fredo")

#: (head vertexSet index, tail vertexSet index, relation code): FREDo's fact
Fact = tuple[int, int, str]


class Episode(BaseModel):
    """One FREDo episode (document indices into the split's documents file)."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    episode_id: int = Field(ge=0, description="position in the index file")
    support: list[int]
    query: list[int]
    labeled_relations: list[str]
    r_s: str

    @property
    def is_dev(self) -> bool:
        return self.episode_id < DEV_EPISODES


@dataclass
class FredoData:
    """The documents and episodes of one split; ``documents[i]`` is FREDo's document ``i``."""

    split: str
    documents: list[Document]
    episodes: list[Episode]
    label_names: dict[str, str] = field(default_factory=dict)  # relation code -> text the model reads

    def gold(self, doc_index: int, labels: list[str] | tuple[str, ...]) -> list[Fact]:
        """The document's facts of the given relation codes, as FREDo's ``select_labels`` keeps
        them: in file order, duplicates and self pairs included."""
        keep = set(labels)
        return [(int(r.head), int(r.tail), r.label) for r in self.documents[doc_index].relations if r.label in keep]


def relation_text(code: str, rel_info: dict[str, str] | None = None) -> str:
    """The text the label encoder reads for a relation code: DocRED P-ids by their
    ``rel_info`` name (``P17`` -> ``country``); other codes as lower-case words
    (``USED-FOR`` -> ``used for``, ``HYPONYM-OF`` -> ``hyponym of``), the phrasing the model
    was trained on (Re-DocRED's names are lower-case words)."""
    info = load_rel_info() if rel_info is None else rel_info
    if code in info:
        return info[code]
    return " ".join(code.replace("-", " ").replace("_", " ").split()).lower()


def load_fredo(split: str, data_dir: str | Path = DEFAULT_DATA_DIR) -> FredoData:
    """Documents and episodes of ``split``. Relation labels stay the dataset's codes; every
    document must parse (a skipped one would shift FREDo's document indices)."""
    if split not in SPLIT_FILES:
        raise ValueError(f"unknown FREDo split {split!r}; expected one of {', '.join(SPLITS)}")
    docs_name, index_name = SPLIT_FILES[split]
    data_dir = Path(data_dir)
    with open(data_dir / docs_name, encoding="utf-8") as f:
        codes = sorted({lab["r"] for raw in json.load(f) for lab in raw.get("labels") or []})
    documents = read_documents(data_dir / docs_name, "docred", rel_info={c: c for c in codes}, on_error="raise")
    with open(data_dir / index_name, encoding="utf-8") as f:
        raw_episodes = json.load(f)
    episodes = [Episode(episode_id=i, **e) for i, e in enumerate(raw_episodes)]
    n = len(documents)
    for e in episodes:
        bad = [i for i in e.support + e.query if not 0 <= i < n]
        if bad:
            raise ValueError(f"{index_name}: episode {e.episode_id} names documents {bad} outside 0..{n - 1}")
    info = load_rel_info()
    names = {c: relation_text(c, info) for c in codes}
    if len(set(names.values())) != len(names):
        raise ValueError(f"{docs_name}: two relation codes share a label text: {names}")
    if split in CONTAMINATED_SPLITS:
        logger.warning(
            "FREDo %s: its documents are DocRED dev documents, which Re-DocRED dev/test were built from; "
            "a model trained on Re-DocRED dev (the default model) has seen them. The numbers are NOT "
            "comparable with published ones.", split,
        )
    logger.info("FREDo %s: %d documents, %d episodes", split, n, len(episodes))
    return FredoData(split, documents, episodes, names)


def sample_episodes(episodes: list[Episode], k: int | None, seed: int, exclude_dev: bool = True) -> list[Episode]:
    """A seeded sample of ``k`` episodes (sorted by id), outside the dev slice when
    ``exclude_dev``; ``k`` None = every episode (the official full set, dev slice included)."""
    if k is None:
        return list(episodes)
    pool = [e for e in episodes if not (exclude_dev and e.is_dev)]
    if not 1 <= k <= len(pool):
        raise ValueError(f"--episodes must be between 1 and {len(pool)} (episodes outside the dev slice), got {k}")
    return sorted(random.Random(seed).sample(pool, k), key=lambda e: e.episode_id)


def dev_episodes(episodes: list[Episode]) -> list[Episode]:
    """The dev slice: the episodes the recipe is chosen on."""
    return [e for e in episodes if e.is_dev]
