"""The LMRC-style verify stage of ``glidre extract`` (issue 14, item 3): an LLM confirms or
rejects the uncertain GLiDRE decisions. Off by default (``verify.enabled`` in the extract config,
:class:`~glidre_core.extraction.config.VerifyConfig`).

What is sent. For every document, the model actor already has each (head, tail, label) decision's
probability ``p`` and its label's threshold ``t`` (one forward pass, one host copy:
:meth:`glidre_core.inference.Predictor.predict_with_candidates`). Decisions are split three ways:

* ``p > t + margin_above``: kept without asking (``verification = "above_band"``);
* ``t - margin_below < p <= t + margin_above``: *in band*, sent to the LLM (at most
  ``max_pairs_per_doc`` per document, closest to the threshold first; the rest keep GLiDRE's
  decision, ``"not_sent"``);
* ``p <= t - margin_below``: dropped, as without the stage.

Why a margin around each label's threshold rather than absolute probabilities: thresholds are per
label (and dev-chosen, or adaptive), so one absolute band would be "uncertain" for one label and
far from the decision for another.

Why one request per candidate, not one per document: the answer is a single yes/no, which even
small models give as parseable JSON, while a list of verdicts for several triplets is where
models drop, reorder or merge items; one unusable answer then costs one decision, not a
document's; and each decision's tokens are exact. The cost is the repeated context, which is why
the context is only the sentences of the two entities (closest pair of mentions), cut to
``max_context_chars`` around the mentions, and why requests are capped per document. All
requests of one Ray Data batch go to the backend in **one** ``generate`` call, so each backend
batches its own way (concurrent HTTP requests; padded in-process batches).

The answer: ``{"answer": "yes"}`` or ``{"answer": "no"}``, parsed by the repair parser
(:func:`glidre_core.llm.parsing.repair_json`); ``true``/``false`` are accepted too. Anything else
(a failed request, no JSON after repair, no ``answer``, another value) is *unusable*:
``on_error: keep`` lets GLiDRE's decision stand (kept iff ``p > t``, ``"unusable"``), ``drop``
drops the candidate. Confirmed candidates are written with ``verification = "confirmed"``
(whatever their score: a confirmed ``p <= t`` is *added*), rejected ones are dropped (a rejected
``p > t`` is *removed*). Every output row keeps its GLiDRE score.

Accounting (per document in the ``verify`` column of the actor's result rows, summed by the sink,
written to ``_manifest.json`` under ``verify`` by :func:`manifest_section`): entity pairs and
(pair, label) decisions scored, above band, in band, sent, not sent, confirmed, rejected,
unusable, added, removed, prompt and completion tokens (as the backend counted them), and LLM
seconds (the batch's ``generate`` wall time, shared among its documents by request count).

Prompts are versioned like the distill prompts (:mod:`glidre_core.llm.prompts`): an id, a
version, a fingerprint of the text; a registered prompt is never edited. ``verify-yn@v1`` is for
instruction-tuned models, ``verify-yn-fewshot@v1`` (two worked examples, continued by the model)
for base models such as the offline Gemma-3 270M, which exercises the code paths and says
nothing about quality.
"""

from __future__ import annotations

import bisect
import logging
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import TYPE_CHECKING, Any

from glidre_core.llm.base import ChatMessage, Completion, GenerationRequest, LLMBackend
from glidre_core.llm.parsing import AnswerError, repair_json
from glidre_core.llm.prompts import VersionedPrompt, lookup_prompt

if TYPE_CHECKING:
    from glidre_core.documents import Document
    from glidre_core.extraction.config import VerifyConfig
    from glidre_core.inference import BandDecoded
    from glidre_core.rows import CandidateRow

logger = logging.getLogger(__name__)

#: Values of the ``verification`` column of ``triplets/`` (null when the stage is off).
ABOVE_BAND = "above_band"  # kept without asking: p > t + margin_above
CONFIRMED = "confirmed"  # in band, the LLM said yes
NOT_SENT = "not_sent"  # in band, over max_pairs_per_doc: GLiDRE's decision (p > t) stands
UNUSABLE = "unusable"  # in band, the answer was unusable, on_error=keep: GLiDRE's decision stands
REJECTED = "rejected"  # in band, the LLM said no: not written (decision value only)

#: Where a decision lies with respect to the band (see :func:`band_position`).
BELOW, IN_BAND, ABOVE = "below", "band", "above"


# -- prompts ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class VerifyPrompt(VersionedPrompt):
    """A yes/no verification prompt: ``{context}``, ``{head}``, ``{label}``, ``{tail}``,
    ``{head_type}`` and ``{tail_type}`` are filled in (literal braces are doubled)."""

    user: str

    def templates(self) -> tuple[str, ...]:
        return (self.user,)

    def render(self, context: str, head: str, label: str, tail: str, head_type: str | None = None,
               tail_type: str | None = None) -> tuple[ChatMessage, ...]:
        return self.messages(self.user.format(context=context, head=head, label=label, tail=tail,
                                              head_type=f" ({head_type})" if head_type else "",
                                              tail_type=f" ({tail_type})" if tail_type else ""))


_EXAMPLE = "Marie Curie was born in Warsaw . Curie later worked at the University of Paris ."

_YN_SYSTEM = "You check facts extracted from a text. You answer with one JSON object and nothing else."
_YN_USER = (
    "Does the text state, or clearly imply, this fact?\n"
    "Fact: (\"{head}\"{head_type}, {label}, \"{tail}\"{tail_type}): the relation \"{label}\" holds from "
    "\"{head}\" to \"{tail}\".\n"
    "Answer {{\"answer\": \"yes\"}} if it does, {{\"answer\": \"no\"}} if it does not or if the text does not say.\n\n"
    "Text:\n{context}\n\n"
    "Answer:"
)
# Base models do not follow instructions: one "yes" and one "no" example for the model to continue.
# With no system text, the plain layout sends the user text verbatim (base.render_plain_prompt).
_YN_FEWSHOT = (
    "Facts checked against texts. The answer is {{\"answer\": \"yes\"}} when the text states the fact, "
    "{{\"answer\": \"no\"}} when it does not.\n\n"
    "Text: " + _EXAMPLE + "\nFact: (Marie Curie; place of birth; Warsaw)\nJSON: {{\"answer\": \"yes\"}}\n\n"
    "Text: " + _EXAMPLE + "\nFact: (Marie Curie; place of birth; University of Paris)\nJSON: {{\"answer\": \"no\"}}\n\n"
    "Text: {context}\nFact: ({head}; {label}; {tail})\nJSON:"
)

#: Every registered verification prompt, by ``(id, version)``. Never edit one: add a version.
VERIFY_PROMPTS: dict[tuple[str, int], VerifyPrompt] = {
    ("verify-yn", 1): VerifyPrompt("verify-yn", 1, _YN_SYSTEM, _YN_USER),
    ("verify-yn-fewshot", 1): VerifyPrompt("verify-yn-fewshot", 1, "", _YN_FEWSHOT),
}


def get_verify_prompt(prompt_id: str, version: int) -> VerifyPrompt:
    """The registered prompt, or a ``KeyError`` listing the registered ones."""
    return lookup_prompt(VERIFY_PROMPTS, prompt_id, version, "verify prompt")


# -- context ------------------------------------------------------------------------------------
_SENTENCE_END = re.compile(r"[.!?][\"')\]]*\s+")


def sentence_spans(doc: "Document") -> list[tuple[int, int]]:
    """``[start, end)`` character spans of the sentences: the document's own (``sentences``,
    e.g. DocRED's) when it has them, else a split after ``.``, ``!`` or ``?`` followed by space."""
    if doc.sentences:
        spans = sorted((int(s), int(e)) for s, e in doc.sentences if e > s)
        if spans:
            return spans
    text, out, start = doc.text, [], 0
    for m in _SENTENCE_END.finditer(text):
        out.append((start, m.end()))
        start = m.end()
    if start < len(text) or not out:
        out.append((start, len(text)))
    return out


def _clip(sentence: tuple[int, int], mention: tuple[int, int], budget: int) -> tuple[int, int]:
    """The part of ``sentence`` around ``mention``, at most ``budget`` characters."""
    s, e = sentence
    if e - s <= budget:
        return s, e
    center = (mention[0] + mention[1]) // 2
    a = max(s, center - budget // 2)
    b = min(e, a + budget)
    return max(s, b - budget), b


def pair_context(doc: "Document", head_id: str, tail_id: str, max_chars: int) -> str:
    """The text the LLM sees for one candidate, at most ``max_chars`` characters: the sentences
    of the closest pair of head and tail mentions (fewest sentences apart, then fewest
    characters) and everything between them when that fits; else one window around both
    mentions when they are close enough; else the two sentences, each cut around its mention,
    joined with `` [...] ``. A cut into a sentence is marked ``...``."""
    text = doc.text
    by_id = {e.id: e for e in doc.entities}
    sents = sentence_spans(doc)
    starts = [s for s, _ in sents]

    def sent_of(pos: int) -> int:
        return max(0, bisect.bisect_right(starts, pos) - 1)

    _, _, hm, tm = min(
        (abs(sent_of(h.start) - sent_of(t.start)), abs(h.start - t.start), (h.start, h.end), (t.start, t.end))
        for h in by_id[head_id].mentions for t in by_id[tail_id].mentions
    )
    i, j = sorted((sent_of(hm[0]), sent_of(tm[0])))
    a, b = sents[i][0], max(sents[j][1], hm[1], tm[1])
    if b - a <= max_chars:
        return text[a:b].strip()
    lo, hi = min(hm[0], tm[0]), max(hm[1], tm[1])
    if hi - lo <= max_chars - 2 * len(_CUT):  # both mentions fit in one window of the (long) span
        return _piece(text, (a, b), (lo, hi), max_chars)
    half = (max_chars - len(_SEP)) // 2
    first, second = sorted([(hm, sents[sent_of(hm[0])]), (tm, sents[sent_of(tm[0])])])
    return _piece(text, first[1], first[0], half) + _SEP + _piece(text, second[1], second[0], half)


_CUT, _SEP = "...", " [...] "


def _piece(text: str, span: tuple[int, int], mention: tuple[int, int], budget: int) -> str:
    """``text[span]`` (stripped) if it fits in ``budget`` characters, else the part around
    ``mention`` with ``...`` where it cuts, ``budget`` characters in all."""
    s, e = span
    while s < e and text[s].isspace():
        s += 1
    while e > s and text[e - 1].isspace():
        e -= 1
    if e - s <= budget:
        return text[s:e]
    a, b = _clip((s, e), mention, max(1, budget - 2 * len(_CUT)))
    return (_CUT if a > s else "") + text[a:b] + (_CUT if b < e else "")


# -- answers and decisions -------------------------------------------------------------------------
@dataclass(frozen=True)
class Verdict:
    """A parsed answer: ``answer`` True (yes), False (no) or None (unusable, ``reason`` says why)."""

    answer: bool | None
    reason: str | None = None


_YES = {"yes", "true", "y", "1", "confirmed", "correct"}
_NO = {"no", "false", "n", "0", "rejected", "incorrect"}


def read_verdict(text: str | None) -> Verdict:
    """``{"answer": "yes"|"no"}`` (or ``true``/``false``; case and surrounding punctuation are
    ignored) through the repair parser; anything else is unusable, with the reason."""
    try:
        value = repair_json(text or "").value
    except AnswerError as exc:
        return Verdict(None, f"{exc.error_type}: {exc.message}")
    if not isinstance(value, dict):
        return Verdict(None, f"SchemaError: expected a JSON object, got {type(value).__name__}")
    keys = {str(k).strip().lower(): v for k, v in value.items()}
    if "answer" not in keys:
        return Verdict(None, "SchemaError: no 'answer' key")
    answer = keys["answer"]
    if isinstance(answer, bool):
        return Verdict(answer)
    if isinstance(answer, str):
        word = answer.strip().strip(".!\"' ").lower()
        if word in _YES:
            return Verdict(True)
        if word in _NO:
            return Verdict(False)
    return Verdict(None, f"SchemaError: 'answer' is {answer!r}, not yes or no")


def completion_verdict(completion: Completion | None) -> Verdict:
    """The verdict of one completion: a failed request is unusable, else :func:`read_verdict`."""
    if completion is None:
        return Verdict(None, "BackendFailure: no completion returned for the request")
    if not completion.ok:
        return Verdict(None, f"BackendFailure: {completion.error}")
    return read_verdict(completion.text)


def band_position(score: float, threshold: float, margin_below: float, margin_above: float) -> str:
    """:data:`BELOW`, :data:`IN_BAND` or :data:`ABOVE`: the rule of
    :func:`glidre_core.inference.select_band` for one decision (``t - below < p <= t + above``)."""
    if score > threshold + margin_above:
        return ABOVE
    if score > threshold - margin_below:
        return IN_BAND
    return BELOW


def decide(score: float, threshold: float, answer: bool | None, on_error: str = "keep") -> tuple[bool, str]:
    """(keep, verification) for a candidate that was sent: yes -> kept (``confirmed``), no ->
    dropped (``rejected``), unusable -> GLiDRE's decision ``score > threshold`` with
    ``on_error="keep"``, dropped with ``"drop"`` (``unusable`` either way)."""
    if answer is True:
        return True, CONFIRMED
    if answer is False:
        return False, REJECTED
    return (on_error == "keep" and score > threshold), UNUSABLE


# -- accounting ---------------------------------------------------------------------------------
@dataclass
class VerifyStats:
    """One document's verify accounting (the ``verify`` struct of the actor's result rows; the
    field names are :data:`glidre_core.extraction.schemas.VERIFY_STRUCT`'s)."""

    pairs_scored: int = 0  # ordered entity pairs scored by GLiDRE
    triples_scored: int = 0  # (pair, label) decisions: pairs x labels
    above_band: int = 0  # kept without asking
    in_band: int = 0  # = sent + not_sent
    sent: int = 0  # requests (one per candidate) = confirmed + rejected + unusable
    pairs_sent: int = 0  # distinct entity pairs with at least one request
    not_sent: int = 0  # in band, over max_pairs_per_doc
    not_sent_kept: int = 0  # of those, written on GLiDRE's decision (p > t)
    confirmed: int = 0
    rejected: int = 0
    unusable: int = 0
    unusable_kept: int = 0  # unusable answers whose candidate was kept (on_error=keep and p > t)
    added: int = 0  # confirmed with p <= t: written because of the LLM
    removed: int = 0  # p > t, not written because of the LLM (rejected, or unusable with on_error=drop)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    llm_seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


STAT_FIELDS = tuple(f.name for f in fields(VerifyStats))


def manifest_section(cfg: "VerifyConfig", counts: Mapping[str, Any], prefix: str = "verify.") -> dict[str, Any]:
    """The ``verify`` section of ``_manifest.json`` from the run's summed counts (keys
    ``verify.<field>`` and ``verify.docs``, as the sink sums them). Off: ``{"enabled": false}``."""
    if not cfg.enabled:
        return {"enabled": False}
    from glidre_core.llm.distill import teacher_name

    c = {name: counts.get(prefix + name, 0) or 0 for name in STAT_FIELDS}
    sent, scored = c["sent"], c["triples_scored"]
    tokens = c["prompt_tokens"] + c["completion_tokens"]
    prompt = get_verify_prompt(cfg.prompt.id, cfg.prompt.version)
    return {
        "enabled": True,
        "scope": "documents processed by this run (a resumed output's earlier runs are in their own manifests)",
        "band": {"margin_below": cfg.margin_below, "margin_above": cfg.margin_above,
                 "rule": "in band iff threshold - margin_below < p <= threshold + margin_above (per label)"},
        "on_error": cfg.on_error,
        "max_pairs_per_doc": cfg.max_pairs_per_doc,
        "max_context_chars": cfg.max_context_chars,
        "max_tokens": cfg.max_tokens,
        "prompt": prompt.describe(),
        "backend": teacher_name(cfg.backend),
        "docs": int(counts.get(prefix + "docs", 0) or 0),
        **{k: int(v) for k, v in c.items() if k != "llm_seconds"},
        "fraction_sent": sent / scored if scored else 0.0,
        "pair_fraction_sent": c["pairs_sent"] / c["pairs_scored"] if c["pairs_scored"] else 0.0,
        "tokens": {"prompt": int(c["prompt_tokens"]), "completion": int(c["completion_tokens"]), "total": int(tokens),
                   "per_request": tokens / sent if sent else 0.0},
        "llm_seconds": round(float(c["llm_seconds"]), 3),
        "llm_seconds_per_request": float(c["llm_seconds"]) / sent if sent else 0.0,
        # sent = confirmed + rejected + unusable; in band = sent + not sent; what was written:
        # triplets_verified = above band + confirmed + unusable kept + not sent kept
        "triplets_verified": int(c["above_band"] + c["confirmed"] + c["unusable_kept"] + c["not_sent_kept"]),
        "reconciled": (sent == c["confirmed"] + c["rejected"] + c["unusable"]
                       and c["in_band"] == sent + c["not_sent"]),
    }


def summary_line(section: Mapping[str, Any]) -> str | None:
    """One line for the CLI summary, or None when the stage is off."""
    if not section.get("enabled"):
        return None
    return (f"verify (LLM)    {section['sent']} of {section['triples_scored']} decisions sent "
            f"({100 * section['fraction_sent']:.2f}%): {section['confirmed']} confirmed, {section['rejected']} rejected, "
            f"{section['unusable']} unusable; {section['tokens']['total']} tokens, {section['llm_seconds']:.1f} s")


# -- the stage ----------------------------------------------------------------------------------
def _key(row: Mapping[str, Any]) -> tuple[str, str, str]:
    return row["head_id"], row["tail_id"], row["relation"]


def _triplet(row: Mapping[str, Any], verification: str) -> dict[str, Any]:
    out = {k: v for k, v in row.items() if k != "threshold"}
    out["verification"] = verification
    return out


@dataclass
class _DocPlan:
    doc: "Document"
    above: list[dict[str, Any]]
    send: list["CandidateRow"]
    rest: list["CandidateRow"]
    stats: VerifyStats
    ids: list[str] = field(default_factory=list)


class Verifier:
    """The verify step of one model actor: the backend (built once, in the actor's ``__init__``)
    and the settings. :meth:`verify` takes a batch's documents and their
    :class:`~glidre_core.inference.BandDecoded` and returns the final triplet rows and the
    accounting of each document."""

    def __init__(self, cfg: "VerifyConfig", backend: LLMBackend):
        self.cfg = cfg
        self.backend = backend
        self.prompt = get_verify_prompt(cfg.prompt.id, cfg.prompt.version)

    def _plan(self, d: int, doc: "Document", decoded: "BandDecoded") -> tuple[_DocPlan, list[GenerationRequest]]:
        cfg = self.cfg
        stats = VerifyStats(pairs_scored=decoded.num_pairs, triples_scored=decoded.num_pairs * decoded.num_labels)
        band = {_key(c) for c in decoded.candidates}
        above = [_triplet(r, ABOVE_BAND) for r in decoded.rows if _key(r) not in band]
        ranked = sorted(decoded.candidates, key=lambda c: (abs(c["score"] - c["threshold"]), -c["score"]))
        plan = _DocPlan(doc, above, ranked[: cfg.max_pairs_per_doc], ranked[cfg.max_pairs_per_doc:], stats)
        stats.above_band, stats.in_band = len(above), len(ranked)
        stats.sent, stats.not_sent = len(plan.send), len(plan.rest)
        stats.pairs_sent = len({(c["head_id"], c["tail_id"]) for c in plan.send})
        requests = []
        for k, c in enumerate(plan.send):
            rid = f"{d}:{k}"
            plan.ids.append(rid)
            context = pair_context(doc, c["head_id"], c["tail_id"], cfg.max_context_chars)
            messages = self.prompt.render(context, c["head_text"], c["relation"], c["tail_text"],
                                          c.get("head_type"), c.get("tail_type"))
            requests.append(GenerationRequest(rid, messages, cfg.max_tokens, cfg.temperature, (), json_mode=True))
        return plan, requests

    def _generate(self, requests: list[GenerationRequest]) -> list[Completion]:
        """One ``generate`` call for the whole batch; a backend that raises (it should not: errors
        are per request) turns every request of the batch into a failed completion."""
        if not requests:
            return []
        try:
            return list(self.backend.generate(requests))
        except Exception as exc:  # noqa: BLE001 - the candidates fall back to on_error, the job goes on
            logger.warning("verify backend failed for %d request(s): %s", len(requests), exc, exc_info=True)
            return [Completion(r.request_id, finish_reason="error", error=f"{type(exc).__name__}: {exc}")
                    for r in requests]

    def verify(self, docs: Sequence[tuple["Document", "BandDecoded"]]) -> list[tuple[list[dict[str, Any]], VerifyStats]]:
        """Final triplet rows (GLiDRE's fields, ``score`` unchanged, plus ``verification``; best
        first) and :class:`VerifyStats` per document, in input order."""
        plans, requests = [], []
        for d, (doc, decoded) in enumerate(docs):
            plan, reqs = self._plan(d, doc, decoded)
            plans.append(plan)
            requests.extend(reqs)
        t0 = time.perf_counter()
        completions = self._generate(requests)
        seconds = time.perf_counter() - t0
        by_id = {c.request_id: c for c in completions}
        out = []
        logged = 0
        for plan in plans:
            stats, rows = plan.stats, list(plan.above)
            for rid, c in zip(plan.ids, plan.send):
                comp = by_id.get(rid)
                if comp is not None:
                    stats.prompt_tokens += comp.usage.prompt_tokens
                    stats.completion_tokens += comp.usage.completion_tokens
                verdict = completion_verdict(comp)
                keep, how = decide(c["score"], c["threshold"], verdict.answer, self.cfg.on_error)
                above_t = c["score"] > c["threshold"]
                if how == CONFIRMED:
                    stats.confirmed += 1
                    stats.added += int(not above_t)
                elif how == REJECTED:
                    stats.rejected += 1
                else:
                    stats.unusable += 1
                    stats.unusable_kept += int(keep)
                    if logged < 3:
                        logger.debug("verify: unusable answer for %s %s: %s (raw %r)", plan.doc.doc_id, _key(c),
                                     verdict.reason, comp.text if comp else None)
                        logged += 1
                stats.removed += int(above_t and not keep)
                if keep:
                    rows.append(_triplet(c, how))
            kept_rest = [_triplet(c, NOT_SENT) for c in plan.rest if c["score"] > c["threshold"]]
            stats.not_sent_kept = len(kept_rest)
            rows.extend(kept_rest)
            stats.llm_seconds = seconds * len(plan.send) / len(requests) if requests else 0.0
            rows.sort(key=lambda r: -r["score"])
            out.append((rows, stats))
        return out

    def close(self) -> None:
        self.backend.close()


def check_backend(cfg: "VerifyConfig") -> dict[str, Any]:
    """On the driver, before Ray work: an HTTP endpoint answers ``/models`` (and accepts the
    key); an in-process model resolves (a GGUF is converted and cached once, here, rather than
    by every actor at once). Raises :class:`~glidre_core.llm.base.BackendError`."""
    from glidre_core.llm.config import OpenAIBackendConfig, TransformersBackendConfig

    b = cfg.backend
    info: dict[str, Any] = {}
    if isinstance(b, OpenAIBackendConfig):
        from glidre_core.llm.http import OpenAIHTTPBackend

        with OpenAIHTTPBackend(b) as backend:
            backend.check()
    elif isinstance(b, TransformersBackendConfig):
        from glidre_core.llm.local import resolve_model_dir

        info["model_dir"] = str(resolve_model_dir(b.model, b.cache_dir))
    return info


def build_verifier(cfg: "VerifyConfig", share: float = 1.0) -> Verifier:
    """The actor's verifier: its backend is built by :func:`glidre_core.llm.distill.build_backend`
    (``share`` = this actor's share of the job-wide HTTP rate limits)."""
    from glidre_core.llm.distill import build_backend

    return Verifier(cfg, build_backend(cfg.backend, share))
