"""The one document type used everywhere: readers produce it, the model consumes it, jobs emit it.

A document is raw ``text`` plus entities whose mentions are *character* offsets into that text.
Character offsets (not word indices) are the interchange format because they survive any change
of word splitter or tokenizer; words are always derived from the text by
:func:`glidre_core.text.split_words`, the single splitter shared by training and inference.

Validation errors are :class:`DocumentError`, which always names the document and the field, so
that a corpus job can write a useful row into its errors table.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class DocumentError(ValueError):
    """A document failed validation or could not be processed.

    ``doc_id`` and ``field`` say where; ``message`` says what. ``str()`` renders all three.
    """

    def __init__(self, doc_id: str | None, field: str, message: str):
        self.doc_id = doc_id
        self.field = field
        self.message = message
        super().__init__(f"document {doc_id!r}: field {field!r}: {message}")


class Mention(BaseModel):
    """One textual mention of an entity: ``text[start:end]`` (end exclusive)."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    start: int
    end: int
    sent_id: int | None = None
    name: str | None = None  # surface form as annotated (kept for the official Ign F1 metric)


class Entity(BaseModel):
    """An entity is a coreference cluster: one id, an optional type, one or more mentions."""

    model_config = ConfigDict(extra="ignore")
    id: str
    type: str | None = None
    mentions: list[Mention]


class Relation(BaseModel):
    """A gold (or predicted) fact: ``head`` and ``tail`` are entity ids, ``label`` a plain string."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    head: str
    label: str
    tail: str


class Document(BaseModel):
    """A document with entities (optional for raw text) and relations (optional, for training).

    ``sentences`` are optional ``[start, end)`` character spans; mentions may carry ``sent_id``
    pointing into them, which enables intra- vs inter-sentence evaluation.
    """

    model_config = ConfigDict(extra="ignore")
    doc_id: str
    text: str
    title: str | None = None
    entities: list[Entity] = Field(default_factory=list)
    relations: list[Relation] = Field(default_factory=list)
    sentences: list[tuple[int, int]] | None = None

    @model_validator(mode="after")
    def _check(self) -> "Document":
        validate_document(self)
        return self

    def entity(self, entity_id: str) -> Entity:
        for e in self.entities:
            if e.id == entity_id:
                return e
        raise KeyError(entity_id)

    def mention_text(self, m: Mention) -> str:
        return self.text[m.start : m.end]

    def entity_text(self, e: Entity) -> str:
        """Representative surface form: the longest mention (ties: the first)."""
        best = max(e.mentions, key=lambda m: (m.end - m.start, -m.start))
        return self.text[best.start : best.end]


def validate_document(doc: Document) -> None:
    """Raise :class:`DocumentError` naming the field for every structural problem we can detect."""
    did = doc.doc_id
    if not doc.doc_id or not str(doc.doc_id).strip():
        raise DocumentError(did, "doc_id", "empty document id")
    if not doc.text or not doc.text.strip():
        raise DocumentError(did, "text", "empty text")
    n = len(doc.text)
    seen: set[str] = set()
    for i, ent in enumerate(doc.entities):
        where = f"entities[{i}]"
        if ent.id in seen:
            raise DocumentError(did, f"{where}.id", f"duplicate entity id {ent.id!r}")
        seen.add(ent.id)
        if not ent.mentions:
            raise DocumentError(did, f"{where}.mentions", f"entity {ent.id!r} has no mentions")
        for j, m in enumerate(ent.mentions):
            mw = f"{where}.mentions[{j}]"
            if m.start < 0 or m.end > n:
                raise DocumentError(
                    did, mw, f"offsets [{m.start}, {m.end}) outside the text (length {n})"
                )
            if m.end <= m.start:
                raise DocumentError(did, mw, f"empty or reversed span [{m.start}, {m.end})")
            if not doc.text[m.start : m.end].strip():
                raise DocumentError(did, mw, f"span [{m.start}, {m.end}) covers only whitespace")
            if doc.sentences is not None and m.sent_id is not None:
                if not 0 <= m.sent_id < len(doc.sentences):
                    raise DocumentError(did, f"{mw}.sent_id", f"no sentence {m.sent_id}")
    for i, rel in enumerate(doc.relations):
        for side in ("head", "tail"):
            if getattr(rel, side) not in seen:
                raise DocumentError(
                    did, f"relations[{i}].{side}", f"unknown entity id {getattr(rel, side)!r}"
                )
        if not rel.label:
            raise DocumentError(did, f"relations[{i}].label", "empty relation label")


def parse_document(raw: Any, fallback_id: str | None = None) -> Document:
    """Build a :class:`Document` from a plain mapping, turning pydantic errors into DocumentError.

    Accepts ``entities`` as a list of ``{"id", "type"?, "mentions": [{"start", "end"}]}``; an
    entity without ``id`` gets its list index. ``relations`` may use ``label`` or ``type``.
    """
    if not isinstance(raw, dict):
        raise DocumentError(fallback_id, "<root>", f"expected a JSON object, got {type(raw).__name__}")
    doc_id = raw.get("doc_id", fallback_id)
    if doc_id is None:
        raise DocumentError(fallback_id, "doc_id", "missing document id")
    data = dict(raw)
    data["doc_id"] = str(doc_id)
    if "text" not in data or data["text"] is None:
        raise DocumentError(str(doc_id), "text", "missing text")
    if not isinstance(data["text"], str):
        raise DocumentError(str(doc_id), "text", f"expected a string, got {type(data['text']).__name__}")
    ents = data.get("entities") or []
    if not isinstance(ents, list):
        raise DocumentError(str(doc_id), "entities", "expected a list")
    norm = []
    for i, e in enumerate(ents):
        if not isinstance(e, dict):
            raise DocumentError(str(doc_id), f"entities[{i}]", "expected an object")
        e = dict(e)
        e["id"] = str(e.get("id", i))
        if "mentions" not in e or e["mentions"] is None:
            raise DocumentError(str(doc_id), f"entities[{i}].mentions", f"entity {e['id']!r} has no mentions")
        norm.append(e)
    data["entities"] = norm
    rels = []
    for r in data.get("relations") or []:
        if isinstance(r, dict):
            r = dict(r)
            r.setdefault("label", r.get("type", r.get("relation")))
            r["head"], r["tail"] = str(r.get("head")), str(r.get("tail"))
        rels.append(r)
    data["relations"] = rels
    try:
        return Document.model_validate(data)
    except DocumentError:
        raise
    except ValidationError as exc:
        err = exc.errors()[0]
        # pydantic wraps errors raised in validators; unwrap ours.
        ctx_err = (err.get("ctx") or {}).get("error")
        if isinstance(ctx_err, DocumentError):
            raise ctx_err from None
        loc = ".".join(str(p) for p in err["loc"]) or "<root>"
        raise DocumentError(str(doc_id), loc, err["msg"]) from None
