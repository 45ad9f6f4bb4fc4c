"""Frozen encoder work computed once per document and reused by every training step.

Why: with the lower encoder layers frozen (or the whole encoder), their output for a document
never changes during training, and on a small machine they are most of a step's cost. The cache
holds, per document, either the states after the last frozen layer of every window
(``mode="lower"``) or, when the whole document encoder is frozen, the encoder's word vectors and
word attention (``mode="encoded"``). :meth:`EncoderCache.attach` pads a batch's entries into the
batch, so the model's forward pass is the same code with or without a cache.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import TYPE_CHECKING, Literal, Mapping

import torch
from torch.nn import functional as F

from glidre_core.modeling.batch import ModelBatch
from glidre_core.preparation import PreparedDocument

if TYPE_CHECKING:
    from glidre_core.modeling.glidre import GLiDRE

logger = logging.getLogger(__name__)


class EncoderCache:
    def __init__(
        self, model: "GLiDRE", prepared: Mapping[str, PreparedDocument], mode: Literal["lower", "encoded"],
        batch_size: int = 8,
    ):
        if mode not in ("lower", "encoded"):
            raise ValueError(f"unknown cache mode {mode!r}")
        self.mode = mode
        self.split = model.frozen_split
        self.entries: dict[str, list[torch.Tensor] | tuple[torch.Tensor, torch.Tensor]] = {}
        start = time.perf_counter()
        was = model.training
        model.eval()
        items = sorted(prepared.items(), key=lambda kv: kv[1].tokens.num_words)
        try:
            with torch.no_grad():
                for s in range(0, len(items), batch_size):
                    chunk = items[s : s + batch_size]
                    batch, _ = model.collate([p for _, p in chunk])
                    if mode == "lower":
                        states = model.encoder.lower(batch, self.split)
                        per_doc: dict[int, list[torch.Tensor]] = {}
                        for k, (b, n) in enumerate(zip(batch.window_doc, batch.window_lengths)):
                            per_doc.setdefault(b, []).append(states[k, :n].clone())
                        for b, (doc_id, _) in enumerate(chunk):
                            self.entries[doc_id] = per_doc[b]
                    else:
                        words, att = model.encoder(batch)
                        for b, (doc_id, p) in enumerate(chunk):
                            n = batch.num_words[b]
                            self.entries[doc_id] = (words[b, :n].clone(), att[b, :n, :n].clone())
        finally:
            model.train(was)
        logger.info("cached %s encoder states for %d docs in %.1fs", mode, len(self.entries), time.perf_counter() - start)

    def attach(self, batch: ModelBatch) -> ModelBatch:
        """``batch`` with its documents' cached states padded in (``lower_states`` or
        ``encoded``); the model then skips the cached part of the encoder."""
        ids = [p.doc.doc_id for p in batch.documents]
        missing = [i for i in ids if i not in self.entries]
        if missing:
            raise KeyError(f"documents not in the encoder cache: {missing[:5]}")
        if self.mode == "lower":
            length = batch.window_length
            windows = [w for i in ids for w in self.entries[i]]
            states = torch.stack([F.pad(w, (0, 0, 0, length - w.shape[0])) for w in windows])
            return dataclasses.replace(batch, lower_states=states)
        wmax = batch.max_words
        words = torch.stack([F.pad(self.entries[i][0], (0, 0, 0, wmax - self.entries[i][0].shape[0])) for i in ids])
        att = torch.stack([
            F.pad(self.entries[i][1], (0, wmax - self.entries[i][1].shape[1], 0, wmax - self.entries[i][1].shape[0]))
            for i in ids
        ])
        return dataclasses.replace(batch, encoded=(words, att))
