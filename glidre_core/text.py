"""The single word splitter and the character <-> word alignment.

Training and inference must see identical words (the reference code used two different regexes),
so every path goes through :func:`split_words`. Mentions are stored as character offsets; they are
mapped to words with :func:`char_span_to_words`, which snaps a span that does not fall on word
boundaries to the covering words and warns, instead of failing.
"""

from __future__ import annotations

import bisect
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

logger = logging.getLogger(__name__)

# Words are runs of letters/digits (with inner apostrophes: "don't", "O'Neil") or single symbols.
WORD_PATTERN = re.compile(r"\w+(?:['’]\w+)*|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class Words:
    """Words of a text with their ``[start, end)`` character spans."""

    text: str
    starts: tuple[int, ...]
    ends: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def tokens(self) -> list[str]:
        return [self.text[s:e] for s, e in zip(self.starts, self.ends)]


def split_words(text: str) -> Words:
    """Split ``text`` into words (see :data:`WORD_PATTERN`)."""
    starts, ends = [], []
    for m in WORD_PATTERN.finditer(text):
        starts.append(m.start())
        ends.append(m.end())
    return Words(text=text, starts=tuple(starts), ends=tuple(ends))


class SpanAlignmentError(ValueError):
    """A character span covers no word at all."""


def char_span_to_words(words: Words, start: int, end: int, *, context: str = "") -> tuple[int, int]:
    """Map a character span ``[start, end)`` to a word span ``[w0, w1)`` (end exclusive).

    Every word overlapping the span is included, so a span cutting through a word snaps outward
    to cover it; that case logs a warning. A span that overlaps no word raises
    :class:`SpanAlignmentError`.
    """
    # first word whose end is > start
    w0 = bisect.bisect_right(words.ends, start)
    # last word whose start is < end
    w1 = bisect.bisect_left(words.starts, end)
    if w0 >= w1:
        raise SpanAlignmentError(f"{context}span [{start}, {end}) covers no word")
    if words.starts[w0] != start or words.ends[w1 - 1] != end:
        snapped = (words.starts[w0], words.ends[w1 - 1])
        # A span that only differs by surrounding whitespace is not worth a warning.
        if words.text[start:end].strip() != words.text[snapped[0] : snapped[1]]:
            logger.warning(
                "%smention [%d, %d) %r is not on word boundaries; snapped to [%d, %d) %r",
                context, start, end, words.text[start:end], snapped[0], snapped[1],
                words.text[snapped[0] : snapped[1]],
            )
    return w0, w1


def join_tokens(tokens: list[str]) -> tuple[str, list[int], list[int]]:
    """Join pre-tokenised words with single spaces; return the text and each token's char span.

    Used by readers of pre-tokenised formats (DocRED, CoNLL04, GLiDRE JSON) to build ``text``.
    """
    starts, ends, pos = [], [], 0
    for tok in tokens:
        starts.append(pos)
        pos += len(tok)
        ends.append(pos)
        pos += 1
    return " ".join(tokens), starts, ends


#: Word shapes (``GLiDREConfig.span_word_shape``). Why: the default encoders (MiniLM, MPNet) are
#: *uncased*: their tokenizers lower-case the text, so "Apple" and "apple", "IBM" and "ibm" reach
#: the encoder as the same sub-words. Capitalisation is the strongest single cue of a name and of
#: where it starts and ends ("United Kingdom", not "Kingdom"), so the span head gets it back from
#: the raw words. Index 0 is "no word" (before the first and after the last word). They live here,
#: torch-free, because they are computed once per document during preparation
#: (:func:`glidre_core.preparation.prepare_document`), not per batch: on a GPU the batch is built
#: on the critical path, and per-word Python there was three quarters of building it.
WORD_SHAPES = ("none", "lower", "title", "upper", "letter", "digit", "punct", "mixed", "title_initial")
_SENTENCE_END = frozenset({".", "!", "?"})
_TITLE, _TITLE_INITIAL = 2, 8


def word_shape(word: str, sentence_initial: bool = False) -> int:
    """The :data:`WORD_SHAPES` index of ``word``; a title-case word that opens a sentence is
    ``title_initial`` (its capital says nothing about being a name)."""
    if any(map(str.isdigit, word)):
        return 5
    letters = word if word.isalpha() else "".join(filter(str.isalpha, word))
    if not letters:
        return 6
    if all(map(str.islower, letters)):
        return 1
    if all(map(str.isupper, letters)):
        return 4 if len(letters) == 1 else 3
    if letters[0].isupper():
        return _TITLE_INITIAL if sentence_initial else _TITLE
    return 7


def word_shapes(words: Sequence[str]) -> np.ndarray:
    """``[W]`` int64 :data:`WORD_SHAPES` indices of a document's words (host side, numpy). Each
    distinct word is classified once (a local memo: documents repeat most of their words)."""
    seen: dict[str, int] = {}
    out = np.empty(len(words), dtype=np.int64)
    initial = True
    for i, w in enumerate(words):
        shape = seen.get(w)
        if shape is None:
            shape = seen[w] = word_shape(w)
        out[i] = _TITLE_INITIAL if (initial and shape == _TITLE) else shape
        initial = w in _SENTENCE_END
    return out
