"""The row types every inference path returns: one format for the API, the job and the pyfunc.

They are ``TypedDict``s: plain dicts at run time (so they serialise to JSON, Arrow and pandas
as they are, and the documented dict API keeps working), with typed keys for readers and type
checkers.
"""

from __future__ import annotations

from typing import TypedDict


class TripletRow(TypedDict):
    """One predicted relation between two entities of a document."""

    head_id: str
    head_text: str
    head_type: str | None
    relation: str
    tail_id: str
    tail_text: str
    tail_type: str | None
    score: float


class MentionRow(TypedDict):
    """One mention of a predicted entity: character offsets into the text, and its score."""

    start: int
    end: int
    text: str
    score: float


class EntityRow(TypedDict):
    """One predicted entity: its type, its name (the longest mention), its best mention score."""

    id: str
    type: str | None
    text: str
    score: float
    mentions: list[MentionRow]


class CandidateRow(TripletRow):
    """A (head, tail, label) whose score lies in a band around its label's decision threshold
    (:meth:`glidre_core.inference.Predictor.band_candidates`): the uncertain decisions that a
    verifier (:mod:`glidre_core.llm.verify`) may confirm or reject. ``threshold`` is the label's
    threshold, so ``score > threshold`` is GLiDRE's own decision."""

    threshold: float
