"""Document encoder: word vectors and word-level last-layer attention for whole documents.

Two things the reference implementation got wrong are handled here:

* ``output_attentions=True`` forces eager attention in *every* layer, although only the last
  layer's attention is used. For BERT-family encoders we run the layers ourselves with the fast
  (SDPA) kernels, the last layer included, and compute its attention probabilities only where
  they are used: the rows of the words' first sub-words, over the window's real (unpadded)
  tokens, from the Q/K projections the layer computes anyway. Other architectures fall back to
  the eager path, which is correct but slower.
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

    def _layers(self, hidden: torch.Tensor, mask4d, start: int, stop: int) -> torch.Tensor:
        for layer in self.model.encoder.layer[start:stop]:
            hidden = layer(hidden, mask4d)
            if isinstance(hidden, tuple):
                hidden = hidden[0]
        return hidden

    def _mask4d(self, hidden: torch.Tensor, mask2d: torch.Tensor):
        """The attention mask exactly as the HF layers build it (None when nothing is padded)."""
        return create_bidirectional_mask(config=self.model.config, inputs_embeds=hidden, attention_mask=mask2d)

    @staticmethod
    def _attention_rows(
        q: torch.Tensor, k: torch.Tensor, mask2d: torch.Tensor, rows: list[torch.Tensor], scale: float
    ) -> list[torch.Tensor]:
        """Head-averaged attention probabilities ``[R_i, n_i]`` of the query positions
        ``rows[i]`` of window ``i`` over its ``n_i`` real tokens (``q``/``k``: ``[B, heads, L, d]``).

        Padded keys would get probability 0 anyway, so dropping them is exact; restricting the
        queries to the rows that are used (first sub-words of owned words) and the keys to the
        real tokens avoids the ``L x L`` work of padding and of continuation sub-words.
        """
        lengths = mask2d.sum(-1).tolist()
        out = []
        for i, (pos, n) in enumerate(zip(rows, lengths)):
            scores = torch.matmul(q[i].index_select(1, pos), k[i, :, :n].transpose(-1, -2))
            out.append(scores.float().mul_(scale).softmax(-1).mean(0))
        return out

    def _qkv(self, attn: nn.Module, hidden_in: torch.Tensor, with_value: bool):
        b, length, _ = hidden_in.shape
        heads, dim = attn.num_attention_heads, attn.attention_head_size
        proj = [attn.query, attn.key] + ([attn.value] if with_value else [])
        return [p(hidden_in).view(b, length, heads, dim).transpose(1, 2) for p in proj]

    def _last_attention(
        self, hidden_in: torch.Tensor, mask2d: torch.Tensor, rows: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        """Attention rows of the last layer from that layer's input (layers :meth:`_last_layer`
        cannot reproduce: the HF layer then runs as is, and Q/K are projected once more)."""
        attn = self.model.encoder.layer[-1].attention.self
        q, k = self._qkv(attn, hidden_in, with_value=False)
        return self._attention_rows(q, k, mask2d, rows, attn.attention_head_size**-0.5)

    def _last_layer(
        self, hidden_in: torch.Tensor, mask2d: torch.Tensor, mask4d, rows: list[torch.Tensor]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
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
        return out, self._attention_rows(q, k, mask2d, rows, scale)

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
        hidden = self._layers(hidden, self._mask4d(hidden, mask), 0, split)
        return [hidden[i, : len(w)] for i, w in enumerate(windows)]

    def upper(
        self, lower_states: list[torch.Tensor], split: int, rows: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Run layers ``split..`` on cached states; returns (hidden, attention rows, mask)."""
        length = max(s.shape[0] for s in lower_states)
        dtype = next(self.model.parameters()).dtype
        hidden = lower_states[0].new_zeros((len(lower_states), length, lower_states[0].shape[-1]), dtype=dtype)
        mask = torch.zeros((len(lower_states), length), dtype=torch.long, device=hidden.device)
        for i, s in enumerate(lower_states):
            hidden[i, : s.shape[0]] = s.to(dtype)
            mask[i, : s.shape[0]] = 1
        return self._run_from(hidden, mask, split, rows)

    def _run_from(self, hidden: torch.Tensor, mask: torch.Tensor, split: int, rows: list[torch.Tensor] | None):
        if rows is None:
            rows = [torch.arange(int(n), device=hidden.device) for n in mask.sum(-1).tolist()]
        n = self.num_layers
        mask4d = self._mask4d(hidden, mask)
        if split < n - 1:
            hidden = self._layers(hidden, mask4d, split, n - 1)
        if self._hand_last_layer():
            hidden, attention = self._last_layer(hidden, mask, mask4d, rows)
            return hidden, attention, mask
        attention = self._last_attention(hidden, mask, rows)
        hidden = self._layers(hidden, mask4d, n - 1, n)
        return hidden, attention, mask

    def forward_windows(
        self, windows: list[list[int]], rows: list[torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """Encode windows (lists of ids with specials): ``(hidden [B, L, H], attention, mask)``.

        ``attention[i]`` holds the head-averaged last-layer attention of window ``i``'s query
        positions ``rows[i]`` (default: all of its tokens) over its real tokens: ``[R_i, n_i]``.
        """
        ids, mask = self._pad(windows)
        if self.bert_like:
            hidden = self.model.embeddings(input_ids=ids)
            return self._run_from(hidden, mask, 0, rows)
        out = self.model(input_ids=ids, attention_mask=mask, output_attentions=True)
        full = out.attentions[-1].float().mean(1)
        lengths = mask.sum(-1).tolist()
        if rows is None:
            rows = [torch.arange(int(n), device=full.device) for n in lengths]
        attention = [full[i].index_select(0, pos)[:, :n] for i, (pos, n) in enumerate(zip(rows, lengths))]
        return out.last_hidden_state, attention, mask

    # -- from windows back to the document -------------------------------------------------
    @staticmethod
    def owned_rows(doc: TokenizedDocument) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per window: the words it owns and their first sub-words' positions in the window
        (``[CLS]`` at position 0). Only these attention rows are ever used."""
        first = torch.tensor(doc.word_first_token)
        out = []
        for win in doc.windows:
            owned = ((first >= win.own_start) & (first < win.own_end)).nonzero().squeeze(-1)
            out.append((owned, first[owned] - win.tok_start + 1))
        return out

    @staticmethod
    def token_words(doc: TokenizedDocument) -> torch.Tensor:
        """The word of each sub-word. Words' sub-word ranges are contiguous and ordered; a word
        the tokenizer dropped shares its neighbour's sub-word, which then counts for the later
        word (``searchsorted(..., right=True)``)."""
        first = torch.tensor(doc.word_first_token)
        return torch.searchsorted(first, torch.arange(len(doc.token_ids)), right=True) - 1

    def stitch(
        self,
        doc: TokenizedDocument,
        hidden: torch.Tensor,
        attention: list[torch.Tensor],
        rows: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> EncodedDocument:
        """Word vectors and attention blocks of one document from its windows' outputs.

        ``hidden`` are this document's windows (in order), with specials at position 0 and
        ``len+1``; ``attention[k]`` the rows ``rows[k]`` (:meth:`owned_rows`) of window ``k``
        over its tokens. Attention columns are summed over a word's sub-words (mass
        preserving); rows are the word's first sub-word; special-token columns are dropped.
        """
        rows = rows if rows is not None else self.owned_rows(doc)
        device = hidden.device
        word_vectors = hidden.new_zeros((doc.num_words, hidden.shape[-1]))
        blocks = []
        token_word = self.token_words(doc).to(device)
        for k, (win, (owned, pos)) in enumerate(zip(doc.windows, rows)):
            if owned.numel() == 0:
                continue
            owned, pos = owned.to(device), pos.to(device)
            word_vectors = word_vectors.index_copy(0, owned, hidden[k, pos])
            # columns: words whose sub-words lie in this window
            tw = token_word[win.tok_start : win.tok_end]
            col_start, col_end = int(tw[0]), int(tw[-1]) + 1
            t_attn = attention[k][:, 1 : 1 + (win.tok_end - win.tok_start)]  # [R, T]
            block = t_attn.new_zeros((owned.numel(), col_end - col_start))
            block = block.index_add(1, tw - col_start, t_attn)
            blocks.append(AttentionBlock(owned, col_start, col_end, block))
        return EncodedDocument(word_vectors, blocks)

    def encode(self, docs: list[TokenizedDocument]) -> list[EncodedDocument]:
        """Encode several documents, batching all their windows through the transformer."""
        windows, owners = [], []
        for i, d in enumerate(docs):
            for w in self.window_ids(d):
                windows.append(w)
                owners.append(i)
        doc_rows = [self.owned_rows(d) for d in docs]
        hidden, attention, _ = self.forward_windows(windows, self._row_positions(doc_rows))
        return self._split_and_stitch(docs, owners, hidden, attention, doc_rows)

    def _row_positions(self, doc_rows: list[list[tuple[torch.Tensor, torch.Tensor]]]) -> list[torch.Tensor]:
        """The attention rows to compute, window by window, in the batch's window order."""
        device = next(self.model.parameters()).device
        return [pos.to(device) for per_doc in doc_rows for _, pos in per_doc]

    def _split_and_stitch(self, docs, owners, hidden, attention, doc_rows) -> list[EncodedDocument]:
        windows_of: list[list[int]] = [[] for _ in docs]
        for k, i in enumerate(owners):
            windows_of[i].append(k)
        out = []
        for d, ks, rows in zip(docs, windows_of, doc_rows):
            idx = torch.tensor(ks, device=hidden.device)
            out.append(self.stitch(d, hidden.index_select(0, idx), [attention[k] for k in ks], rows))
        return out

    def encode_from_cache(
        self, docs: list[TokenizedDocument], cached: list[list[torch.Tensor]], split: int
    ) -> list[EncodedDocument]:
        """Like :meth:`encode`, starting from cached layer-``split`` states of each window."""
        states, owners = [], []
        for i, per_doc in enumerate(cached):
            states.extend(per_doc)
            owners.extend([i] * len(per_doc))
        doc_rows = [self.owned_rows(d) for d in docs]
        hidden, attention, _ = self.upper(states, split, self._row_positions(doc_rows))
        return self._split_and_stitch(docs, owners, hidden, attention, doc_rows)
