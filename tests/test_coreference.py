"""Rule-based within-document coreference (glidre_core.coreference) on hand-made documents."""

from __future__ import annotations

import pytest

from glidre_core.coreference import MentionCandidate, cluster_mentions


def mentions_in(text: str, spans: list[tuple[str, str | None]]) -> list[MentionCandidate]:
    """Mentions for ``(surface, type)`` pairs, located left to right in ``text``."""
    found, cursor = [], 0
    for surface, entity_type in spans:
        start = text.index(surface, cursor)
        found.append(MentionCandidate(start, start + len(surface), surface, entity_type))
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
    # Both "Curie" mentions are equal strings; merging them first (rule 3) and then attaching each
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


def test_incompatible_types_block_every_rule() -> None:
    text = (
        "Jordan scored. Jordan borders Israel. Washington lies east. George Washington ruled. "
        "IBM sold. International Business Machines is a book."
    )
    spans = [
        ("Jordan", "person"),
        ("Jordan", "location"),
        ("Washington", "location"),
        ("George Washington", "person"),
        ("IBM", "organization"),
        ("International Business Machines", "work"),
    ]
    assert cluster_mentions(mentions_in(text, spans)) == [[0], [1], [2], [3], [4], [5]]


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
    # Pairwise each untyped "Jordan" is compatible with both, but a cluster holds one type.
    text = "Jordan scored. Jordan borders Israel. Jordan again. Jordan once more."
    spans = [("Jordan", "person"), ("Jordan", "location"), ("Jordan", None), ("Jordan", None)]
    clusters = cluster_mentions(mentions_in(text, spans))
    assert clusters == [[0], [1, 2, 3]]


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
