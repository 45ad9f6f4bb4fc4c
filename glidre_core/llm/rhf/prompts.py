"""Versioned prompts of the RHF baseline, one template per step.

Same rules as :mod:`glidre_core.llm.prompts`: a prompt set has an ``id`` and a ``version``; its
``key`` (``id@vN``) and a sha256 of its three templates (``fingerprint``) are written into every
metrics JSON; a registered set is never edited, a change is a new version.

Each step asks for one JSON object holding one list, so that OpenAI-style ``json_object`` mode
applies and the in-process backend stops when the object closes:

* R (``relations``): the text and the candidate labels -> ``{"relations": [label, ...]}``
* H (``heads``): the text, the given entities and one relation -> ``{"heads": [name, ...]}``
* F (``tails``): the text, the given entities, the relation and one head -> ``{"tails": [name, ...]}``

Two sets: ``rhf-json@v1`` (system + instructions, for instruction-tuned models) and
``rhf-json-fewshot@v1`` (one worked example per step and no roles, for base models such as the
offline Gemma-3 270M, which continue a pattern but do not follow instructions).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from glidre_core.llm.base import ChatMessage
from glidre_core.llm.prompts import VersionedPrompt, lookup_prompt

Step = Literal["relations", "heads", "tails"]
STEPS: tuple[Step, ...] = ("relations", "heads", "tails")

_EX_TEXT = "Marie Curie was born in Warsaw . Curie later worked at the University of Paris ."
_EX_ENTITIES = "Marie Curie; Warsaw; University of Paris"
_EX = {
    "relations": {"relations": ["place of birth", "employer"]},
    "heads": {"heads": ["Marie Curie"]},
    "tails": {"tails": ["Warsaw"]},
}


def _j(value: object) -> str:
    """JSON for a template: braces doubled for ``str.format``."""
    return json.dumps(value, ensure_ascii=False).replace("{", "{{").replace("}", "}}")


@dataclass(frozen=True)
class RHFPrompt(VersionedPrompt):
    """The three step templates of one prompt set. Fields: ``{text}``, ``{labels}``,
    ``{entities}``, ``{relation}``, ``{head}``."""

    relations: str
    heads: str
    tails: str

    def templates(self) -> tuple[str, ...]:
        return (self.relations, self.heads, self.tails)

    def render(self, step: Step, **fields: str) -> tuple[ChatMessage, ...]:
        return self.messages(getattr(self, step).format(**fields))


_V1_SYSTEM = "You extract relations from documents. You answer with one JSON object and nothing else."
_V1_RELATIONS = (
    "Which of the relation labels below are expressed in the text (between two things the text "
    "names)?\nRules:\n"
    "- Answer with one JSON object: {{\"relations\": [...]}}, a list of labels copied exactly from the "
    "candidate list; an empty list if none.\n"
    "- Candidate relation labels: {labels}.\n\n"
    "Example text:\n" + _EX_TEXT + "\nExample answer:\n" + _j(_EX["relations"]) + "\n\n"
    "Text:\n{text}\nAnswer:"
)
_V1_HEADS = (
    "The relation \"{relation}\" is expressed in the text. Which entities are its head (subject)? "
    "In (head, relation, tail), the head is the entity the relation is about: in (Marie Curie, place "
    "of birth, Warsaw) the head is Marie Curie.\nRules:\n"
    "- Answer with one JSON object: {{\"heads\": [...]}}, entity names copied from the entity list.\n"
    "- Entities: {entities}.\n\n"
    "Example text:\n" + _EX_TEXT + "\nExample relation: place of birth\nExample answer:\n" + _j(_EX["heads"]) + "\n\n"
    "Text:\n{text}\nRelation: {relation}\nAnswer:"
)
_V1_TAILS = (
    "In the text, \"{head}\" has the relation \"{relation}\" to which entities (the tails)?\nRules:\n"
    "- Answer with one JSON object: {{\"tails\": [...]}}, entity names copied from the entity list; an "
    "empty list if none.\n"
    "- Entities: {entities}.\n\n"
    "Example text:\n" + _EX_TEXT + "\nExample relation: place of birth\nExample head: Marie Curie\n"
    "Example answer:\n" + _j(_EX["tails"]) + "\n\n"
    "Text:\n{text}\nRelation: {relation}\nHead: {head}\nAnswer:"
)

_FS_RELATIONS = (
    "Relations expressed in texts, as JSON. Relation labels: {labels}.\n\n"
    "Text: " + _EX_TEXT + "\nJSON: " + _j(_EX["relations"]) + "\n\n"
    "Text: {text}\nJSON:"
)
_FS_HEADS = (
    "Head entities of a relation in texts, as JSON.\n\n"
    "Text: " + _EX_TEXT + "\nEntities: " + _EX_ENTITIES + "\nRelation: place of birth\nJSON: " + _j(_EX["heads"]) + "\n\n"
    "Text: {text}\nEntities: {entities}\nRelation: {relation}\nJSON:"
)
_FS_TAILS = (
    "Tail entities of a relation and a head entity in texts, as JSON.\n\n"
    "Text: " + _EX_TEXT + "\nEntities: " + _EX_ENTITIES + "\nRelation: place of birth\nHead: Marie Curie\nJSON: "
    + _j(_EX["tails"]) + "\n\n"
    "Text: {text}\nEntities: {entities}\nRelation: {relation}\nHead: {head}\nJSON:"
)

#: Every registered prompt set, by ``(id, version)``. Never edit one: add a version.
RHF_PROMPTS: dict[tuple[str, int], RHFPrompt] = {
    ("rhf-json", 1): RHFPrompt("rhf-json", 1, _V1_SYSTEM, _V1_RELATIONS, _V1_HEADS, _V1_TAILS),
    ("rhf-json-fewshot", 1): RHFPrompt("rhf-json-fewshot", 1, "", _FS_RELATIONS, _FS_HEADS, _FS_TAILS),
}


def get_rhf_prompt(prompt_id: str, version: int) -> RHFPrompt:
    """The registered prompt set, or a ``KeyError`` listing the registered ones."""
    return lookup_prompt(RHF_PROMPTS, prompt_id, version, "RHF prompt")
