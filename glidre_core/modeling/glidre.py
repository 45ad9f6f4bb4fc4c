"""GLiDRE: document-level relation extraction against relation labels given as strings.

Forward pass (``../shared/MODEL.md``): document encoder -> first-sub-word word vectors (projected
to D) -> mean mention / entity pooling -> entity attention from the last layer -> localized
context per pair -> FFN heads -> ``sigmoid(pair . label)``.

Public API, Hugging Face style: :meth:`GLiDRE.from_pretrained`, :meth:`GLiDRE.save_pretrained`,
:meth:`GLiDRE.encode_labels` (cache label embeddings once per label set),
:meth:`GLiDRE.predict_relations` and :meth:`GLiDRE.predict_documents`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from glidre_core.config import GLiDREConfig
from glidre_core.documents import Document, DocumentError, Entity, parse_document
from glidre_core.modeling.encoder import DocumentEncoder, EncodedDocument
from glidre_core.modeling.label_encoder import LabelEmbeddings, LabelEncoder
from glidre_core.modeling.losses import relation_loss
from glidre_core.modeling.pooling import pool_entities
from glidre_core.modeling.scorer import PairScorer, ordered_pairs
from glidre_core.modeling.windows import TokenizedDocument, tokenize_words
from glidre_core.pretrained import (
    encoder_fingerprint,
    load_encoder,
    load_tokenizer,
    resolve_encoder_path,
    weights_file,
)
from glidre_core.text import SpanAlignmentError, char_span_to_words, split_words

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "model.safetensors"
DEFAULT_MODEL_DIR = Path(__file__).resolve().parent.parent / "default_model"


@dataclass
class PreparedDocument:
    """A document turned into model inputs: words, sub-word windows, mention word spans."""

    doc: Document
    tokens: TokenizedDocument
    mention_spans: list[list[tuple[int, int]]]  # per entity, [w0, w1) word spans
    entity_ids: list[str]
    relations: list[tuple[int, str, int]] = field(default_factory=list)  # (head idx, label, tail idx)


def prepare_document(
    doc: Document,
    tokenizer,
    max_length: int,
    overlap: int,
    normalize_label: Callable[[str], str] | None = None,
) -> PreparedDocument:
    """Model inputs of ``doc`` without the model: the one implementation used by
    :meth:`GLiDRE.prepare` and by the CPU pre-processing tasks of the extraction job."""
    words = split_words(doc.text)
    if len(words) == 0:
        raise DocumentError(doc.doc_id, "text", "no words in the text")
    spans: list[list[tuple[int, int]]] = []
    for i, ent in enumerate(doc.entities):
        ent_spans = []
        for j, m in enumerate(ent.mentions):
            try:
                ent_spans.append(char_span_to_words(words, m.start, m.end, context=f"{doc.doc_id}: "))
            except SpanAlignmentError as exc:
                raise DocumentError(doc.doc_id, f"entities[{i}].mentions[{j}]", str(exc)) from None
        spans.append(ent_spans)
    norm = normalize_label or (lambda x: x)
    index = {e.id: i for i, e in enumerate(doc.entities)}
    rels = [(index[r.head], norm(r.label), index[r.tail]) for r in doc.relations]
    rels = [r for r in rels if r[0] != r[2]]
    tokens = tokenize_words(words.tokens, tokenizer, max_length, overlap)
    return PreparedDocument(doc, tokens, spans, [e.id for e in doc.entities], rels)


@dataclass
class DocumentScores:
    """Logits of every ordered entity pair against every label."""

    heads: torch.Tensor  # [P]
    tails: torch.Tensor  # [P]
    logits: torch.Tensor  # [P, R]
    threshold_logits: torch.Tensor | None  # [P] (adaptive threshold only)

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

    def score_encoded(
        self, prepared: PreparedDocument, encoded: EncodedDocument, labels: LabelEmbeddings
    ) -> DocumentScores:
        words = self.dropout(self.word_projection(encoded.word_vectors))
        device = words.device
        n = len(prepared.entity_ids)
        heads, tails = ordered_pairs(n, device)
        if n < 2:
            empty = words.new_zeros((0, len(labels)))
            return DocumentScores(heads, tails, empty, None)
        ents = pool_entities(encoded, words, prepared.mention_spans, self.config.pooling)
        pairs = self.scorer.pair_vectors(ents, heads, tails)
        logits = self.scorer.logits(pairs, labels.vectors)
        th = None
        if self.threshold_embedding is not None:
            th = pairs @ self.threshold_embedding.to(pairs.dtype)
        return DocumentScores(heads, tails, logits, th)

    def score_documents(
        self,
        prepared: list[PreparedDocument],
        labels: LabelEmbeddings,
        cached_lower: list[list[torch.Tensor]] | None = None,
    ) -> list[DocumentScores]:
        """Scores for several documents; ``cached_lower`` = cached frozen-layer states (training)."""
        toks = [p.tokens for p in prepared]
        if cached_lower is not None:
            encoded = self.encoder.encode_from_cache(toks, cached_lower, self.frozen_split)
        else:
            encoded = self.encoder.encode(toks)
        return [self.score_encoded(p, e, labels) for p, e in zip(prepared, encoded)]

    def targets(self, prepared: PreparedDocument, scores: DocumentScores, labels: LabelEmbeddings) -> torch.Tensor:
        n = len(prepared.entity_ids)
        label_index = {self.config.normalize_label(lab): i for i, lab in enumerate(labels.labels)}
        dense = torch.zeros((n, n, len(labels)), device=scores.logits.device)
        for h, lab, t in prepared.relations:
            if lab in label_index:
                dense[h, t, label_index[lab]] = 1.0
        return dense[scores.heads, scores.tails]

    def loss(self, prepared: list[PreparedDocument], labels: LabelEmbeddings, cached_lower=None) -> torch.Tensor:
        """Mean over documents of the configured relation loss."""
        total = []
        for p, s in zip(prepared, self.score_documents(prepared, labels, cached_lower)):
            if s.logits.shape[0] == 0:
                continue
            total.append(
                relation_loss(
                    self.config.loss, s.logits, self.targets(p, s, labels),
                    alpha=self.config.focal_alpha, gamma=self.config.focal_gamma,
                    threshold_logits=s.threshold_logits,
                )
            )
        if not total:
            return sum(p.sum() * 0 for p in self.head_parameters())
        return torch.stack(total).mean()

    # -- inference -----------------------------------------------------------------------------
    def _label_embeddings(self, labels: Sequence[str] | LabelEmbeddings | None) -> LabelEmbeddings:
        if isinstance(labels, LabelEmbeddings):
            return labels
        if labels is None:
            if not self.config.labels:
                raise ValueError("no relation labels given and the model stores none")
            labels = self.config.labels
        with torch.no_grad():
            return self.encode_labels(list(labels))

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
        base = self.config.threshold
        if threshold is None or isinstance(threshold, (int, float)):
            value = base if threshold is None else float(threshold)
            return torch.full((len(labels),), value)
        return torch.tensor([float(threshold.get(lab, base)) for lab in labels.labels])

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

    def load_weights(self, path: str | Path) -> None:
        """Load a ``save_pretrained`` weights file strictly: no unexpected tensor, no wrong shape,
        and every tensor not stored must belong to a named (pip/local) base encoder."""
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
        missing = sorted(k for k in own if k not in stored and k not in base_ok)
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
