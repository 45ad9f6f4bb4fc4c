"""Versioned teacher prompts.

Why versioned: a distilled corpus is only reproducible, and two corpora only comparable, when
the exact prompt is known. Each prompt has an ``id`` and a ``version``; ``glidre distill`` records
both in every output document's ``distill`` field and in ``_manifest.json``, together with a
sha256 of the prompt's text (:attr:`Prompt.fingerprint`), so an edit made without a version bump
is still visible. Rule: never change a registered prompt; register a new version.

The answer format asked for is one JSON object::

    {"entities": [{"name": "Marie Curie", "type": "person", "mentions": ["Marie Curie", "Curie"]}, ...],
     "relations": [{"head": "Marie Curie", "relation": "place of birth", "tail": "Warsaw"}, ...]}

Two prompts are registered: ``kg-json@v1`` (system + user instructions, for instruction-tuned
models: the production teachers) and ``kg-json-fewshot@v1`` (one example document and its JSON,
then the text, for base models such as the offline Gemma-3 270M, which continue a pattern but do
not follow instructions).

Entities are referred to by ``name`` (LLMs copy strings reliably and ids poorly); mention
strings are copied from the text and located by :mod:`glidre_core.llm.parsing`, which computes
the character offsets: the model is never asked for offsets, which it cannot count.
"""

from __future__ import annotations

import abc
import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TypeVar

from glidre_core.llm.base import ChatMessage

T = TypeVar("T")

_EXAMPLE_TEXT = "Marie Curie was born in Warsaw . Curie later worked at the University of Paris ."
_EXAMPLE_ANSWER = {
    "entities": [
        {"name": "Marie Curie", "type": "person", "mentions": ["Marie Curie", "Curie"]},
        {"name": "Warsaw", "type": "location", "mentions": ["Warsaw"]},
        {"name": "University of Paris", "type": "organization", "mentions": ["University of Paris"]},
    ],
    "relations": [
        {"head": "Marie Curie", "relation": "place of birth", "tail": "Warsaw"},
        {"head": "Marie Curie", "relation": "employer", "tail": "University of Paris"},
    ],
}


@dataclass(frozen=True)
class VersionedPrompt(abc.ABC):
    """What every versioned prompt shares (distill, verify, RHF): ``id@vN`` written into outputs,
    a fingerprint of the template text, and system + user chat messages. Subclasses add their
    templates and list them in :meth:`templates`."""

    id: str
    version: int
    system: str

    @abc.abstractmethod
    def templates(self) -> tuple[str, ...]:
        """The user-side template texts (what the fingerprint covers besides ``system``)."""

    @property
    def key(self) -> str:
        """``id@vN``, the form written into outputs."""
        return f"{self.id}@v{self.version}"

    @property
    def fingerprint(self) -> str:
        """sha256 of the system text and the templates (first 16 hex digits)."""
        return hashlib.sha256("\x00".join((self.system, *self.templates())).encode()).hexdigest()[:16]

    def messages(self, user: str) -> tuple[ChatMessage, ...]:
        """The chat messages for one filled-in user text (no system message when it is empty)."""
        if not self.system:
            return ({"role": "user", "content": user},)
        return ({"role": "system", "content": self.system}, {"role": "user", "content": user})

    def describe(self) -> dict[str, str | int]:
        return {"id": self.id, "version": self.version, "key": self.key, "fingerprint": self.fingerprint}


@dataclass(frozen=True)
class Prompt(VersionedPrompt):
    """A distill prompt: ``{text}``, ``{entity_types}`` and ``{relation_types}`` are filled in."""

    user: str

    def templates(self) -> tuple[str, ...]:
        return (self.user,)

    def render(self, text: str, entity_types: Sequence[str] | None = None,
               relation_types: Sequence[str] | None = None) -> tuple[ChatMessage, ...]:
        """The chat messages for one document chunk."""
        ents = ", ".join(entity_types) if entity_types else "any (person, organization, location, date, ...)"
        rels = ", ".join(relation_types) if relation_types else "any, as short lowercase phrases (e.g. 'place of birth')"
        return self.messages(self.user.format(text=text, entity_types=ents, relation_types=rels))


_V1_SYSTEM = (
    "You extract a knowledge graph from text. You answer with one JSON object and nothing else."
)
_V1_USER = (
    "Find the entities and the relations between them in the text.\n"
    "Rules:\n"
    "- Answer with one JSON object with two lists: \"entities\" and \"relations\".\n"
    "- Each entity has a \"name\", a \"type\" and \"mentions\": every string that refers to it, "
    "copied exactly from the text.\n"
    "- Each relation has a \"head\" and a \"tail\" (entity names from your list) and a \"relation\" "
    "label.\n"
    "- Entity types: {entity_types}.\n"
    "- Relation labels: {relation_types}.\n"
    "- Only relations stated or clearly implied by the text.\n\n"
    "Example text:\n" + _EXAMPLE_TEXT + "\n"
    "Example answer:\n" + json.dumps(_EXAMPLE_ANSWER, ensure_ascii=False).replace("{", "{{").replace("}", "}}") + "\n\n"
    "Text:\n{text}\n"
    "Answer:"
)

# For base (not instruction-tuned) models: no roles, a few-shot document a base model continues.
# With no system text, the plain layout sends the user text verbatim (base.render_plain_prompt).
_FEWSHOT_USER = (
    "Entities and relations extracted from texts as JSON. Entity types: {entity_types}. "
    "Relation labels: {relation_types}.\n\n"
    "Text: " + _EXAMPLE_TEXT + "\n"
    "JSON: " + json.dumps(_EXAMPLE_ANSWER, ensure_ascii=False).replace("{", "{{").replace("}", "}}") + "\n\n"
    "Text: {text}\n"
    "JSON:"
)

#: Every registered prompt, by ``(id, version)``. Never edit one: add a version.
PROMPTS: dict[tuple[str, int], Prompt] = {
    ("kg-json", 1): Prompt(id="kg-json", version=1, system=_V1_SYSTEM, user=_V1_USER),
    ("kg-json-fewshot", 1): Prompt(id="kg-json-fewshot", version=1, system="", user=_FEWSHOT_USER),
}


def lookup_prompt(registry: Mapping[tuple[str, int], T], prompt_id: str, version: int, kind: str = "prompt") -> T:
    """``registry[(prompt_id, version)]``, or a ``KeyError`` that lists what is registered: the
    one lookup of every prompt registry (extraction, verification, RHF)."""
    try:
        return registry[(prompt_id, version)]
    except KeyError:
        known = ", ".join(f"{i}@v{v}" for i, v in sorted(registry))
        raise KeyError(f"no {kind} {prompt_id!r} version {version}; registered: {known}") from None


def get_prompt(prompt_id: str, version: int) -> Prompt:
    """The registered prompt, or a ``KeyError`` listing the registered ones."""
    return lookup_prompt(PROMPTS, prompt_id, version)
