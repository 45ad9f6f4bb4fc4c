"""Within-document coreference: group predicted entity mentions into entities.

Span-based NER returns mentions; relation extraction reasons over *entities* (all mentions of one
real-world thing). :func:`cluster_mentions` turns the mentions of ONE document into entity clusters
with a small, deterministic rule set, and :func:`entity_type` gives each cluster its type. Rules
are preferred over a learned model here because they are transparent, need no training data and
are cheap. The rules that compare *different* strings (acronyms, partial names) aim at precision,
since a wrong merge fuses two entities' relations while a missed merge only splits one entity in
two. The rule that compares *equal* names trusts the name over the predicted types.

Rules (``mode="rules"``), applied to mentions in text order:

1. **Normalisation.** Mentions are compared on a key built by dropping trailing punctuation and a
   trailing possessive (``'s`` / ``’s``), dropping surrounding punctuation, collapsing whitespace,
   stripping a leading determiner (the/a/an, only when a word follows) and casefolding.
   *Why:* "The company's", "the company" and "Company" name the same thing in surface variants
   that carry no identity information. A mention whose key is empty (pure punctuation) is never
   merged: there is nothing to compare.
2. **Same name, whatever the types.** All mentions with equal keys are one entity, even when the
   span head gave them different types (every mention except partial names, rule 6).
   *Why:* within one document a repeated name is by far the strongest identity evidence these
   rules have, while the span head types each mention on its own and is often inconsistent: a
   document about gobstoppers got "Gobstoppers" typed miscellaneous, other and location, and a
   type gate here made three graph nodes of one thing and split its relations between them.
   The cost is a true homonym inside one document (a player and a country both called
   "Jordan"), which is rarer than a type head disagreeing with itself.
3. **Entity type: the score-weighted vote of its mentions.** Each typed mention adds its span
   score (the span head's probability for that span and type; ``1.0`` when not given, so the
   vote is then by count; non-finite or negative scores weigh ``0``) to its type, compared
   case-insensitively; the type with the largest total wins. Ties (totals equal up to float
   rounding) go to the type with the highest single mention score, then to the type whose first
   mention comes first in the text. Untyped mentions (``None``) do not vote; an entity with no
   typed mention has type ``None``. The winning type keeps the spelling of its first mention.
   *Why:* rule 2 puts differently typed mentions into one entity, so it needs one type; a
   confident mention should outweigh several doubtful ones (three mentions at 0.2 total 0.6 and
   lose to one at 0.9), and the tie-breaks keep the result independent of input order.
4. **Type compatibility gates the weaker rules (5 and 6), not rule 2.** Two entities are
   compatible when their types (rule 3, over the mentions each holds at that moment) are equal
   or either is ``None``. It is checked between *entities*, not only between the two mentions
   being compared.
   *Why:* acronyms and partial names match different strings, so they are the error-prone
   rules, and the predicted type is the only independent evidence against a wrong match
   ("Washington" the state is a suffix of "George Washington" the person). Checking entities
   rather than mentions stops an untyped mention from chaining a person and a country into one
   entity through two weak matches.
5. **Acronyms.** A single-token mention of >= 2 uppercase letters (dots allowed: "U.S.", "IBM")
   merges with a mention whose content words (capitalised, not in :data:`STOPWORDS`) have those
   initials ("International Business Machines", "National Aeronautics and Space
   Administration", "United States"), in either order; two acronyms with the same letters ("US",
   "U.S.") also merge. Each mention tries its nearest preceding match first (rule 4 applies, so
   an untyped acronym joins the nearest long form and no other type). *Why:* documents introduce
   an organisation once in full and then use its acronym, which has no string overlap with the
   full form.
6. **Partial names.** A short mention whose every word is capitalised, alphabetic and not a
   stopword (a proper name; "the company" never qualifies) and whose normalised words are a proper
   prefix or suffix of a longer multi-word mention is a *partial name*, provided the two *names'*
   types are compatible (a name's type is rule 3 applied to all mentions with that key, so every
   mention of one name is judged alike). Which end counts depends on that type
   (:data:`PARTIAL_NAME_ENDS`): a person's first or last name ("Marie" / "Curie" / "Marie
   Curie"); the end of another name ("Parliament" / "Norwegian Parliament"); never a part of a
   place ("Pennsylvania" is not "Western Pennsylvania", "Caryville" not "Caryville Dam"). A name
   followed only by a legal form (:data:`LEGAL_FORMS`: "Microsoft" / "Microsoft Corporation") is
   a prefix of any type. Each partial name is attached to exactly ONE longer mention: the nearest
   preceding one whose entity type is compatible with the partial name's type, else the nearest
   following one; if none is compatible it stays its own entity. Partial names take no part in
   rules 2 and 5; their entity is decided by that single attachment only.
   *Why:* "Curie" after "Marie Curie" and "Pierre Curie" is ambiguous; if two "Curie" mentions
   were first merged with each other (rule 2) and then attached to different full names, the
   attachment would transitively fuse Marie and Pierre. Because every partial name links to one
   longer mention and nothing else, a cluster of partial names is a chain of ever shorter
   prefixes/suffixes of one longer name, and two different full names are never joined by it.
   The name's vote rather than each mention's own type decides partial-name status so that a
   name is not split between a full name and a rule-2 entity by one stray type; on Re-DocRED
   dev this was slightly better than the per-mention gate. Its cost: when the span head mostly
   mistypes a surname ("Astley" twice location, once person, after "Rick Astley" the person),
   none of its mentions joins the full name.
7. **Numbers and dates.** A mention whose key contains a digit merges only by rule 2 (exact).
   *Why:* "2001" is not an acronym or a part of "May 2001", and "Apollo 11" is not "Apollo 13".

The rules run in the order 2, 5, 6: equal names first (so an entity's type reflects all of its
name's mentions before a weak rule consults it), then acronyms, then partial-name attachments.

``mode="none"`` returns one cluster per mention (each mention its own entity), for callers that
want the raw NER output or do coreference elsewhere.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Iterable, Sequence
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
    """One predicted mention: character span into the document text, surface form, type and the
    span head's score for that span and type (the weight of its vote on the entity type, rule 3)."""

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
    acronym: str | None  # casefolded letters when the mention is an acronym (rule 5)
    initials: str | None  # casefolded initials of content words for multi-word mentions
    proper: bool  # every word capitalised, alphabetic, not a stopword (rule 6 short form)


def _normalised_tokens(text: str) -> tuple[str, ...]:
    """Words of ``text`` after rule 1 (case preserved; the caller casefolds for the key)."""
    stripped = _POSSESSIVE.sub("", text.rstrip(_STRIP_CHARS))
    tokens = stripped.strip(_STRIP_CHARS).split()
    if len(tokens) > 1 and tokens[0].casefold() in DETERMINERS:
        tokens = " ".join(tokens[1:]).strip(_STRIP_CHARS).split()
    return tuple(tokens)


def name_key(text: str) -> str:
    """The normalised name of a mention (rule 1): what "the same name" means for rule 2."""
    return " ".join(_normalised_tokens(text))


def _features(mention: MentionCandidate) -> _Features:
    """Everything rules 1-7 need to know about one mention."""
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


def _weight(score: float) -> float:
    """A mention's vote weight (rule 3): its score, or 0 when not a finite non-negative number."""
    try:
        value = float(score)
    except (TypeError, ValueError):
        return 0.0
    return value if math.isfinite(value) and value > 0.0 else 0.0


def _vote(votes: Iterable[tuple[str | None, float]]) -> str | None:
    """Rule 3 over ``(casefolded type, score)`` pairs given in text order: the type with the
    largest score total; ties (equal up to float rounding) to the highest single score, then to
    the type seen first. ``None`` when no pair is typed."""
    totals: dict[str, float] = {}
    best: dict[str, float] = {}
    first: dict[str, int] = {}
    for rank, (vote_type, score) in enumerate(votes):
        if vote_type is None:
            continue
        weight = _weight(score)
        if vote_type not in totals:
            totals[vote_type], best[vote_type], first[vote_type] = 0.0, weight, rank
        totals[vote_type] += weight
        best[vote_type] = max(best[vote_type], weight)
    if not totals:
        return None
    top = max(totals.values())
    tied = [
        t for t, total in totals.items()
        if math.isclose(total, top, rel_tol=1e-9, abs_tol=1e-12)
    ]
    return min(tied, key=lambda t: (-best[t], first[t]))


def entity_type(mentions: Sequence[MentionCandidate], cluster: Sequence[int]) -> str | None:
    """Rule 3: the score-weighted type vote of the mentions ``cluster`` indexes, spelled as its
    first mention (in text order) of the winning type spells it; ``None`` if none is typed."""
    members = sorted(cluster, key=lambda i: (mentions[i].start, mentions[i].end, i))
    folded = [
        mentions[i].type.casefold() if mentions[i].type is not None else None for i in members
    ]
    winner = _vote(zip(folded, (mentions[i].score for i in members)))
    if winner is None:
        return None
    return next(mentions[i].type for i, t in zip(members, folded) if t == winner)


#: Rule 6 by entity type: which end of a longer name a partial name may be (casefolded type
#: names; every other type, and untyped names, get :data:`PARTIAL_NAME_DEFAULT`). Chosen on
#: Re-DocRED dev's gold mentions (cluster F1 of the rules, 500 documents, no model involved):
#: prefix and suffix for every type 0.877; a person's first or last name only, a suffix for other
#: types and none for places 0.894. A place's part is usually another place ("Pennsylvania" /
#: "Western Pennsylvania", "Caryville" / "Caryville Dam"); an organisation's suffix is often the
#: same one ("Parliament" / "Norwegian Parliament"), its prefix rarely ("Cove Lake" / "Cove Lake
#: State Park").
PARTIAL_NAME_ENDS: dict[str, frozenset[str]] = {
    **{t: frozenset({"prefix", "suffix"}) for t in ("person", "people", "per", "peop")},
    **{t: frozenset() for t in ("location", "loc", "place", "city", "country", "gpe")},
}
PARTIAL_NAME_DEFAULT: frozenset[str] = frozenset({"suffix"})
#: Words that only mark a company's legal form: a name followed by nothing but these is the same
#: company ("Microsoft" / "Microsoft Corporation"), whatever the type's allowed ends.
LEGAL_FORMS: frozenset[str] = frozenset({
    "corporation", "corp", "inc", "incorporated", "ltd", "limited", "company", "co", "plc", "llc",
    "gmbh", "ag", "sa", "group", "holdings",
})


def _is_partial_of(short: _Features, long: _Features, name_type: str | None = None) -> bool:
    """Rule 6: ``short`` is a proper name whose words are a proper prefix or suffix of ``long``,
    at an end :data:`PARTIAL_NAME_ENDS` allows for ``name_type`` (casefolded)."""
    if not short.proper or short.has_digit or long.has_digit:
        return False
    if len(long.tokens) < 2 or len(short.tokens) >= len(long.tokens):
        return False
    short_words = short.key.split(" ")
    long_words = long.key.split(" ")
    size = len(short_words)
    ends = PARTIAL_NAME_ENDS.get(name_type or "", PARTIAL_NAME_DEFAULT)
    if long_words[:size] == short_words and (
        "prefix" in ends or all(w.strip(".") in LEGAL_FORMS for w in long_words[size:])
    ):
        return True
    return "suffix" in ends and long_words[-size:] == short_words


def _acronym_match(a: _Features, b: _Features) -> bool:
    """Rule 5 in either direction, plus two acronyms with the same letters."""
    if a.acronym is not None and a.acronym in (b.acronym, b.initials):
        return True
    return b.acronym is not None and b.acronym == a.initials


class _Entities:
    """Union-find over text-order positions whose roots know their members, so an entity's type
    (rule 3 over the mentions it holds now) can gate the weaker rules (rule 4)."""

    def __init__(self, types: Sequence[str | None], scores: Sequence[float]) -> None:
        self._types, self._scores = types, scores
        self._parent = list(range(len(types)))
        self._members = [[pos] for pos in range(len(types))]
        self._type: dict[int, str | None] = {}  # root -> voted type, filled on demand

    def find(self, item: int) -> int:
        root = item
        while self._parent[root] != root:
            root = self._parent[root]
        while self._parent[item] != root:  # path compression
            self._parent[item], item = root, self._parent[item]
        return root

    def type(self, item: int) -> str | None:
        """The entity type (rule 3, casefolded) of ``item``'s cluster."""
        root = self.find(item)
        if root not in self._type:
            members = sorted(self._members[root])
            self._type[root] = _vote((self._types[p], self._scores[p]) for p in members)
        return self._type[root]

    def compatible(self, a: int, b: int) -> bool:
        """Rule 4 between the entities of ``a`` and ``b``."""
        return self.find(a) == self.find(b) or _types_compatible(self.type(a), self.type(b))

    def merge(self, a: int, b: int) -> None:
        """Join the clusters of ``a`` and ``b`` (no type check: callers apply rule 4 themselves)."""
        root_a, root_b = self.find(a), self.find(b)
        if root_a == root_b:
            return
        keep, drop = min(root_a, root_b), max(root_a, root_b)
        self._parent[drop] = keep
        self._members[keep].extend(self._members[drop])
        self._members[drop] = []
        self._type.pop(keep, None)
        self._type.pop(drop, None)


def cluster_mentions(
    mentions: Sequence[MentionCandidate], mode: CoreferenceMode = "rules"
) -> list[list[int]]:
    """Clusters as lists of indices into `mentions`; each cluster sorted by (start, end); clusters
    ordered by their first mention's position. Every index appears in exactly one cluster.

    Ties in position are broken by index so the output is deterministic. See the module docstring
    for the rules of ``mode="rules"``; :func:`entity_type` gives a cluster's type (rule 3).
    """
    allowed = get_args(CoreferenceMode)
    if mode not in allowed:
        raise ValueError(f"unknown coreference mode {mode!r}; allowed values: {', '.join(allowed)}")
    order = sorted(range(len(mentions)), key=lambda i: (mentions[i].start, mentions[i].end, i))
    if mode == "none":
        return [[i] for i in order]

    # Work in text-order positions: position p is mention order[p].
    feats = [_features(mentions[i]) for i in order]
    scores = [mentions[i].score for i in order]
    forest = _Entities([f.type for f in feats], scores)

    # A name's type (rule 3 over every mention with that key) decides who is a partial name.
    by_key: dict[str, list[int]] = {}
    for pos, feat in enumerate(feats):
        if feat.key:
            by_key.setdefault(feat.key, []).append(pos)
    name_type = {
        key: _vote((feats[p].type, scores[p]) for p in positions)
        for key, positions in by_key.items()
    }

    def partial_targets(pos: int) -> list[int]:
        short = feats[pos]
        if not short.proper:
            return []
        return [
            other
            for other, long in enumerate(feats)
            if long.key  # a pure-punctuation mention has no name (and no name type)
            and _types_compatible(name_type[short.key], name_type[long.key])
            and _is_partial_of(short, long, name_type[short.key] or name_type[long.key])
        ]

    targets = {pos: partial_targets(pos) for pos in range(len(feats))}
    partial = {pos for pos, found in targets.items() if found}

    # Rule 2 (and 7): equal names merge whatever their types; partial names excepted (rule 6).
    for positions in by_key.values():
        full = [pos for pos in positions if pos not in partial]
        for pos in full[1:]:
            forest.merge(full[0], pos)

    # Rule 5 among full names, nearest preceding match first, gated by entity types (rule 4).
    seen: list[int] = []
    for pos, feat in enumerate(feats):
        if not feat.key or pos in partial:
            continue
        if feat.acronym is not None or feat.initials is not None:
            for prev in reversed(seen):
                other = feats[prev]
                if _acronym_match(feat, other) and forest.compatible(pos, prev):
                    forest.merge(pos, prev)
            seen.append(pos)

    # Rule 6: each partial name joins exactly one longer mention, the nearest compatible one.
    for pos in sorted(partial):
        own_type = name_type[feats[pos].key]
        preceding = sorted((t for t in targets[pos] if t < pos), reverse=True)
        following = sorted(t for t in targets[pos] if t > pos)
        for target in preceding + following:
            if _types_compatible(own_type, forest.type(target)):
                forest.merge(pos, target)
                break

    clusters: dict[int, list[int]] = {}
    for pos in range(len(feats)):
        clusters.setdefault(forest.find(pos), []).append(order[pos])
    # Positions are in text order and roots are each cluster's smallest position, so both the
    # clusters and their members already follow text order.
    return [clusters[root] for root in sorted(clusters)]
