"""Document encoder: word vectors and word-level last-layer attention for a padded batch.

Two things the reference implementation got wrong are handled here:

* ``output_attentions=True`` forces eager attention in *every* layer, although only the last
  layer's attention is used. For BERT-family encoders we run the layers ourselves with the fast
  (SDPA) kernels, the last layer included, and compute its attention probabilities only where
  they are used: the rows of the words' first sub-words, from the Q/K projections the layer
  computes anyway. Other architectures fall back to the eager path, which is correct but slower.
* Long documents are encoded in overlapping windows (:mod:`.windows`) instead of being truncated.

Everything is batched (:mod:`.batch` builds the index tensors on the CPU): all windows of all
documents go through the transformer together, and the word vectors and the ``[B, W, W]``
word-level attention of every document come out of one gather and one scatter-add. Nothing here
reads a value back to the host, so on a GPU the encoder stage is a fixed sequence of kernels.

The encoder can also be split at a layer boundary so that frozen lower layers are computed once
and cached during training (:meth:`DocumentEncoder.lower`; the batch then carries
``lower_states``).
"""

from __future__ import annotations

import contextlib
import logging

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.pytorch_utils import apply_chunking_to_forward

from glidre_core.modeling.batch import ModelBatch
from glidre_core.modeling.windows import TokenizedDocument, tokenize_words

logger = logging.getLogger(__name__)

#: SDPA backends a caller may pin on CUDA (``auto`` lets PyTorch choose per call)
SDPA_BACKENDS = ("auto", "pytorch", "efficient", "flash", "cudnn", "math")


def sdpa_context(backend: str, device: torch.device) -> contextlib.AbstractContextManager:
    """A context that restricts SDPA to ``backend`` (CUDA only; elsewhere a no-op). ``auto`` is
    memory-efficient attention: flash attention takes no padding mask, and cuDNN attention builds
    an execution plan per new shape (60 ms of CPU per call measured on an H200, see issue 10).

    Why a choice at all: PyTorch's default order may pick cuDNN attention, which builds an
    execution plan per new input shape (the issue behind length bucketing);
    ``benchmarks/model_benchmark.py --sdpa-backends`` measures the backends against each other.
    """
    if backend == "pytorch" or device.type != "cuda":
        return contextlib.nullcontext()
    backend = "efficient" if backend == "auto" else backend
    from torch.nn.attention import SDPBackend, sdpa_kernel

    chosen = {
        "efficient": SDPBackend.EFFICIENT_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
        "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH,
    }
    if backend not in chosen:
        raise ValueError(f"unknown SDPA backend {backend!r}; expected one of {', '.join(SDPA_BACKENDS)}")
    # the math kernel stays allowed as the fallback for inputs the chosen kernel rejects
    return sdpa_kernel([chosen[backend], SDPBackend.MATH])


def is_bert_like(model: PreTrainedModel) -> bool:
    try:
        last = model.encoder.layer[-1].attention.self
        return hasattr(model, "embeddings") and hasattr(last, "query") and hasattr(last, "key")
    except AttributeError:
        return False


class DocumentEncoder(nn.Module):
    """Wraps an HF encoder: a :class:`ModelBatch` in, word vectors and word attention out."""

    def __init__(
        self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_length: int, overlap: int
    ):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        limit = getattr(model.config, "max_position_embeddings", max_length)
        self.max_length = min(max_length, limit)
        self.overlap = overlap
        self.bert_like = is_bert_like(model)
        if not self.bert_like:
            # SDPA returns no attention probabilities: the fallback needs eager attention.
            if hasattr(model, "set_attn_implementation"):
                model.set_attn_implementation("eager")
            else:
                model.config._attn_implementation = "eager"
            logger.warning(
                "%s is not BERT-like: falling back to eager attention in all layers (slower)",
                type(model).__name__,
            )

    @property
    def layered(self) -> bool:
        """Whether the encoder exposes ``embeddings`` and ``encoder.layer`` (BERT, MPNet, ...), so
        its embeddings and lower layers can be frozen. Layer *caching* and the hand-run last
        layer need more (:attr:`bert_like`)."""
        m = self.model
        return hasattr(m, "embeddings") and hasattr(getattr(m, "encoder", None), "layer")

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def special_ids(self) -> tuple[int, int, int]:
        """(cls, sep, pad) token ids, for :func:`glidre_core.modeling.batch.collate`."""
        t = self.tokenizer
        return t.cls_token_id, t.sep_token_id, t.pad_token_id or 0

    def tokenize(self, words: list[str]) -> TokenizedDocument:
        return tokenize_words(words, self.tokenizer, self.max_length, self.overlap)

    # -- running the transformer ------------------------------------------------------------
    def _layers(self, hidden: torch.Tensor, mask4d: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        for layer in self.model.encoder.layer[start:stop]:
            hidden = layer(hidden, mask4d)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return hidden

    @staticmethod
    def _mask4d(key_mask: torch.Tensor) -> torch.Tensor:
        """``[K, 1, 1, L]`` boolean key mask (True = attend), the form SDPA takes; built without
        the HF helper, which checks on the host whether anything is padded."""
        return key_mask[:, None, None, :]

    def _qkv(self, attn: nn.Module, hidden_in: torch.Tensor, with_value: bool):
        b, length, _ = hidden_in.shape
        heads, dim = attn.num_attention_heads, attn.attention_head_size
        proj = [attn.query, attn.key] + ([attn.value] if with_value else [])
        return [p(hidden_in).view(b, length, heads, dim).transpose(1, 2) for p in proj]

    @staticmethod
    def _attention_rows(
        q: torch.Tensor, k: torch.Tensor, key_mask: torch.Tensor, rows: torch.Tensor, scale: float
    ) -> torch.Tensor:
        """Head-averaged attention probabilities ``[K, R, L]`` of the query positions ``rows``
        (``[K, R]``) over each window's real tokens (padded keys get probability 0, exactly as
        in the layer itself). ``q``/``k``: ``[K, heads, L, d]``."""
        idx = rows[:, None, :, None].expand(-1, q.shape[1], -1, q.shape[-1])
        scores = torch.matmul(q.gather(2, idx), k.transpose(-1, -2)).float()  # [K, h, R, L]
        scores = scores.mul_(scale).masked_fill_(~key_mask[:, None, None, :], float("-inf"))
        return scores.softmax(-1).mean(1)

    def _last_layer(
        self, hidden_in: torch.Tensor, key_mask: torch.Tensor, mask4d: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer run by hand: (hidden, attention rows).

        The same function as the HF layer (SDPA with the same mask, scale and dropout), with the
        Q/K projections shared between SDPA and :meth:`_attention_rows`, so the attention costs
        only the extra rows-by-keys products and softmax.
        """
        layer = self.model.encoder.layer[-1]
        attn = layer.attention.self
        b, length, _ = hidden_in.shape
        q, k, v = self._qkv(attn, hidden_in, with_value=True)
        scale = attn.attention_head_size**-0.5
        dropout = attn.dropout.p if self.training else 0.0
        context = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask4d, dropout_p=dropout, scale=scale)
        context = context.transpose(1, 2).reshape(b, length, attn.all_head_size)
        out = layer.attention.output(context, hidden_in)
        out = apply_chunking_to_forward(layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, out)
        return out, self._attention_rows(q, k, key_mask, rows, scale)

    def _hand_last_layer(self) -> bool:
        """Whether the last layer has the plain BERT structure :meth:`_last_layer` reproduces."""
        layer = self.model.encoder.layer[-1]
        return (
            not getattr(layer, "is_decoder", False)
            and all(hasattr(layer, a) for a in ("feed_forward_chunk", "chunk_size_feed_forward", "seq_len_dim"))
            and hasattr(layer.attention, "output")
            and hasattr(layer.attention.self, "value")
            and getattr(layer.attention.self, "position_embedding_type", "absolute") == "absolute"
        )

    def lower(self, batch: ModelBatch, split: int) -> torch.Tensor:
        """Hidden states ``[K, L, H]`` of the batch's windows after layer ``split`` (caching)."""
        if not self.bert_like:
            raise ValueError("layer caching needs a BERT-like encoder")
        hidden = self.model.embeddings(input_ids=batch.input_ids)
        return self._layers(hidden, self._mask4d(batch.key_mask), 0, split)

    def windows(self, batch: ModelBatch, split: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Run the transformer over the batch's windows: ``(hidden [K, L, H], rows [K, R, L])``,
        ``rows`` being the attention rows of ``batch.row_positions``. ``split`` > 0 starts from
        ``batch.lower_states`` (the cached output of layer ``split``)."""
        key_mask = batch.key_mask
        if not self.bert_like:
            out = self.model(input_ids=batch.input_ids, attention_mask=key_mask.long(), output_attentions=True)
            full = out.attentions[-1].float().mean(1)  # [K, L, L]
            idx = batch.row_positions[:, :, None].expand(-1, -1, full.shape[-1])
            return out.last_hidden_state, full.gather(1, idx)
        if split > 0:
            if batch.lower_states is None:
                raise ValueError("split > 0 needs the batch's cached lower-layer states")
            hidden = batch.lower_states.to(next(self.model.parameters()).dtype)
        else:
            hidden = self.model.embeddings(input_ids=batch.input_ids)
        n = self.num_layers
        mask4d = self._mask4d(key_mask)
        if split < n - 1:
            hidden = self._layers(hidden, mask4d, split, n - 1)
        if self._hand_last_layer():
            return self._last_layer(hidden, key_mask, mask4d, batch.row_positions)
        attn = self.model.encoder.layer[-1].attention.self
        q, k = self._qkv(attn, hidden, with_value=False)
        rows = self._attention_rows(q, k, key_mask, batch.row_positions, attn.attention_head_size**-0.5)
        return self._layers(hidden, mask4d, n - 1, n), rows

    @staticmethod
    def stitch(batch: ModelBatch, hidden: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Word vectors ``[B, W, H]`` and word attention ``[B, W, W]`` of the documents from
        their windows' outputs.

        A word's vector is its first sub-word's state in the window that owns it. Its attention
        row is that sub-word's row, with columns summed over each word's sub-words (mass
        preserving) and special tokens dropped; columns outside the owning window are 0. One
        gather and one scatter-add for the whole batch.
        """
        bsz, wmax = batch.size, batch.max_words
        words = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch.word_source)
        words = words.view(bsz, wmax, -1) * batch.word_mask.unsqueeze(-1).to(hidden.dtype)
        width = wmax + 1
        flat = (batch.row_target.unsqueeze(-1) * width + batch.col_target.unsqueeze(1)).reshape(-1)
        att = rows.new_zeros(((bsz * wmax + 1) * width,))
        att = att.index_add(0, flat, rows.reshape(-1))
        att = att.view(bsz * wmax + 1, width)[: bsz * wmax, :wmax].reshape(bsz, wmax, wmax)
        return words, att

    def forward(self, batch: ModelBatch, split: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """``(word vectors [B, W, H], word attention [B, W, W])`` of the batch's documents."""
        hidden, rows = self.windows(batch, split)
        return self.stitch(batch, hidden, rows)
