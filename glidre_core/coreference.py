"""Within-document coreference: group predicted entity mentions into entities.

Span-based NER returns mentions; relation extraction reasons over *entities* (all mentions of one
real-world thing). :func:`cluster_mentions` turns the mentions of ONE document into entity clusters
with a small, deterministic rule set. Rules are preferred over a learned model here because they
are transparent, need no training data and are cheap; they aim at precision, since a wrong merge
fuses two entities' relations while a missed merge only splits one entity in two.

Rules (``mode="rules"``), applied to mentions in text order:

1. **Normalisation.** Mentions are compared on a key built by dropping trailing punctuation and a
   trailing possessive (``'s`` / ``’s``), dropping surrounding punctuation, collapsing whitespace,
   stripping a leading determiner (the/a/an, only when a word follows) and casefolding.
   *Why:* "The company's", "the company" and "Company" name the same thing in surface variants
   that carry no identity information. A mention whose key is empty (pure punctuation) is never
   merged: there is nothing to compare.
2. **Type compatibility** gates every merge: same type (case-insensitive) or either type is
   ``None``. It is checked between *clusters* (a cluster's type is the first non-``None`` type of
   its members), not only between the two mentions. *Why:* otherwise an untyped "Jordan" would
   chain a person "Jordan" and a country "Jordan" into one entity.
3. **Repeated names.** Equal keys merge; each mention tries its nearest preceding equal mention
   first. *Why:* nearest-first keeps an untyped mention with its local context when equal names of
   different types exist.
4. **Acronyms.** A single-token mention of >= 2 uppercase letters (dots allowed: "U.S.", "IBM")
   merges with a mention whose content words (capitalised, not in :data:`STOPWORDS`) have those
   initials ("International Business Machines", "National Aeronautics and Space
   Administration", "United States"), in either order; two acronyms with the same letters ("US",
   "U.S.") also merge. *Why:* documents introduce an organisation once in full and then use its
   acronym, which has no string overlap with the full form.
5. **Partial names.** A short mention whose every word is capitalised, alphabetic and not a
   stopword (a proper name; "the company" never qualifies) and whose normalised words are a proper
   prefix or suffix of a longer multi-word mention ("Curie" / "Marie Curie", "Microsoft" /
   "Microsoft Corporation") is a *partial name*. Each partial name is attached to exactly ONE
   longer mention: the nearest preceding match, else the nearest following one. Partial names
   take no part in rules 3 and 4; their entity is decided by that single attachment only.
   *Why:* "Curie" after "Marie Curie" and "Pierre Curie" is ambiguous; if two "Curie" mentions
   were first merged with each other (rule 3) and then attached to different full names, the
   attachment would transitively fuse Marie and Pierre. Because every partial name links to one
   longer mention and nothing else, a cluster of partial names is a chain of ever shorter
   prefixes/suffixes of one longer name, and two different full names are never joined by it.
6. **Numbers and dates.** A mention whose key contains a digit merges only by rule 3 (exact).
   *Why:* "2001" is not an acronym or a part of "May 2001", and "Apollo 11" is not "Apollo 13".

``mode="none"`` returns one cluster per mention (each mention its own entity), for callers that
want the raw NER output or do coreference elsewhere.
"""

from __future__ import annotations

import re
import string
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, get_args

CoreferenceMode = Literal["rules", "none"]

#: Words ignored when building acronym initials and never accepted as partial names.
STOPWORDS: frozenset[str] = frozenset(
    {"of", "the", "and", "for", "&", "de", "in", "on", "at", "to"}
)
#: Leading words dropped from the comparison key.
DETERMINERS: frozenset[str] = frozenset({"the", "a", "an"})
_NOT_A_NAME = STOPWORDS | DETERMINERS

_STRIP_CHARS = string.punctuation + string.whitespace + "“”‘’«»‹›„‚–—…·"
_POSSESSIVE = re.compile(r"['’][sS]$")
# Letters each optionally followed by a dot: "IBM", "U.S." (matched after re-adding the final dot
# that normalisation strips, so "U.S" and "IBM." both match).
_ACRONYM = re.compile(r"(?:[^\W\d_]\.?){2,}")


@dataclass(frozen=True)
class MentionCandidate:
    """One predicted mention: character span into the document text, surface form and type."""

    start: int
    end: int
    text: str
    type: str | None
    score: float = 1.0


@dataclass(frozen=True)
class _Features:
    """Per-mention comparison features, computed once so pair checks stay cheap."""

    tokens: tuple[str, ...]  # original-case words after normalisation (rule 1)
    key: str  # casefolded, space-joined tokens; "" means "never merge"
    type: str | None  # casefolded type
    has_digit: bool
    acronym: str | None  # casefolded letters when the mention is an acronym (rule 4)
    initials: str | None  # casefolded initials of content words for multi-word mentions
    proper: bool  # every word capitalised, alphabetic, not a stopword (rule 5 short form)


def _normalised_tokens(text: str) -> tuple[str, ...]:
    """Words of ``text`` after rule 1 (case preserved; the caller casefolds for the key)."""
    stripped = _POSSESSIVE.sub("", text.rstrip(_STRIP_CHARS))
    tokens = stripped.strip(_STRIP_CHARS).split()
    if len(tokens) > 1 and tokens[0].casefold() in DETERMINERS:
        tokens = " ".join(tokens[1:]).strip(_STRIP_CHARS).split()
    return tuple(tokens)


def _features(mention: MentionCandidate) -> _Features:
    """Everything rules 1-6 need to know about one mention."""
    tokens = _normalised_tokens(mention.text)
    key = " ".join(tokens).casefold()
    has_digit = any(ch.isdigit() for ch in key)
    acronym = None
    if len(tokens) == 1 and not has_digit and _ACRONYM.fullmatch(tokens[0] + "."):
        letters = tokens[0].replace(".", "")
        if all(ch.isupper() for ch in letters):
            acronym = letters.casefold()
    initials = None
    if len(tokens) > 1 and not has_digit:
        content = [t for t in tokens if t.casefold() not in STOPWORDS and t[0].isupper()]
        if len(content) >= 2:
            initials = "".join(t[0] for t in content).casefold()
    proper = bool(tokens) and all(
        t[0].isupper() and t.isalpha() and t.casefold() not in _NOT_A_NAME
        for t in tokens
    )
    mention_type = mention.type.casefold() if mention.type is not None else None
    return _Features(tokens, key, mention_type, has_digit, acronym, initials, proper)


def _types_compatible(a: str | None, b: str | None) -> bool:
    return a is None or b is None or a == b


def _is_partial_of(short: _Features, long: _Features) -> bool:
    """Rule 5: ``short`` is a proper name whose words are a proper prefix/suffix of ``long``."""
    if not short.proper or short.has_digit or long.has_digit:
        return False
    if len(long.tokens) < 2 or len(short.tokens) >= len(long.tokens):
        return False
    short_words = short.key.split(" ")
    long_words = long.key.split(" ")
    size = len(short_words)
    return long_words[:size] == short_words or long_words[-size:] == short_words


def _acronym_match(a: _Features, b: _Features) -> bool:
    """Rule 4 in either direction, plus two acronyms with the same letters."""
    if a.acronym is not None and a.acronym in (b.acronym, b.initials):
        return True
    return b.acronym is not None and b.acronym == a.initials


class _TypedUnionFind:
    """Union-find whose roots remember their cluster type, so unions can refuse type clashes."""

    def __init__(self, types: Sequence[str | None]) -> None:
        self._parent = list(range(len(types)))
        self._type = list(types)

    def find(self, item: int) -> int:
        root = item
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[item] != root:  # path compression
            self._parent[item], item = root, self._parent[item]
        return root

    def union(self, a: int, b: int) -> bool:
        """Merge the clusters of ``a`` and ``b`` unless their types clash (rule 2)."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return True
        if not _types_compatible(self._type[root_a], self._type[root_b]):
            return False
        keep, drop = min(root_a, root_b), max(root_a, root_b)
        self._parent[drop] = keep
        if self._type[keep] is None:
            self._type[keep] = self._type[drop]
        return True


def cluster_mentions(
    mentions: Sequence[MentionCandidate], mode: CoreferenceMode = "rules"
) -> list[list[int]]:
    """Clusters as lists of indices into `mentions`; each cluster sorted by (start, end); clusters
    ordered by their first mention's position. Every index appears in exactly one cluster.

    Ties in position are broken by index so the output is deterministic. See the module docstring
    for the rules of ``mode="rules"``.
    """
    allowed = get_args(CoreferenceMode)
    if mode not in allowed:
        raise ValueError(f"unknown coreference mode {mode!r}; allowed values: {', '.join(allowed)}")
    order = sorted(range(len(mentions)), key=lambda i: (mentions[i].start, mentions[i].end, i))
    if mode == "none":
        return [[i] for i in order]

    # Work in text-order positions: position p is mention order[p].
    feats = [_features(mentions[i]) for i in order]
    forest = _TypedUnionFind([f.type for f in feats])

    def partial_targets(pos: int) -> list[int]:
        short = feats[pos]
        return [
            other
            for other, long in enumerate(feats)
            if _types_compatible(short.type, long.type) and _is_partial_of(short, long)
        ]

    targets = {pos: partial_targets(pos) for pos in range(len(feats))}
    partial = {pos for pos, found in targets.items() if found}

    # Rules 3, 4, 6 among full names, nearest preceding match first.
    seen: list[int] = []
    for pos, feat in enumerate(feats):
        if not feat.key or pos in partial:
            continue
        for prev in reversed(seen):
            other = feats[prev]
            if not _types_compatible(feat.type, other.type):
                continue
            same = feat.key == other.key
            if same or (not feat.has_digit and not other.has_digit and _acronym_match(feat, other)):
                forest.union(pos, prev)
        seen.append(pos)

    # Rule 5: each partial name joins exactly one longer mention.
    for pos in sorted(partial):
        preceding = [t for t in targets[pos] if t < pos]
        target = max(preceding) if preceding else min(targets[pos])
        forest.union(pos, target)

    clusters: dict[int, list[int]] = {}
    for pos in range(len(feats)):
        clusters.setdefault(forest.find(pos), []).append(order[pos])
    # Positions are in text order and roots are each cluster's smallest position, so both the
    # clusters and their members already follow text order.
    return [clusters[root] for root in sorted(clusters)]
