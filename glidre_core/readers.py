"""Readers that turn benchmark and corpus formats into :class:`~glidre_core.documents.Document`.

Pre-tokenised formats (DocRED, GLiDRE JSON, CoNLL04) are converted to text by joining tokens with
single spaces; their token offsets become character offsets. Relation ids are mapped to
human-readable names (DocRED ``P17`` -> ``country`` via ``rel_info.json``) because GLiDRE scores
relation *strings*.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, Literal

from glidre_core.documents import Document, DocumentError, parse_document
from glidre_core.text import join_tokens

logger = logging.getLogger(__name__)

FORMATS = ("docred", "glidre", "conll04", "jsonl")
Format = Literal["docred", "glidre", "conll04", "jsonl"]
OnError = Literal["raise", "skip"]

DATA_DIR = Path(__file__).resolve().parent / "resources"


def load_rel_info(path: str | Path | None = None) -> dict[str, str]:
    """The DocRED P-id -> relation name map (the copy shipped with the package by default)."""
    path = Path(path) if path else DATA_DIR / "rel_info.json"
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _load_json_array(path: Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON array of documents")
    return data


def _collect(docs: Iterable[tuple[str, Any]], build, on_error: OnError) -> list[Document]:
    out, seen = [], set()
    for fallback_id, raw in docs:
        try:
            doc = build(raw, fallback_id)
            if doc.doc_id in seen:
                raise DocumentError(doc.doc_id, "doc_id", "duplicate document id in the input")
            seen.add(doc.doc_id)
            out.append(doc)
        except DocumentError as exc:
            if on_error == "raise":
                raise
            logger.warning("skipping %s", exc)
    return out


def docred_to_document(raw: dict, fallback_id: str, rel_info: dict[str, str]) -> Document:
    """One DocRED / Re-DocRED record -> Document (title kept, sentence ids kept, P-ids named)."""
    if not isinstance(raw, dict) or "sents" not in raw or "vertexSet" not in raw:
        raise DocumentError(fallback_id, "<root>", "not a DocRED record (needs 'sents' and 'vertexSet')")
    title = raw.get("title")
    doc_id = str(title) if title else fallback_id
    flat: list[str] = []
    sent_offsets: list[int] = []
    for sent in raw["sents"]:
        sent_offsets.append(len(flat))
        flat.extend(sent)
    text, starts, ends = join_tokens(flat)
    sentences = []
    for i, off in enumerate(sent_offsets):
        n = len(raw["sents"][i])
        if n:
            sentences.append((starts[off], ends[off + n - 1]))
        else:
            sentences.append((starts[off] if off < len(starts) else len(text),) * 2)
    entities = []
    for ei, cluster in enumerate(raw["vertexSet"]):
        mentions = []
        for mi, m in enumerate(cluster):
            try:
                s = sent_offsets[m["sent_id"]] + m["pos"][0]
                e = sent_offsets[m["sent_id"]] + m["pos"][1] - 1
                mentions.append({"start": starts[s], "end": ends[e], "sent_id": m["sent_id"], "name": m.get("name")})
            except (IndexError, KeyError, TypeError) as exc:
                raise DocumentError(doc_id, f"vertexSet[{ei}][{mi}].pos", f"bad mention position: {exc!r}") from None
        etype = cluster[0].get("type") if cluster else None
        entities.append({"id": str(ei), "type": etype, "mentions": mentions})
    relations = []
    for li, lab in enumerate(raw.get("labels") or []):
        r = lab["r"]
        if r not in rel_info:
            raise DocumentError(doc_id, f"labels[{li}].r", f"relation id {r!r} not in rel_info")
        relations.append({"head": str(lab["h"]), "label": rel_info[r], "tail": str(lab["t"])})
    return parse_document(
        {"doc_id": doc_id, "title": title, "text": text, "entities": entities,
         "relations": relations, "sentences": sentences},
        fallback_id,
    )


def glidre_to_document(raw: dict, fallback_id: str) -> Document:
    """GLiDRE authors' format: ``tokenized_text``, ``mentions`` (inclusive word ``end``), ``relations``."""
    if not isinstance(raw, dict) or "tokenized_text" not in raw:
        raise DocumentError(fallback_id, "<root>", "not a GLiDRE record (needs 'tokenized_text')")
    doc_id = str(raw.get("id", fallback_id))
    text, starts, ends = join_tokens(raw["tokenized_text"])
    entities = []
    for ei, ent in enumerate(raw.get("mentions") or []):
        mentions = []
        for mi, m in enumerate(ent.get("mentions") or []):
            try:
                mentions.append({"start": starts[m["start"]], "end": ends[m["end"]], "name": m.get("value")})
            except (IndexError, KeyError, TypeError) as exc:
                raise DocumentError(doc_id, f"mentions[{ei}].mentions[{mi}]", f"bad word offsets: {exc!r}") from None
        entities.append({"id": str(ent.get("id", ei)), "type": ent.get("type"), "mentions": mentions})
    relations = []
    for ri, rel in enumerate(raw.get("relations") or []):
        if not isinstance(rel, (list, tuple)) or len(rel) != 3:
            raise DocumentError(doc_id, f"relations[{ri}]", "expected [head, label, tail]")
        relations.append({"head": str(rel[0]), "label": str(rel[1]), "tail": str(rel[2])})
    return parse_document({"doc_id": doc_id, "text": text, "entities": entities, "relations": relations}, fallback_id)


def conll04_to_document(raw: dict, fallback_id: str) -> Document:
    """CoNLL04 (TablERT/SpERT split) with BILOU tags; ``head``/``tail`` index entities in tag order."""
    if not isinstance(raw, dict) or "tokens" not in raw or "tags" not in raw:
        raise DocumentError(fallback_id, "<root>", "not a CoNLL04 record (needs 'tokens' and 'tags')")
    doc_id = str(raw.get("orig_id", fallback_id))
    tokens, tags = raw["tokens"], raw["tags"]
    if len(tokens) != len(tags):
        raise DocumentError(doc_id, "tags", f"{len(tags)} tags for {len(tokens)} tokens")
    text, starts, ends = join_tokens(tokens)
    spans: list[tuple[int, int, str]] = []
    open_start, open_type = None, None
    for i, tag in enumerate(tags):
        prefix, _, etype = tag.partition("-")
        # An unclosed B would be silently dropped and shift the entity indices relations use.
        if open_start is not None and (prefix in ("B", "U", "O") or (prefix == "I" and etype != open_type)):
            raise DocumentError(doc_id, f"tags[{i}]", f"tag {tag!r} inside the open {open_type!r} span")
        if prefix == "I" and open_start is None:
            raise DocumentError(doc_id, f"tags[{i}]", f"'I' tag {tag!r} without a matching 'B'")
        if prefix == "U":
            spans.append((i, i, etype))
        elif prefix == "B":
            open_start, open_type = i, etype
        elif prefix == "L":
            if open_start is None or open_type != etype:
                raise DocumentError(doc_id, f"tags[{i}]", f"'L' tag {tag!r} without a matching 'B'")
            spans.append((open_start, i, etype))
            open_start, open_type = None, None
        elif prefix not in ("I", "O"):
            raise DocumentError(doc_id, f"tags[{i}]", f"unknown tag {tag!r}")
    if open_start is not None:
        raise DocumentError(doc_id, f"tags[{open_start}]", f"'B' tag of {open_type!r} never closed by 'L'")
    entities = [
        {"id": str(k), "type": t, "mentions": [{"start": starts[a], "end": ends[b]}]}
        for k, (a, b, t) in enumerate(spans)
    ]
    relations = [
        {"head": str(r["head"]), "label": r["type"], "tail": str(r["tail"])}
        for r in raw.get("relations") or []
    ]
    return parse_document({"doc_id": doc_id, "text": text, "entities": entities, "relations": relations}, fallback_id)


def iter_jsonl_records(path: str | Path) -> Iterator[tuple[str, Any]]:
    """Yield ``(fallback_id, record)``; a line that is not JSON yields a DocumentError instead."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            fid = f"{Path(path).name}:{lineno}"
            try:
                yield fid, json.loads(line)
            except json.JSONDecodeError as exc:
                yield fid, DocumentError(fid, "<line>", f"not valid JSON: {exc.msg}")


def _jsonl_build(raw: Any, fallback_id: str) -> Document:
    if isinstance(raw, DocumentError):
        raise raw
    return parse_document(raw, fallback_id)


def read_documents(
    path: str | Path,
    format: Format,
    *,
    rel_info: str | Path | dict[str, str] | None = None,
    on_error: OnError = "raise",
    limit: int | None = None,
) -> list[Document]:
    """Read a file of documents in one of :data:`FORMATS`.

    ``on_error="skip"`` logs and drops invalid documents (training data); the default raises the
    first :class:`DocumentError`, which names the document and field.
    """
    path = Path(path)
    if format not in FORMATS:
        raise ValueError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    if not path.exists():
        raise FileNotFoundError(f"no such data file: {path}")
    if format == "jsonl":
        records: Iterable[tuple[str, Any]] = iter_jsonl_records(path)
        build = _jsonl_build
    else:
        data = _load_json_array(path)
        records = ((f"{path.name}[{i}]", r) for i, r in enumerate(data))
        if format == "docred":
            info = rel_info if isinstance(rel_info, dict) else load_rel_info(rel_info)
            build = lambda raw, fid: docred_to_document(raw, fid, info)  # noqa: E731
        elif format == "glidre":
            build = glidre_to_document
        else:
            build = conll04_to_document
    if limit is not None:
        records = (r for i, r in zip(range(limit), records))
    return _collect(records, build, on_error)


def relation_labels(docs: Iterable[Document]) -> list[str]:
    """Sorted set of relation labels used by ``docs``."""
    return sorted({r.label for d in docs for r in d.relations})
