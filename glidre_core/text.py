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
from dataclasses import dataclass

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
