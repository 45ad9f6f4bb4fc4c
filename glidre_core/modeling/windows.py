"""Word -> sub-word alignment and overlapping encoder windows.

Documents longer than the encoder's window are never truncated: the sub-word sequence is cut into
overlapping windows, each encoded separately, and every sub-word is then *owned* by exactly one
window (the overlap is split at its midpoint, so each token keeps the window where it has the
most context on both sides). Word vectors and word-level attention rows come from the owning
window.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class Window:
    """Sub-words ``[tok_start, tok_end)`` of the document, encoded as one sequence.

    ``own_start``/``own_end`` are the sub-words this window owns (a sub-range).
    """

    tok_start: int
    tok_end: int
    own_start: int
    own_end: int


@dataclass
class TokenizedDocument:
    """Sub-word ids of a document's words and where each word starts."""

    token_ids: list[int]
    word_first_token: list[int]  # index of each word's first sub-word
    word_token_end: list[int]  # exclusive end of each word's sub-words
    windows: list[Window]
    _layout: "WindowLayout | None" = field(default=None, init=False, repr=False, compare=False)

    @property
    def num_words(self) -> int:
        return len(self.word_first_token)

    def layout(self) -> "WindowLayout":
        """The document's windows as flat numpy arrays (:class:`WindowLayout`), computed on first
        use and kept: a document is batched once per epoch in training and its layout never
        changes, and building it was most of a batch's host work."""
        if self._layout is None:
            self._layout = WindowLayout.of(self)
        return self._layout

    def __getstate__(self) -> dict[str, Any]:
        # the layout is derived data: not shipped to other processes
        state = dict(self.__dict__)
        state["_layout"] = None
        return state


@dataclass(frozen=True)
class WindowLayout:
    """A document's encoder windows, flattened for batching (:func:`glidre_core.modeling.batch.collate`).

    Per window ``k`` (in order): ``body_lengths[k]`` sub-words (specials excluded), whose ids and
    owning words are the next ``body_lengths[k]`` entries of ``body_ids`` / ``body_words``; and
    ``row_counts[k]`` words it owns, whose indices and first sub-word positions (in the window,
    counting the leading special) are the next entries of ``owned_words`` / ``owned_positions``.
    """

    body_lengths: np.ndarray  # [K] int64
    body_ids: np.ndarray  # [sum body_lengths] int64
    body_words: np.ndarray  # [sum body_lengths] int64: the word of each sub-word
    row_counts: np.ndarray  # [K] int64
    owned_words: np.ndarray  # [sum row_counts] int64
    owned_positions: np.ndarray  # [sum row_counts] int64

    @classmethod
    def of(cls, tokens: "TokenizedDocument") -> "WindowLayout":
        ids = np.asarray(tokens.token_ids, dtype=np.int64)
        first = np.asarray(tokens.word_first_token, dtype=np.int64)
        # the word of each sub-word (a word the tokenizer dropped shares its neighbour's sub-word,
        # which then counts for the later word)
        token_word = np.searchsorted(first, np.arange(len(ids)), side="right") - 1
        lengths, bodies, words, counts, owned_all, pos_all = [], [], [], [], [], []
        for win in tokens.windows:
            lengths.append(win.tok_end - win.tok_start)
            bodies.append(ids[win.tok_start : win.tok_end])
            words.append(token_word[win.tok_start : win.tok_end])
            owned = np.nonzero((first >= win.own_start) & (first < win.own_end))[0]
            counts.append(len(owned))
            owned_all.append(owned)
            pos_all.append(first[owned] - win.tok_start + 1)

        def cat(parts: list[np.ndarray]) -> np.ndarray:
            return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

        return cls(
            np.asarray(lengths, dtype=np.int64), cat(bodies), cat(words),
            np.asarray(counts, dtype=np.int64), cat(owned_all), cat(pos_all),
        )


def subword_backend(tokenizer: Any) -> Any:
    """The Rust ``tokenizers.Tokenizer`` behind an HF fast tokenizer (or the object itself when it
    already is one), set to neither truncate nor pad: documents are windowed, never cut.

    Tokenizing through the backend is what the HF wrapper does internally, minus its per-call
    overhead, and it lets the extraction job's CPU workers tokenize without importing
    transformers (:func:`glidre_core.pretrained.load_subword_tokenizer`). HF re-applies its own
    truncation and padding settings before each of its calls, so switching them off here does not
    change what the wrapper does.
    """
    backend = getattr(tokenizer, "backend_tokenizer", tokenizer)
    if backend.truncation is not None:
        backend.no_truncation()
    if backend.padding is not None:
        backend.no_padding()
    return backend


def unknown_token_id(tokenizer: Any) -> int:
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None:
        return unk
    backend = subword_backend(tokenizer)
    token = getattr(backend.model, "unk_token", None)
    unk = backend.token_to_id(token) if token is not None else None
    return 0 if unk is None else unk


def tokenize_words(words: list[str], tokenizer: Any, max_length: int, overlap: int) -> TokenizedDocument:
    """Tokenise pre-split words and plan the windows (specials excluded from the counts).

    ``tokenizer``: an HF fast tokenizer or a ``tokenizers.Tokenizer``; both give the same ids.
    """
    if not words:
        raise ValueError("no words to encode")
    enc = subword_backend(tokenizer).encode(words, is_pretokenized=True, add_special_tokens=False)
    ids: list[int] = enc.ids
    word_ids = enc.word_ids
    n = len(words)
    first = [-1] * n
    end = [0] * n
    for t, w in enumerate(word_ids):
        if w is None:
            continue
        if first[w] < 0:
            first[w] = t
        end[w] = t + 1
    # A word the tokenizer dropped entirely (e.g. a control character) borrows the next word's
    # first sub-word; at the end of the text, the last sub-word.
    nxt = len(ids) - 1 if ids else 0
    if not ids:
        ids = [unknown_token_id(tokenizer)]
        nxt = 0
    for w in range(n - 1, -1, -1):
        if first[w] < 0:
            first[w], end[w] = nxt, nxt + 1
        else:
            nxt = first[w]
    return TokenizedDocument(ids, first, end, plan_windows(len(ids), max_length - 2, overlap))


def plan_windows(num_tokens: int, body: int, overlap: int) -> list[Window]:
    """Cover ``num_tokens`` sub-words with windows of ``body`` sub-words overlapping by ``overlap``."""
    if body <= 0:
        raise ValueError("window too small")
    if num_tokens <= body:
        return [Window(0, num_tokens, 0, num_tokens)]
    overlap = min(overlap, body // 2)
    stride = body - overlap
    starts = list(range(0, num_tokens - body, stride)) + [num_tokens - body]
    starts = sorted(set(starts))
    windows = []
    for i, s in enumerate(starts):
        e = s + body
        own_s = 0 if i == 0 else (s + windows[-1].tok_end) // 2
        windows.append(Window(s, e, own_s, e))
        if i > 0:
            windows[-2].own_end = own_s
    windows[-1].own_end = num_tokens
    return windows
