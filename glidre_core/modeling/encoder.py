"""Document encoder: word vectors and word-level last-layer attention for whole documents.

Two things the reference implementation got wrong are handled here:

* ``output_attentions=True`` forces eager attention in *every* layer, although only the last
  layer's attention is used. For BERT-family encoders we run the layers ourselves with the fast
  (SDPA) kernels and recompute only the last layer's attention probabilities from that layer's
  input (one extra Q/K projection and one L x L softmax). Other architectures fall back to the
  eager path, which is correct but slower.
* Long documents are encoded in overlapping windows (:mod:`.windows`) instead of being truncated.

The encoder can also be split at a layer boundary so that frozen lower layers are computed once
and cached during training (:meth:`DocumentEncoder.lower`, :meth:`DocumentEncoder.upper`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.masking_utils import create_bidirectional_mask
from transformers.pytorch_utils import apply_chunking_to_forward

from glidre_core.modeling.windows import TokenizedDocument, tokenize_words

logger = logging.getLogger(__name__)


@dataclass
class AttentionBlock:
    """Word-level attention rows of the words a window owns.

    ``rows[i]`` is the attention of word ``row_words[i]`` over words ``[col_start, col_end)``.
    """

    row_words: torch.Tensor  # [R] long, document word indices
    col_start: int
    col_end: int
    rows: torch.Tensor  # [R, col_end - col_start]


@dataclass
class EncodedDocument:
    word_vectors: torch.Tensor  # [W, H] first-sub-word states
    attention: list[AttentionBlock]


def is_bert_like(model: PreTrainedModel) -> bool:
    try:
        last = model.encoder.layer[-1].attention.self
        return hasattr(model, "embeddings") and hasattr(last, "query") and hasattr(last, "key")
    except AttributeError:
        return False


class DocumentEncoder(nn.Module):
    """Wraps an HF encoder: windows in, word vectors and word-level attention out."""

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
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def num_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def tokenize(self, words: list[str]) -> TokenizedDocument:
        return tokenize_words(words, self.tokenizer, self.max_length, self.overlap)

    def window_ids(self, doc: TokenizedDocument) -> list[list[int]]:
        cls, sep = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        return [[cls, *doc.token_ids[w.tok_start : w.tok_end], sep] for w in doc.windows]

    # -- running the transformer ------------------------------------------------------------
    def _pad(self, windows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        device = next(self.model.parameters()).device
        length = max(len(w) for w in windows)
        ids = torch.full((len(windows), length), self.tokenizer.pad_token_id or 0, dtype=torch.long)
        mask = torch.zeros((len(windows), length), dtype=torch.long)
        for i, w in enumerate(windows):
            ids[i, : len(w)] = torch.tensor(w)
            mask[i, : len(w)] = 1
        return ids.to(device), mask.to(device)

    def _layers(self, hidden: torch.Tensor, mask2d: torch.Tensor, start: int, stop: int) -> torch.Tensor:
        mask = create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask2d)
        for layer in self.model.encoder.layer[start:stop]:
            hidden = layer(hidden, mask)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return hidden

    def _last_attention(self, hidden_in: torch.Tensor, mask2d: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention probabilities of the last layer, from that layer's input."""
        attn = self.model.encoder.layer[-1].attention.self
        b, length, _ = hidden_in.shape
        heads, dim = attn.num_attention_heads, attn.attention_head_size
        q = attn.query(hidden_in).view(b, length, heads, dim).transpose(1, 2)
        k = attn.key(hidden_in).view(b, length, heads, dim).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (dim**-0.5)
        scores = scores.float().masked_fill(~mask2d.bool()[:, None, None, :], float("-inf"))
        return scores.softmax(-1).mean(1)

    def _last_layer(self, hidden_in: torch.Tensor, mask2d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The last layer run by hand, reusing its attention probabilities: (hidden, attention).

        Same function as ``_last_attention`` followed by the HF layer, but Q/K are projected and
        the L x L softmax is computed once (the probabilities feed both the word-level attention
        and ``probs @ V``) instead of once here and again inside SDPA.
        """
        layer = self.model.encoder.layer[-1]
        attn = layer.attention.self
        b, length, _ = hidden_in.shape
        heads, dim = attn.num_attention_heads, attn.attention_head_size
        q = attn.query(hidden_in).view(b, length, heads, dim).transpose(1, 2)
        k = attn.key(hidden_in).view(b, length, heads, dim).transpose(1, 2)
        v = attn.value(hidden_in).view(b, length, heads, dim).transpose(1, 2)
        # in place where autograd allows: one [B, heads, L, L] buffer fewer at peak
        scores = torch.matmul(q, k.transpose(-1, -2)).mul_(dim**-0.5)
        scores = scores.float().masked_fill_(~mask2d.bool()[:, None, None, :], float("-inf"))
        probs = scores.softmax(-1)
        del scores
        weights = nn.functional.dropout(probs, attn.dropout.p, self.training).to(v.dtype)
        context = torch.matmul(weights, v).transpose(1, 2).reshape(b, length, heads * dim)
        out = layer.attention.output(context, hidden_in)
        out = apply_chunking_to_forward(layer.feed_forward_chunk, layer.chunk_size_feed_forward, layer.seq_len_dim, out)
        return out, probs.mean(1)

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

    def lower(self, windows: list[list[int]], split: int) -> list[torch.Tensor]:
        """Hidden states after layer ``split`` for each window (unpadded), for caching."""
        if not self.bert_like:
            raise ValueError("layer caching needs a BERT-like encoder")
        ids, mask = self._pad(windows)
        hidden = self.model.embeddings(input_ids=ids)
        hidden = self._layers(hidden, mask, 0, split)
        return [hidden[i, : len(w)] for i, w in enumerate(windows)]

    def upper(
        self, lower_states: list[torch.Tensor], split: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Run layers ``split..`` on cached states; returns (hidden, attention, mask)."""
        length = max(s.shape[0] for s in lower_states)
        dtype = next(self.model.parameters()).dtype
        hidden = lower_states[0].new_zeros((len(lower_states), length, lower_states[0].shape[-1]), dtype=dtype)
        mask = torch.zeros((len(lower_states), length), dtype=torch.long, device=hidden.device)
        for i, s in enumerate(lower_states):
            hidden[i, : s.shape[0]] = s.to(dtype)
            mask[i, : s.shape[0]] = 1
        return self._run_from(hidden, mask, split)

    def _run_from(self, hidden: torch.Tensor, mask: torch.Tensor, split: int):
        n = self.num_layers
        if split < n - 1:
            hidden = self._layers(hidden, mask, split, n - 1)
        if self._hand_last_layer():
            hidden, attention = self._last_layer(hidden, mask)
            return hidden, attention, mask
        attention = self._last_attention(hidden, mask)
        hidden = self._layers(hidden, mask, n - 1, n)
        return hidden, attention, mask

    def forward_windows(self, windows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Encode windows (lists of ids with specials): (hidden [B,L,H], attention [B,L,L], mask)."""
        ids, mask = self._pad(windows)
        if self.bert_like:
            hidden = self.model.embeddings(input_ids=ids)
            return self._run_from(hidden, mask, 0)
        out = self.model(input_ids=ids, attention_mask=mask, output_attentions=True)
        return out.last_hidden_state, out.attentions[-1].float().mean(1), mask

    # -- from windows back to the document -------------------------------------------------
    def stitch(
        self, doc: TokenizedDocument, hidden: torch.Tensor, attention: torch.Tensor
    ) -> EncodedDocument:
        """Word vectors and attention blocks of one document from its windows' outputs.

        ``hidden``/``attention`` are this document's windows (in order), with specials at
        position 0 and ``len+1``. Attention columns are summed over a word's sub-words (mass
        preserving); rows are the word's first sub-word; special-token columns are dropped.
        """
        first = torch.tensor(doc.word_first_token, device=hidden.device)
        num_words = doc.num_words
        word_vectors = hidden.new_zeros((num_words, hidden.shape[-1]))
        blocks = []
        token_word = torch.empty(len(doc.token_ids), dtype=torch.long)
        for w in range(num_words):
            token_word[doc.word_first_token[w] : doc.word_token_end[w]] = w
        token_word = token_word.to(hidden.device)
        for k, win in enumerate(doc.windows):
            owned = ((first >= win.own_start) & (first < win.own_end)).nonzero().squeeze(-1)
            if owned.numel() == 0:
                continue
            pos = first[owned] - win.tok_start + 1
            word_vectors = word_vectors.index_copy(0, owned, hidden[k, pos])
            # columns: words whose sub-words lie in this window
            tw = token_word[win.tok_start : win.tok_end]
            col_start, col_end = int(tw.min()), int(tw.max()) + 1
            t_attn = attention[k, pos][:, 1 : 1 + (win.tok_end - win.tok_start)]  # [R, T]
            rows = t_attn.new_zeros((owned.numel(), col_end - col_start))
            rows = rows.index_add(1, tw - col_start, t_attn)
            blocks.append(AttentionBlock(owned, col_start, col_end, rows))
        return EncodedDocument(word_vectors, blocks)

    def encode(self, docs: list[TokenizedDocument]) -> list[EncodedDocument]:
        """Encode several documents, batching all their windows through the transformer."""
        windows, owners = [], []
        for i, d in enumerate(docs):
            for w in self.window_ids(d):
                windows.append(w)
                owners.append(i)
        hidden, attention, _ = self.forward_windows(windows)
        return self._split_and_stitch(docs, owners, hidden, attention)

    def _split_and_stitch(self, docs, owners, hidden, attention) -> list[EncodedDocument]:
        out = []
        owners_t = torch.tensor(owners)
        for i, d in enumerate(docs):
            idx = (owners_t == i).nonzero().squeeze(-1).to(hidden.device)
            out.append(self.stitch(d, hidden.index_select(0, idx), attention.index_select(0, idx)))
        return out

    def encode_from_cache(
        self, docs: list[TokenizedDocument], cached: list[list[torch.Tensor]], split: int
    ) -> list[EncodedDocument]:
        """Like :meth:`encode`, starting from cached layer-``split`` states of each window."""
        states, owners = [], []
        for i, per_doc in enumerate(cached):
            states.extend(per_doc)
            owners.extend([i] * len(per_doc))
        hidden, attention, _ = self.upper(states, split)
        return self._split_and_stitch(docs, owners, hidden, attention)
