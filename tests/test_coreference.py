"""Rule-based within-document coreference (glidre_core.coreference) on hand-made documents."""

from __future__ import annotations

import pytest

from glidre_core.coreference import MentionCandidate, cluster_mentions, entity_type
from glidre_core.modeling.entities import group_mentions
from glidre_core.modeling.spans import SpanPrediction
from glidre_core.text import split_words


def mentions_in(
    text: str, spans: list[tuple[str, str | None]], scores: list[float] | None = None
) -> list[MentionCandidate]:
    """Mentions for ``(surface, type)`` pairs, located left to right in ``text``, with optional
    span scores (default 1.0 each)."""
    found, cursor = [], 0
    for k, (surface, mention_type) in enumerate(spans):
        start = text.index(surface, cursor)
        score = 1.0 if scores is None else scores[k]
        found.append(MentionCandidate(start, start + len(surface), surface, mention_type, score))
        cursor = start + len(surface)
    return found


def test_repeated_names_merge_across_case_determiner_possessive_and_punctuation() -> None:
    text = "Paris is big. The Paris metro runs. Paris's mayor said “paris,” loudly. London too."
    spans = [
        ("Paris", "loc"),
        ("The Paris", "loc"),
        ("Paris's", "loc"),
        ("“paris,”", "loc"),
        ("London", "loc"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1, 2, 3], [4]]


def test_surname_after_full_name_merges() -> None:
    text = "Marie Curie won. Later Curie returned."
    spans = [("Marie Curie", "person"), ("Curie", "person")]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1]]


def test_ambiguous_surname_joins_nearest_preceding_full_name_only() -> None:
    text = "Marie Curie met Pierre Curie. Curie spoke."
    spans = [("Marie Curie", "person"), ("Pierre Curie", "person"), ("Curie", "person")]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1, 2]]


def test_repeated_ambiguous_surnames_never_fuse_two_full_names() -> None:
    # Both "Curie" mentions are equal strings; merging them first (rule 2) and then attaching each
    # to a different full name would transitively make Marie and Pierre one entity.
    text = "Marie Curie came. Curie sat. Pierre Curie came. Curie stood."
    spans = [
        ("Marie Curie", "person"),
        ("Curie", "person"),
        ("Pierre Curie", "person"),
        ("Curie", "person"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1], [2, 3]]


def test_short_form_before_long_form_joins_nearest_following() -> None:
    text = "Curie came. Marie Curie and Pierre Curie left. Microsoft grew; Microsoft Corporation."
    spans = [
        ("Curie", "person"),
        ("Marie Curie", "person"),
        ("Pierre Curie", "person"),
        ("Microsoft", "org"),
        ("Microsoft Corporation", "org"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1], [2], [3, 4]]


def test_first_name_prefix_merges() -> None:
    text = "Barack Obama spoke and Barack smiled."
    spans = [("Barack Obama", "person"), ("Barack", "person")]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1]]


def test_acronyms_merge_in_both_orders_with_dots_and_stopwords() -> None:
    text = (
        "International Business Machines (IBM) sued. NASA, the National Aeronautics and Space "
        "Administration, flew. The U.S. and the United States and US agreed. "
        "The International Trade Commission ruled."
    )
    spans = [
        ("International Business Machines", "org"),
        ("IBM", "org"),
        ("NASA", "org"),
        ("National Aeronautics and Space Administration", "org"),
        ("The U.S.", "loc"),
        ("the United States", "loc"),
        ("US", "loc"),
        ("The International Trade Commission", "org"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1], [2, 3], [4, 5, 6], [7]]


def test_dotted_and_plain_acronyms_merge_and_capitalised_stopwords_are_skipped() -> None:
    text = "The U.S. agreed and US signed. The Food And Drug Administration, or FDA, ruled."
    spans = [
        ("The U.S.", "loc"),
        ("US", "loc"),
        ("The Food And Drug Administration", "org"),
        ("FDA", "org"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1], [2, 3]]


def test_acronym_needs_all_uppercase_and_matching_initials() -> None:
    text = "Ibm is not it. International Business Machines is. IB too. Big Machines Inc."
    spans = [
        ("Ibm", "org"),
        ("International Business Machines", "org"),
        ("IB", "org"),
        ("Big Machines Inc.", "org"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1], [2], [3]]


def test_incompatible_types_block_acronyms_and_partial_names() -> None:
    # Rule 4: the weaker rules (acronyms, partial names) still need compatible entity types.
    text = (
        "Washington lies east. George Washington ruled. IBM sold. International Business "
        "Machines is a book. Curie is a crater. Marie Curie won."
    )
    spans = [
        ("Washington", "location"),
        ("George Washington", "person"),
        ("IBM", "organization"),
        ("International Business Machines", "work"),
        ("Curie", "location"),
        ("Marie Curie", "person"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1], [2], [3], [4], [5]]


def test_same_name_merges_whatever_the_types_homonyms_included() -> None:
    # Rule 2 trusts the name over the type head; the price is a true homonym in one document.
    text = "Jordan scored. Jordan borders Israel. Jordan again. 2001 was a year; 2001 people came."
    spans = [
        ("Jordan", "person"),
        ("Jordan", "location"),
        ("Jordan", None),
        ("2001", "time"),
        ("2001", "number"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1, 2], [3, 4]]


def test_type_comparison_is_case_insensitive() -> None:
    text = "Marie Curie wrote; Curie won."
    spans = [("Marie Curie", "Person"), ("Curie", "PERSON")]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1]]


def test_untyped_mentions_merge_with_typed_ones() -> None:
    text = "Marie Curie worked. Curie rested. NASA, National Aeronautics and Space Administration"
    spans = [
        ("Marie Curie", None),
        ("Curie", "person"),
        ("NASA", None),
        ("National Aeronautics and Space Administration", "org"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1], [2, 3]]


def test_untyped_mention_never_bridges_two_types() -> None:
    # "US" matches both long forms as an acronym and is untyped, so each pair is compatible; but
    # the check is between entities: once "US" joined the nearest long form (an organisation),
    # its entity is an organisation and can no longer take the location.
    text = "The United States won. Union Station opened. US officials and US fans came."
    spans = [
        ("The United States", "location"),
        ("Union Station", "organization"),
        ("US", None),
        ("US", None),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1, 2, 3]]


def test_lowercase_generic_words_never_partially_merge() -> None:
    text = "Acme Company hired. The company grew. A new company board met. Company Board spoke."
    spans = [
        ("Acme Company", "org"),
        ("The company", "org"),
        ("new company board", "org"),
        ("Company Board", "org"),
    ]
    # "the company" is a suffix/prefix of both longer mentions but is lowercase, so it is not a
    # proper name and stays alone; the capitalised "Company Board" is a proper suffix and merges.
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1], [2, 3]]


def test_stopword_short_forms_never_partially_merge() -> None:
    text = "Bank of America grew. Of course The Bank said so."
    spans = [("Bank of America", "org"), ("Of", "org"), ("The", "org")]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1], [2]]


def test_mentions_with_digits_merge_only_exactly() -> None:
    text = "In May 2001 and 2001 Apollo 11 flew; Apollo 11 landed, Apollo 13 failed, Apollo waited."
    spans = [
        ("May 2001", "date"),
        ("2001", "date"),
        ("Apollo 11", "mission"),
        ("Apollo 11", "mission"),
        ("Apollo 13", "mission"),
        ("Apollo", "mission"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1], [2, 3], [4], [5]]


def test_empty_normalisation_never_merges() -> None:
    text = "He said -- then -- and 's."
    spans = [("--", None), ("--", None), ("'s", None)]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1], [2]]


def test_mode_none_gives_one_cluster_per_mention_in_text_order() -> None:
    text = "Curie and Marie Curie and Curie."
    spans = [("Curie", "person"), ("Marie Curie", "person"), ("Curie", "person")]
    mentions = mentions_in(text, spans)
    reordered = [mentions[2], mentions[0], mentions[1]]
    assert cluster_mentions(reordered, mode="none") == [[1], [2], [0]]
    assert cluster_mentions(reordered) == [[1, 2, 0]]


def test_invalid_mode_names_allowed_values() -> None:
    with pytest.raises(ValueError, match=r"'clusters'.*rules, none"):
        cluster_mentions([], mode="clusters")  # type: ignore[arg-type]


def test_empty_input_gives_no_clusters() -> None:
    assert cluster_mentions([]) == []
    assert cluster_mentions([], mode="none") == []


def test_every_index_once_clusters_sorted_and_ordered_by_first_mention() -> None:
    text = (
        "Marie Curie met Pierre Curie at the Sorbonne. Curie and IBM, International Business "
        "Machines, met. The Sorbonne, 1903 and 1903. Curie left; Marie Curie stayed; Paris."
    )
    spans = [
        ("Marie Curie", "person"),
        ("Pierre Curie", "person"),
        ("the Sorbonne", "org"),
        ("Curie", "person"),
        ("IBM", "org"),
        ("International Business Machines", "org"),
        ("The Sorbonne", "org"),
        ("1903", "date"),
        ("1903", "date"),
        ("Curie", "person"),
        ("Marie Curie", "person"),
        ("Paris", None),
    ]
    in_text_order = mentions_in(text, spans)
    permutation = [7, 3, 11, 0, 9, 5, 1, 10, 2, 8, 4, 6]
    mentions = [in_text_order[i] for i in permutation]
    clusters = cluster_mentions(mentions)

    flat = [index for cluster in clusters for index in cluster]
    assert sorted(flat) == list(range(len(mentions)))
    for cluster in clusters:
        positions = [(mentions[i].start, mentions[i].end) for i in cluster]
        assert positions == sorted(positions)
    firsts = [mentions[cluster[0]].start for cluster in clusters]
    assert firsts == sorted(firsts)

    def as_text_order(cluster: list[int]) -> list[int]:
        return [permutation[i] for i in cluster]

    assert [as_text_order(c) for c in clusters] == [
        [0, 10],
        [1, 3, 9],
        [2, 6],
        [4, 5],
        [7, 8],
        [11],
    ]


def test_gobstoppers_with_three_predicted_types_become_one_entity() -> None:
    # The raw-text DocRED document of issue 11: one name, three types from the span head.
    text = (
        "Gobstoppers are hard sweets. Roald Dahl wrote about gobstoppers. "
        "Gobstoppers are sold in the United Kingdom."
    )
    spans = [
        ("Gobstoppers", "miscellaneous"),
        ("gobstoppers", "other"),
        ("Gobstoppers", "location"),
    ]
    mentions = mentions_in(text, spans, scores=[0.62, 0.55, 0.71])
    clusters = cluster_mentions(mentions)
    assert clusters == [[0, 1, 2]]
    # One mention per type, so the weighted vote is the highest-scoring mention's type.
    assert entity_type(mentions, clusters[0]) == "location"
    # Two mildly confident miscellaneous mentions outweigh one confident location.
    tilted = mentions_in(text, [("Gobstoppers", "miscellaneous"), ("gobstoppers", "miscellaneous"),
                                ("Gobstoppers", "location")], scores=[0.62, 0.55, 0.71])
    assert entity_type(tilted, cluster_mentions(tilted)[0]) == "miscellaneous"


def test_type_vote_is_weighted_by_score_not_count() -> None:
    text = "Apple sued. Apple won. Apple fell. Apple rose."
    spans = [("Apple", "organization"), ("Apple", "organization"), ("Apple", "miscellaneous"),
             ("Apple", None)]
    mentions = mentions_in(text, spans, scores=[0.2, 0.25, 0.9, 0.99])
    clusters = cluster_mentions(mentions)
    assert clusters == [[0, 1, 2, 3]]
    # By count: organization 2 - miscellaneous 1; by score: 0.45 - 0.9. The untyped mention
    # does not vote however confident it is.
    assert entity_type(mentions, clusters[0]) == "miscellaneous"
    # Without scores (all 1.0) the vote is by count.
    assert entity_type(mentions_in(text, spans), [0, 1, 2, 3]) == "organization"


def test_type_vote_ties_go_to_highest_single_score_then_first_mention() -> None:
    text = "Nile flows. Nile floods. Nile shines. Nile ends."
    spans = [("Nile", "location"), ("Nile", "location"), ("Nile", "other"), ("Nile", "person")]
    # location 0.1 + 0.2 (= 0.30000000000000004 in floats) and other 0.3 tie up to float
    # rounding; other has the best single score and wins.
    mentions = mentions_in(text, spans, scores=[0.1, 0.2, 0.3, 0.05])
    assert entity_type(mentions, [0, 1, 2, 3]) == "other"
    # Equal totals and equal best scores: the type mentioned first wins, whatever the input order.
    mentions = mentions_in(text, spans, scores=[0.5, 0.5, 0.5, 0.5])[1:]  # location, other, person
    assert entity_type(mentions, [0, 1, 2]) == "location"
    assert entity_type(mentions[::-1], [0, 1, 2]) == "location"


def test_type_vote_case_insensitive_untyped_gives_none_bad_scores_weigh_nothing() -> None:
    text = "Ada wrote. ADA ran. Ada slept."
    spans = [("Ada", "Person"), ("ADA", "organization"), ("Ada", "PERSON")]
    mentions = mentions_in(text, spans, scores=[0.4, 0.7, 0.4])
    # Person 0.8 (two spellings, one type) beats organization 0.7; the first spelling is kept.
    assert entity_type(mentions, [0, 1, 2]) == "Person"
    untyped = mentions_in(text, [("Ada", None), ("ADA", None)])
    assert entity_type(untyped, [0, 1]) is None
    nan = mentions_in(text, spans[:2], scores=[float("nan"), 0.1])
    assert entity_type(nan, [0, 1]) == "organization"


def test_partial_name_is_judged_by_the_type_vote_of_its_name() -> None:
    # Rule 6 asks whether the *names* are type-compatible, so both "Curie" mentions are treated
    # alike: here the name "Curie" votes person (0.8 against 0.4) and both attach.
    text = "Marie Curie won. Curie, a crater? No: Curie the chemist."
    spans = [("Marie Curie", "person"), ("Curie", "location"), ("Curie", "person")]
    mentions = mentions_in(text, spans, scores=[0.9, 0.4, 0.8])
    clusters = cluster_mentions(mentions)
    assert clusters == [[0, 1, 2]]
    assert entity_type(mentions, clusters[0]) == "person"
    # When the name votes location, neither "Curie" is a partial name of the person: they are
    # full names, merge with each other (rule 2) and stay apart from "Marie Curie".
    mentions = mentions_in(text, spans, scores=[0.9, 0.9, 0.3])
    clusters = cluster_mentions(mentions)
    assert clusters == [[0], [1, 2]]
    assert entity_type(mentions, clusters[1]) == "location"


def test_partial_name_skips_an_incompatible_nearer_long_form() -> None:
    # The nearest preceding long form is an organisation; the partial name attaches to the
    # nearest *compatible* one instead of staying alone.
    text = "Marie Curie won. The Curie Institute opened. Later Curie returned."
    spans = [
        ("Marie Curie", "person"),
        ("The Curie Institute", "organization"),
        ("Curie", "person"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 2], [1]]


def test_acronym_gate_uses_the_entity_vote_after_equal_names_merged() -> None:
    # "IBM" is typed location once and organization twice; rule 2 makes one entity of the three,
    # which votes organization, so the acronym rule may join the organisation's long form.
    text = "IBM grew. IBM sold. IBM left. International Business Machines filed."
    spans = [("IBM", "organization"), ("IBM", "location"), ("IBM", "organization"),
             ("International Business Machines", "organization")]
    mentions = mentions_in(text, spans, scores=[0.6, 0.7, 0.5, 0.9])
    assert cluster_mentions(mentions) == [[0, 1, 2, 3]]
    # If the location votes win, the acronym entity is a location and the long form stays apart.
    mentions = mentions_in(text, spans, scores=[0.2, 0.9, 0.2, 0.9])
    assert cluster_mentions(mentions) == [[0, 1, 2], [3]]


def test_group_mentions_passes_span_scores_into_the_entity_type() -> None:
    # The joint path: decoded spans (word indices, type index, score) -> entities.
    text = "Gobstoppers are sweets . People like gobstoppers . Gobstoppers last ."
    words = split_words(text)
    tokens = words.tokens
    at = [i for i, t in enumerate(tokens) if t.casefold() == "gobstoppers"]
    type_names = ["location", "miscellaneous", "other"]
    preds = [
        SpanPrediction(at[0], at[0] + 1, 1, 0.62),  # miscellaneous
        SpanPrediction(at[1], at[1] + 1, 2, 0.55),  # other
        SpanPrediction(at[2], at[2] + 1, 0, 0.71),  # location
    ]
    grouped = group_mentions(preds, words, type_names, "rules")
    assert len(grouped.entities) == 1
    assert grouped.entities[0].type == "location"
    assert grouped.mention_scores == [[0.62, 0.55, 0.71]]
    assert [(m.start, m.end) for m in grouped.entities[0].mentions] == [
        (words.starts[i], words.ends[i]) for i in at
    ]
    assert [e.type for e in group_mentions(preds, words, type_names, "none").entities] == [
        "miscellaneous", "other", "location"
    ]


def test_a_place_is_not_a_part_of_a_longer_place() -> None:
    """Rule 6 by type (chosen on Re-DocRED dev gold mentions): parts of place names are other
    places, so they stay apart; a person's first and last names and an organisation's suffix
    still join, and so does a name before a legal form."""
    text = "Pennsylvania borders Western Pennsylvania ; Caryville Dam is near Caryville ."
    spans = [("Pennsylvania", "location"), ("Western Pennsylvania", "location"),
             ("Caryville Dam", "location"), ("Caryville", "location")]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1], [2], [3]]
    text = "The Norwegian Parliament met ; Parliament voted . Cove Lake State Park is by Cove Lake ."
    spans = [("Norwegian Parliament", "organization"), ("Parliament", "organization"),
             ("Cove Lake State Park", "organization"), ("Cove Lake", "organization")]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1], [2], [3]]
    text = "Acme Inc. sued ; Acme lost . Rick Astley sang ; Astley and Rick smiled ."
    spans = [("Acme Inc.", "organization"), ("Acme", "organization"), ("Rick Astley", "person"),
             ("Astley", "person"), ("Rick", "person")]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 1], [2, 3, 4]]


def test_a_punctuation_mention_next_to_names_is_left_alone() -> None:
    """A mention with no name (pure punctuation, what a low threshold lets through) is never
    merged and does not break the partial-name rule's type lookup."""
    text = "Marie Curie , Curie ."
    spans = [("Marie Curie", "person"), (",", "person"), ("Curie", "person"), (".", None)]
    assert cluster_mentions(mentions_in(text, spans)) == [[0, 2], [1], [3]]
