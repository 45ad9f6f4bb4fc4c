"""The RHF steps without a backend: requests out, hand-written or generated answers in.

:class:`RHFBatch` holds the documents of one batch and moves through the three steps; each
step renders its requests (:meth:`RHFBatch.requests`) and reads their completions
(:meth:`RHFBatch.take`), so the runner is just ``for step: take(step, backend.generate(requests(step)))``
and the tests feed hand-written answers through the same code.

**Units.** A document longer than ``limits.chunk_chars`` is cut into chunks after sentence ends
(:func:`glidre_core.llm.parsing.chunk_spans`). With ``long_documents: chunk`` every chunk is a
unit that runs R, H and F on its own text and the facts of a document are the union of its
units' facts (a fact whose head and tail never share a chunk is missed). With ``truncate`` only
the first chunk is read and a warning names the document and the characters dropped.

**Answers.** Each answer goes through the distill parser's JSON repair
(:func:`glidre_core.llm.parsing.repair_json`: code fences, prose, quotes, truncation...). An
answer is ``{"<step>": [...]}`` or a bare list; a list item is a string (or a number), or an
object with a ``name`` (or ``entity``, ``label``, ``relation``, ``head``, ``tail``) string.

**Labels** are matched to the candidate labels by normalised string (case, accents, spacing,
``_`` and punctuation ignored); anything else is dropped as ``unknown_label``.

**Entity names** are matched to the given entity clusters of the unit against *every* mention
of a cluster, on the same normalised key:

1. exact: the name's key equals the key of a mention of exactly one cluster;
2. fallback, only when there is no exact match at all: unique word-boundary containment, i.e.
   the name's key occurs inside a mention key of exactly one cluster ("Curie" -> the cluster of
   "Marie Curie"), or a mention key of exactly one cluster occurs inside the name's key ("the city
   of Loja" -> "Loja"); keys shorter than 3 characters never match by containment.

A name that matches several clusters (at the first rule that matches at all) is dropped as
``ambiguous_entity``; one that matches none as ``unmatched_entity``.

**Counting.** Per step: requests, answers by outcome (``ok``, ``backend_error``,
``empty_answer``, ``malformed_answer``, ``schema_error``), items read, items kept, items dropped
by reason (``malformed_item``, ``unknown_label``, ``unmatched_entity``, ``ambiguous_entity``,
``self_relation``, ``duplicate``, ``over_limit``), JSON repairs, answers cut by ``max_tokens``,
tokens. They reconcile: ``requests = sum(answers)``, ``items = kept + sum(dropped)``, the H
requests are the R items kept, the F requests are the H items kept, and the F items kept are
the predicted facts (duplicates across chunks are dropped as ``duplicate``). The first raw
answers of each step are kept (``examples``) so that a metrics JSON shows what the model said.
"""

from __future__ import annotations

import logging
import re
import unicodedata
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from glidre_core.documents import Document, Entity
from glidre_core.llm.base import Completion, GenerationRequest, Usage
from glidre_core.llm.parsing import EMPTY, MALFORMED, AnswerError, chunk_spans, repair_json
from glidre_core.llm.rhf.config import RHFConfig
from glidre_core.llm.rhf.prompts import STEPS, RHFPrompt, Step
from glidre_core.rows import TripletRow

logger = logging.getLogger(__name__)

#: answer outcomes (one per request) and item drop reasons
ANSWER_OUTCOMES = ("ok", "backend_error", "empty_answer", "malformed_answer", "schema_error")
DROP_REASONS = ("malformed_item", "unknown_label", "unmatched_entity", "ambiguous_entity", "self_relation",
                "duplicate", "over_limit")
MIN_CONTAINMENT_CHARS = 3
#: raw answers kept per step in the metrics JSON (``steps.<step>.examples``), for inspection
EXAMPLES_PER_STEP = 3
_ITEM_KEYS = ("name", "entity", "label", "relation", "head", "tail")


# -- normalisation and matching -------------------------------------------------------------------
def name_key(name: str) -> str:
    """Case, accents, punctuation, ``_`` and spacing ignored: ``"Ecuador's"`` and ``"ecuador 's"``
    are both ``"ecuador s"``; ``"Riofrío"`` is ``"riofrio"``."""
    s = unicodedata.normalize("NFKD", name)
    s = "".join(c for c in s if not unicodedata.combining(c)).casefold().replace("_", " ")
    return " ".join(re.findall(r"\w+", s))


def _contains(outer: str, inner: str) -> bool:
    return f" {inner} " in f" {outer} "


class LabelIndex:
    """Candidate relation labels by normalised key."""

    def __init__(self, labels: Sequence[str]):
        self.labels = list(labels)
        self.by_key = {name_key(lab): lab for lab in self.labels}

    def match(self, label: str) -> str | None:
        return self.by_key.get(name_key(label))


class NameIndex:
    """The given entity clusters of one unit, every mention's key (see the module docstring)."""

    def __init__(self, doc: Document, entities: Sequence[Entity]):
        self.keys: dict[str, set[str]] = {}  # entity id -> mention keys
        for e in entities:
            names = {m.name if m.name else doc.text[m.start:m.end] for m in e.mentions}
            self.keys[e.id] = {k for k in (name_key(n) for n in names) if k}

    def match(self, name: str) -> tuple[str | None, str]:
        """``(entity id, "exact" | "contained")`` or ``(None, "unmatched_entity" | "ambiguous_entity")``."""
        key = name_key(name)
        if not key:
            return None, "unmatched_entity"
        exact = [eid for eid, keys in self.keys.items() if key in keys]
        if len(exact) == 1:
            return exact[0], "exact"
        if exact:
            return None, "ambiguous_entity"
        hits = [eid for eid, keys in self.keys.items()
                if any((len(key) >= MIN_CONTAINMENT_CHARS and _contains(k, key))
                       or (len(k) >= MIN_CONTAINMENT_CHARS and _contains(key, k)) for k in keys)]
        if len(hits) == 1:
            return hits[0], "contained"
        return None, "ambiguous_entity" if hits else "unmatched_entity"


# -- answers ------------------------------------------------------------------------------------
class ListAnswerError(ValueError):
    def __init__(self, outcome: str, message: str):
        self.outcome = outcome
        super().__init__(message)


def _item_text(item: Any) -> str | None:
    if isinstance(item, dict):
        for k in _ITEM_KEYS:
            if k in item:
                item = item[k]
                break
        else:
            return None
    if isinstance(item, (str, int, float)) and not isinstance(item, bool):
        s = " ".join(str(item).split())
        return s or None
    return None


def read_list_answer(raw: str, step: Step) -> tuple[list[str | None], list[str]]:
    """The items of one answer (``None`` for an item that is not a name or label) and the JSON
    repairs applied. Raises :class:`ListAnswerError` with the answer's outcome."""
    try:
        rep = repair_json(raw)
    except AnswerError as exc:
        outcome = "empty_answer" if exc.error_type == EMPTY else "malformed_answer" if exc.error_type == MALFORMED \
            else "schema_error"
        raise ListAnswerError(outcome, exc.message) from None
    value = rep.value
    if isinstance(value, dict):
        if step in value:
            value = value[step]
        else:
            lists = [v for v in value.values() if isinstance(v, list)]
            if len(lists) != 1:
                raise ListAnswerError("schema_error", f"expected {{\"{step}\": [...]}}, got keys {sorted(value)}")
            value = lists[0]
            rep.repairs.append("other_key")
    if value is None:
        value = []
    if not isinstance(value, list):
        raise ListAnswerError("schema_error", f"expected a list, got a {type(value).__name__}")
    return [_item_text(v) for v in value], rep.repairs


# -- per-step counts ----------------------------------------------------------------------------
@dataclass
class StepStats:
    requests: int = 0
    answers: Counter = field(default_factory=Counter)
    items: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    matched: Counter = field(default_factory=Counter)  # entity names: exact / contained
    repairs: Counter = field(default_factory=Counter)
    cut_by_max_tokens: int = 0
    usage: Usage = field(default_factory=Usage)
    seconds: float = 0.0
    examples: list[dict[str, str]] = field(default_factory=list)

    def merge(self, other: "StepStats") -> None:
        self.requests += other.requests
        self.answers.update(other.answers)
        self.items += other.items
        self.kept += other.kept
        self.dropped.update(other.dropped)
        self.matched.update(other.matched)
        self.repairs.update(other.repairs)
        self.cut_by_max_tokens += other.cut_by_max_tokens
        self.usage.add(other.usage)
        self.seconds += other.seconds
        self.examples.extend(other.examples[: max(0, EXAMPLES_PER_STEP - len(self.examples))])

    @property
    def reconciled(self) -> bool:
        return self.requests == sum(self.answers.values()) and self.items == self.kept + sum(self.dropped.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "requests": self.requests, "answers": {k: self.answers.get(k, 0) for k in ANSWER_OUTCOMES},
            "items": self.items, "kept": self.kept, "dropped": {k: self.dropped.get(k, 0) for k in DROP_REASONS},
            "entity_matches": dict(self.matched), "repairs": dict(self.repairs),
            "cut_by_max_tokens": self.cut_by_max_tokens, "usage": self.usage.as_dict(),
            "seconds": round(self.seconds, 3), "examples": self.examples,
        }


# -- the batch state machine ----------------------------------------------------------------------
@dataclass
class Unit:
    """One document chunk: its text, its entities (with a mention inside it) and their index."""

    doc_index: int
    chunk: int
    start: int
    end: int
    text: str
    entities: list[Entity]
    names: NameIndex
    entity_list: str


def plan_units(doc: Document, doc_index: int, cfg: RHFConfig) -> tuple[list[Unit], bool]:
    """The units of one document and whether it was truncated (see the module docstring)."""
    lim = cfg.limits
    spans = chunk_spans(doc.text, lim.chunk_chars) or [(0, 0)]
    truncated = False
    if lim.long_documents == "truncate" and len(spans) > 1:
        truncated = True
        logger.warning("document %r: %d characters, only the first %d are read (limits.long_documents: truncate, "
                       "cut after the last sentence end within chunk_chars=%d)", doc.doc_id, len(doc.text),
                       spans[0][1], lim.chunk_chars)
        spans = spans[:1]
    units = []
    for c, (s, e) in enumerate(spans):
        ents = [x for x in doc.entities if any(m.start < e and m.end > s for m in x.mentions)]
        ents.sort(key=lambda x: min(m.start for m in x.mentions))
        names: list[str] = []
        for x in ents:
            n = doc.entity_text(x)
            if n not in names:
                names.append(n)
        listing = "; ".join(names) if cfg.limits.list_entities else "(the entities named in the text)"
        units.append(Unit(doc_index, c, s, e, doc.text[s:e], ents, NameIndex(doc, ents), listing))
    return units, truncated


class RHFBatch:
    """R -> H -> F over the documents of one batch (see the module docstring)."""

    def __init__(self, docs: Sequence[Document], labels: Sequence[str], cfg: RHFConfig, prompt: RHFPrompt):
        self.docs = list(docs)
        self.cfg = cfg
        self.prompt = prompt
        self.labels = LabelIndex(labels)
        self.label_text = ", ".join(self.labels.labels)
        self.units: list[Unit] = []
        self.truncated_docs = 0
        for i, d in enumerate(self.docs):
            units, truncated = plan_units(d, i, cfg)
            self.units.extend(units)
            self.truncated_docs += truncated
        self.stats = {s: StepStats() for s in STEPS}
        # pending work per step: relations: unit index; heads: (unit, label); tails: (unit, label, head id)
        self.pending: dict[str, list[tuple[Any, ...]]] = {"relations": [(u,) for u in range(len(self.units))],
                                                          "heads": [], "tails": []}
        self.facts: list[dict[tuple[str, str, str], None]] = [{} for _ in self.docs]  # ordered sets (h, r, t)

    # requests ---------------------------------------------------------------------------------
    def requests(self, step: Step) -> list[GenerationRequest]:
        g = self.cfg.generation
        max_tokens = {"relations": g.max_tokens_relations, "heads": g.max_tokens_heads,
                      "tails": g.max_tokens_tails}[step]
        out = []
        for k, item in enumerate(self.pending[step]):
            unit = self.units[item[0]]
            fields = {"text": unit.text, "labels": self.label_text, "entities": unit.entity_list}
            if step != "relations":
                fields["relation"] = item[1]
            if step == "tails":
                doc = self.docs[unit.doc_index]
                fields["head"] = doc.entity_text(doc.entity(item[2]))
            out.append(GenerationRequest(f"{step}:{k}", self.prompt.render(step, **fields), max_tokens,
                                         g.temperature, tuple(g.stop), True))
        self.stats[step].requests += len(out)
        return out

    # answers ----------------------------------------------------------------------------------
    def take(self, step: Step, completions: Sequence[Completion]) -> None:
        """Read the answers of ``step`` (in the order of :meth:`requests`) and queue the next step."""
        st = self.stats[step]
        items = self.pending[step]
        if len(completions) != len(items):
            raise ValueError(f"{step}: {len(completions)} completions for {len(items)} requests")
        for item, c in zip(items, completions):
            st.usage.add(c.usage)
            if len(st.examples) < EXAMPLES_PER_STEP:
                st.examples.append({"request": self._describe(item), "answer": c.text[:300], "finish_reason": c.finish_reason})
            if c.finish_reason == "length":
                st.cut_by_max_tokens += 1
            if not c.ok:
                st.answers["backend_error"] += 1
                logger.debug("%s %s failed: %s", step, item, c.error)
                continue
            try:
                values, repairs = read_list_answer(c.text, step)
            except ListAnswerError as exc:
                st.answers[exc.outcome] += 1
                logger.debug("%s %s: %s: %r", step, item, exc, c.text[:200])
                continue
            st.answers["ok"] += 1
            st.repairs.update(repairs)
            st.items += len(values)
            getattr(self, f"_take_{step}")(item, values, st)
        self.pending[step] = []

    def _describe(self, item: tuple[Any, ...]) -> str:
        unit = self.units[item[0]]
        where = f"{self.docs[unit.doc_index].doc_id}#{unit.chunk}"
        return " | ".join([where, *map(str, item[1:])])

    def _take_relations(self, item: tuple[int], values: list[str | None], st: StepStats) -> None:
        (u,) = item
        limit = self.cfg.limits.max_relations_per_chunk
        seen: list[str] = []
        for v in values:
            label = self.labels.match(v) if v is not None else None
            reason = "malformed_item" if v is None else "unknown_label" if label is None else \
                "duplicate" if label in seen else "over_limit" if limit is not None and len(seen) >= limit else None
            if reason:
                st.dropped[reason] += 1
                continue
            seen.append(label)  # type: ignore[arg-type]
            st.kept += 1
            self.pending["heads"].append((u, label))

    def _take_heads(self, item: tuple[int, str], values: list[str | None], st: StepStats) -> None:
        u, label = item
        limit = self.cfg.limits.max_heads_per_relation
        seen: list[str] = []
        for v in values:
            if v is None:
                st.dropped["malformed_item"] += 1
                continue
            eid, how = self.units[u].names.match(v)
            if eid is None:
                st.dropped[how] += 1
                continue
            st.matched[how] += 1
            if eid in seen:
                st.dropped["duplicate"] += 1
            elif limit is not None and len(seen) >= limit:
                st.dropped["over_limit"] += 1
            else:
                seen.append(eid)
                st.kept += 1
                self.pending["tails"].append((u, label, eid))

    def _take_tails(self, item: tuple[int, str, str], values: list[str | None], st: StepStats) -> None:
        u, label, head = item
        unit = self.units[u]
        facts = self.facts[unit.doc_index]
        for v in values:
            if v is None:
                st.dropped["malformed_item"] += 1
                continue
            eid, how = unit.names.match(v)
            if eid is None:
                st.dropped[how] += 1
                continue
            st.matched[how] += 1
            if eid == head:
                st.dropped["self_relation"] += 1
            elif (head, label, eid) in facts:
                st.dropped["duplicate"] += 1
            else:
                facts[(head, label, eid)] = None
                st.kept += 1

    # output -----------------------------------------------------------------------------------
    def predictions(self) -> list[list[TripletRow]]:
        """Per document, the facts as the rows GLiDRE's predictor returns (``score`` 1.0: the LLM
        gives no probability), so that the same metric code scores both."""
        out = []
        for doc, facts in zip(self.docs, self.facts):
            rows = []
            for h, r, t in facts:
                he, te = doc.entity(h), doc.entity(t)
                rows.append(TripletRow(head_id=h, head_text=doc.entity_text(he), head_type=he.type, relation=r,
                                       tail_id=t, tail_text=doc.entity_text(te), tail_type=te.type, score=1.0))
            out.append(rows)
        return out
