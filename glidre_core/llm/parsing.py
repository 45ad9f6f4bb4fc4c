"""Teacher answers -> GLiDRE documents: JSON repair, schema checks, mention location, merging.

Three steps, each with its own error type so that ``errors/`` says what went wrong:

1. :func:`repair_json` turns the raw answer into a JSON value. LLM answers break JSON in a few
   recurring ways, each repaired and recorded by name: a Markdown code fence around it, prose
   before or after it, single-quoted strings, Python literals (``True``/``None``), bare keys,
   trailing commas, missing commas between values, and an answer cut by ``max_tokens``
   (truncated: the last incomplete element is dropped and the open brackets are closed). What
   cannot be repaired raises :class:`AnswerError` ``MalformedAnswer`` with the raw text.
2. :func:`read_chunk_answer` checks the shape (``SchemaError``): an object with an ``entities``
   list; entities with a name; relations with head, label and tail.
3. :func:`build_document` locates every mention in the text (the character offsets are computed
   here, never asked from the model), merges entities across chunks by normalised name, and
   checks every relation against the entities that survived. Items that fail (a mention that is
   not in the text, a relation to an unknown entity) are *dropped and counted* by default; with
   ``strict=True`` any such item fails the document (``InvalidAnswer``). The result is checked
   by :func:`glidre_core.documents.parse_document`, the same validation the training reader
   applies, so what is written is what ``configs/pretrain.yaml`` reads.

Why mention location is strict about word boundaries: training snaps mentions to whole words
(:func:`glidre_core.text.split_words`); "Paris" inside "Parisian" would become a wrong entity.
Why longer names claim their spans first: "Curie" occurs inside "Marie Curie"; the shorter
name's occurrences inside another entity's mention are not mentions of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from glidre_core.documents import DocumentError, parse_document

#: error_type values written to errors/
MALFORMED = "MalformedAnswer"  # not JSON, even after repair
SCHEMA = "SchemaError"  # JSON, but not the asked-for shape
INVALID = "InvalidAnswer"  # strict mode: a mention not in the text, a relation to an unknown entity
EMPTY = "EmptyAnswer"  # the model returned nothing
BACKEND = "BackendFailure"  # the request failed (HTTP error after retries, generation error)
INPUT = "InputError"  # the input record itself (not JSON, no doc_id or text, too long)
OUTPUT = "OutputInvalid"  # the built document fails the training reader's validation


class AnswerError(ValueError):
    """A document could not be distilled. ``doc_id``, ``field`` and ``message`` say where and
    what (like :class:`~glidre_core.documents.DocumentError`); ``error_type`` is one of the
    constants above; ``raw`` is the teacher's raw answer when there was one."""

    def __init__(self, doc_id: str | None, field: str, message: str, error_type: str = MALFORMED,
                 raw: str | None = None):
        self.doc_id = doc_id
        self.field = field
        self.message = message
        self.error_type = error_type
        self.raw = raw
        super().__init__(f"document {doc_id!r}: field {field!r}: {error_type}: {message}")


# -- 1. JSON repair -----------------------------------------------------------------------------
@dataclass
class Repaired:
    """A repaired JSON value and the names of the repairs applied (empty: it was valid JSON)."""

    value: Any
    repairs: list[str] = field(default_factory=list)


_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?(.*?)(?:```|$)", re.DOTALL)
_LITERALS = {"true": "true", "false": "false", "null": "null", "True": "true", "False": "false",
             "None": "null"}


def _strip_fence(text: str, repairs: list[str]) -> str:
    m = _FENCE.search(text)
    if m is None:
        return text
    repairs.append("code_fence")
    return m.group(2)


def repair_json(raw: str, doc_id: str | None = None, field: str = "answer") -> Repaired:
    """Parse ``raw`` as JSON, repairing the usual LLM damage (see the module docstring).

    Raises :class:`AnswerError` (``EmptyAnswer`` or ``MalformedAnswer``, with ``raw`` kept).
    """
    if raw is None or not raw.strip():
        raise AnswerError(doc_id, field, "the teacher returned an empty answer", EMPTY, raw)
    repairs: list[str] = []
    text = raw.strip().lstrip("\ufeff")
    text = _strip_fence(text, repairs)
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise AnswerError(doc_id, field, "no JSON object or array in the answer", MALFORMED, raw)
    start = min(starts)
    if text[:start].strip():
        repairs.append("leading_text")
    text = text[start:]
    try:  # the common case: valid JSON, maybe with text after it
        value, end = json.JSONDecoder().raw_decode(text)
        if text[end:].strip():
            repairs.append("trailing_text")
        return Repaired(value, repairs)
    except json.JSONDecodeError:
        pass
    fixed, more = _rewrite(text)
    repairs.extend(more)
    try:
        value = json.loads(fixed)
    except json.JSONDecodeError as exc:
        raise AnswerError(doc_id, field, f"not JSON even after repair ({', '.join(repairs) or 'none'}): "
                          f"{exc.msg} at char {exc.pos}", MALFORMED, raw) from None
    return Repaired(value, repairs)


_BARE_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_ .-]*?(?=\s*:)")
_SCALAR = re.compile(r"-?\d+(\.\d+)?([eE][+-]?\d+)?|true|false|null|True|False|None")


class _Rewriter:
    """One pass over the text, writing strict JSON: quotes, literals, commas, truncation."""

    def __init__(self, text: str):
        self.text = text
        self.out: list[str] = []
        self.length = 0  # characters in out
        self.stack: list[str] = []  # "{" or "["
        self.repairs: list[str] = []
        # after a complete value (or an opened container): where to cut back to on truncation
        self.safe: tuple[int, tuple[str, ...]] = (0, ())
        self.after_value = False  # a value just ended: the next value needs a comma
        self.expect_key = False  # inside an object, before a key

    def note(self, name: str) -> None:
        if name not in self.repairs:
            self.repairs.append(name)

    def put(self, s: str) -> None:
        self.out.append(s)
        self.length += len(s)

    def mark_safe(self) -> None:
        self.safe = (self.length, tuple(self.stack))

    def begin_value(self) -> None:
        if self.after_value:
            self.put(",")
            self.note("missing_comma")
            self.after_value = False

    def value_done(self) -> None:
        self.after_value = True
        self.mark_safe()

    def run(self) -> tuple[str, list[str]]:
        text, i, n = self.text, 0, len(self.text)
        while i < n:
            c = text[i]
            if c.isspace():
                i += 1
            elif c in "{[":
                self.begin_value()
                self.put(c)
                self.stack.append(c)
                self.expect_key = c == "{"
                self.mark_safe()
                i += 1
            elif c in "}]":
                if not self.stack:
                    break
                want = "{" if c == "}" else "["
                if self.stack[-1] != want:  # mismatched closer: close what is open instead
                    self.note("mismatched_bracket")
                    c = "}" if self.stack[-1] == "{" else "]"
                if self.out and self.out[-1] == ",":
                    self.out.pop()
                    self.length -= 1
                    self.note("trailing_comma")
                self.put(c)
                self.stack.pop()
                self.expect_key = False
                i += 1
                if not self.stack:
                    if text[i:].strip():
                        self.note("trailing_text")
                    return "".join(self.out), self.repairs
                self.value_done()
            elif c == ",":
                if self.after_value:
                    self.put(",")
                    self.after_value = False
                    self.expect_key = self.stack[-1] == "{"
                else:
                    self.note("extra_comma")
                i += 1
            elif c == ":":
                self.put(":")
                self.after_value = self.expect_key = False
                i += 1
            elif c in "\"'":
                i = self._string(i, c)
            elif text.startswith("//", i):  # a line comment
                self.note("comment")
                j = text.find("\n", i)
                i = n if j < 0 else j
            elif self.expect_key and (m := _BARE_KEY.match(text, i)) is not None:
                self.begin_value()
                self.put(json.dumps(m.group(0).strip()))
                self.note("bare_key")
                self.after_value = self.expect_key = False
                i = m.end()
            elif (m := _SCALAR.match(text, i)) is not None:
                self.begin_value()
                word = m.group(0)
                if word in ("True", "False", "None"):
                    self.note("python_literal")
                self.put(_LITERALS.get(word, word))
                self.value_done()
                i = m.end()
            else:  # an unquoted word where a value should be: skip it
                self.note("stray_text")
                i += 1
        if self.stack:  # the text ended with brackets still open: truncated
            self._close_truncated()
        return "".join(self.out), self.repairs

    def _string(self, i: int, quote: str) -> int:
        """Copy the string starting at ``text[i]`` as a JSON string; returns the index after it
        (the end of the text when it was cut inside the string: nothing is written then)."""
        text, n = self.text, len(self.text)
        if quote == "'":
            self.note("single_quotes")
        buf: list[str] = []
        j = i + 1
        while j < n:
            ch = text[j]
            if ch == "\\" and j + 1 < n:
                nxt = text[j + 1]
                buf.append(nxt if nxt == "'" else "\\" + nxt)
                j += 2
                continue
            if ch == quote:
                break
            buf.append('\\"' if ch == '"' else "\\n" if ch == "\n" else ch)
            j += 1
        else:
            return n
        try:
            value = json.loads('"' + "".join(buf) + '"')
        except json.JSONDecodeError:
            value = "".join(buf)
            self.note("bad_escape")
        is_key = self.expect_key
        self.begin_value()
        self.put(json.dumps(value, ensure_ascii=False))
        if is_key:
            self.expect_key = self.after_value = False
        else:
            self.value_done()
        return j + 1

    def _close_truncated(self) -> None:
        """Cut back to the last complete value and close the brackets open there."""
        self.note("truncated")
        length, stack = self.safe
        out = "".join(self.out)[:length].rstrip()
        if out.endswith(","):
            out = out[:-1]
        self.out = [out + "".join("}" if s == "{" else "]" for s in reversed(stack))]
        self.stack = []


def _rewrite(text: str) -> tuple[str, list[str]]:
    return _Rewriter(text).run()


# -- 2. shape -----------------------------------------------------------------------------------
@dataclass
class AnswerEntity:
    name: str
    type: str | None
    mentions: list[str]


@dataclass
class AnswerRelation:
    head: str
    label: str
    tail: str


@dataclass
class ChunkAnswer:
    """One chunk's answer in typed form, and what was dropped from it (``field: reason``)."""

    entities: list[AnswerEntity]
    relations: list[AnswerRelation]
    repairs: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _str(value: Any) -> str | None:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        s = " ".join(str(value).split())
        return s or None
    return None


def read_chunk_answer(raw: str, doc_id: str | None, chunk: int = 0) -> ChunkAnswer:
    """Repair and shape-check one chunk's raw answer (see the module docstring)."""
    where = f"chunks[{chunk}]"
    rep = repair_json(raw, doc_id, f"{where}.answer")
    value = rep.value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        value = value[0]
        rep.repairs.append("unwrapped_list")
    if not isinstance(value, dict):
        raise AnswerError(doc_id, f"{where}.answer", f"expected a JSON object, got a {type(value).__name__}",
                          SCHEMA, raw)
    if "entities" not in value:
        raise AnswerError(doc_id, f"{where}.entities", "the answer has no 'entities' list", SCHEMA, raw)
    ents_raw, rels_raw = value.get("entities"), value.get("relations", [])
    if not isinstance(ents_raw, list):
        raise AnswerError(doc_id, f"{where}.entities", f"expected a list, got {type(ents_raw).__name__}", SCHEMA, raw)
    if rels_raw is None:
        rels_raw = []
    if not isinstance(rels_raw, list):
        raise AnswerError(doc_id, f"{where}.relations", f"expected a list, got {type(rels_raw).__name__}", SCHEMA, raw)
    out = ChunkAnswer([], [], rep.repairs)
    for i, e in enumerate(ents_raw):
        f = f"{where}.entities[{i}]"
        if isinstance(e, (str, int, float)) and not isinstance(e, bool):
            e = {"name": e}
        if not isinstance(e, dict):
            out.dropped.append(f"{f}: not an object")
            continue
        name = _str(e.get("name", e.get("text", e.get("entity"))))
        if name is None:
            out.dropped.append(f"{f}.name: missing")
            continue
        mentions_raw = e.get("mentions") or []
        if isinstance(mentions_raw, str):
            mentions_raw = [mentions_raw]
        mentions = [m for m in (_str(x) for x in mentions_raw if not isinstance(x, (dict, list))) if m]
        if name not in mentions:
            mentions.insert(0, name)
        out.entities.append(AnswerEntity(name, _str(e.get("type", e.get("label"))), mentions))
    for i, r in enumerate(rels_raw):
        f = f"{where}.relations[{i}]"
        if isinstance(r, list) and len(r) == 3:
            r = {"head": r[0], "relation": r[1], "tail": r[2]}
        if not isinstance(r, dict):
            out.dropped.append(f"{f}: not an object")
            continue
        head, tail = _str(r.get("head")), _str(r.get("tail"))
        label = _str(r.get("relation", r.get("label", r.get("type"))))
        missing = [k for k, v in (("head", head), ("relation", label), ("tail", tail)) if v is None]
        if missing:
            out.dropped.append(f"{f}.{missing[0]}: missing")
            continue
        out.relations.append(AnswerRelation(head, label, tail))  # type: ignore[arg-type]
    return out


# -- 3. location, merging, validation ----------------------------------------------------------
def chunk_spans(text: str, max_chars: int) -> list[tuple[int, int]]:
    """``[start, end)`` spans of at most ``max_chars`` covering ``text``, cut after a sentence end
    (``. `` ``! `` ``? `` or a newline) when there is one in the second half of the chunk, else at
    whitespace, else hard. No overlap: an entity cut by a boundary is simply missed there."""
    n = len(text)
    spans, start = [], 0
    while start < n:
        end = min(n, start + max_chars)
        if end < n:
            window = text[start:end]
            half = len(window) // 2
            cut = max(window.rfind(p) + len(p) for p in (". ", "! ", "? ", "\n"))
            if cut <= half:
                cut = window.rfind(" ") + 1
            if cut > half:
                end = start + cut
        spans.append((start, end))
        start = end
    return spans


def normalize_name(name: str) -> str:
    return " ".join(name.casefold().split())


def _pattern(mention: str, flexible: bool) -> re.Pattern[str]:
    body = r"\s+".join(re.escape(t) for t in mention.split()) if flexible else re.escape(mention)
    left = r"(?<!\w)" if re.match(r"\w", mention) else ""
    right = r"(?!\w)" if re.search(r"\w$", mention) else ""
    return re.compile(left + body + right, re.IGNORECASE if flexible else 0)


def locate(text: str, mention: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Every occurrence of ``mention`` in ``text[start:end]`` at word boundaries, as absolute
    ``[start, end)`` offsets: exact matches if any, else case- and whitespace-insensitive ones."""
    end = len(text) if end is None else end
    for flexible in (False, True):
        found = [(m.start(), m.end()) for m in _pattern(mention, flexible).finditer(text, start, end)]
        if found:
            return found
    return []


@dataclass
class BuiltDocument:
    """A distilled document in the GLiDRE format, and what was dropped on the way."""

    record: dict[str, Any]
    dropped_entities: list[str] = field(default_factory=list)
    dropped_relations: list[str] = field(default_factory=list)
    dropped_items: list[str] = field(default_factory=list)  # shape problems inside lists
    repairs: list[str] = field(default_factory=list)

    @property
    def n_entities(self) -> int:
        return len(self.record["entities"])

    @property
    def n_relations(self) -> int:
        return len(self.record["relations"])


def build_document(doc_id: str, text: str, chunks: Sequence[tuple[tuple[int, int], ChunkAnswer]], *,
                   strict: bool = False, raw: str | None = None,
                   extra: dict[str, Any] | None = None) -> BuiltDocument:
    """Merge the answers of a document's chunks into one GLiDRE document (see module docstring).

    ``chunks`` pairs each chunk's ``[start, end)`` span with its answer. Entities with the same
    normalised name are one entity (its type: the first one given); its mentions are every
    occurrence, inside the chunks where it was named, of any of its mention strings.
    """
    dropped_e: list[str] = []
    dropped_r: list[str] = []
    dropped_i: list[str] = [d for _, a in chunks for d in a.dropped]
    repairs = sorted({r for _, a in chunks for r in a.repairs})
    # entity key -> (display name, type, [(mention string, chunk span)])
    order: list[str] = []
    info: dict[str, dict[str, Any]] = {}
    for ci, (span, answer) in enumerate(chunks):
        for ei, ent in enumerate(answer.entities):
            key = normalize_name(ent.name)
            slot = info.get(key)
            if slot is None:
                slot = info[key] = {"name": ent.name, "type": ent.type, "strings": [], "where": []}
                order.append(key)
            if slot["type"] is None and ent.type:
                slot["type"] = ent.type
            for m in ent.mentions:
                slot["strings"].append((m, span))
            slot["where"].append(f"chunks[{ci}].entities[{ei}]")
    # candidate spans, longest strings first so that they claim their text before substrings do
    candidates: list[tuple[int, int, int, str]] = []  # (-length, start, end, key)
    missing: dict[str, list[str]] = {}
    for key in order:
        for m, (s, e) in info[key]["strings"]:
            hits = locate(text, m, s, e)
            if not hits:
                missing.setdefault(key, []).append(m)
            candidates.extend((-(b - a), a, b, key) for a, b in hits)
    claimed: list[tuple[int, int, str]] = []
    spans_of: dict[str, set[tuple[int, int]]] = {k: set() for k in order}
    for _, a, b, key in sorted(candidates):
        if any(a < cb and ca < b and ck != key for ca, cb, ck in claimed):
            continue  # inside another entity's mention
        if any(a < cb and ca < b for ca, cb in spans_of[key]):
            continue  # overlaps one of its own spans (a repeated, shorter string)
        claimed.append((a, b, key))
        spans_of[key].add((a, b))
    for key, strings in missing.items():
        msg = f"{info[key]['where'][0]}: mention(s) {sorted(set(strings))!r} of {info[key]['name']!r} not found in the text"
        if strict:
            raise AnswerError(doc_id, info[key]["where"][0] + ".mentions", msg.split(": ", 1)[1], INVALID, raw)
        if not spans_of[key]:
            dropped_e.append(msg)
    entities, id_of = [], {}
    for key in order:
        if not spans_of[key]:
            continue
        eid = f"E{len(entities)}"
        id_of[key] = eid
        entities.append({"id": eid, "name": info[key]["name"], "type": info[key]["type"],
                         "mentions": [{"start": a, "end": b} for a, b in sorted(spans_of[key])]})
    relations, seen = [], set()
    for ci, (_, answer) in enumerate(chunks):
        for ri, rel in enumerate(answer.relations):
            where = f"chunks[{ci}].relations[{ri}]"
            h, t = id_of.get(normalize_name(rel.head)), id_of.get(normalize_name(rel.tail))
            problem = None
            if h is None or t is None:
                side, name = ("head", rel.head) if h is None else ("tail", rel.tail)
                problem = (f"{side}", f"{side} {name!r} is not an extracted entity")
            elif h == t:
                problem = ("tail", f"head and tail are the same entity {rel.head!r}")
            if problem is not None:
                if strict:
                    raise AnswerError(doc_id, f"{where}.{problem[0]}", problem[1], INVALID, raw)
                dropped_r.append(f"{where}: {problem[1]}")
                continue
            label = " ".join(rel.label.split())
            if (h, label, t) in seen:
                continue
            seen.add((h, label, t))
            relations.append({"head": h, "label": label, "tail": t})
    if strict and dropped_i:
        raise AnswerError(doc_id, dropped_i[0].split(":", 1)[0], dropped_i[0].split(": ", 1)[-1], INVALID, raw)
    record: dict[str, Any] = {"doc_id": doc_id, "text": text, "entities": entities, "relations": relations}
    if extra:
        record.update(extra)
    try:
        parse_document(record)
    except DocumentError as exc:  # a bug here, or text the reader rejects: never write it
        raise AnswerError(doc_id, exc.field, exc.message, OUTPUT, raw) from None
    return BuiltDocument(record, dropped_e, dropped_r, dropped_i, repairs)
