"""Catalog search: match every query term against a feature and its feature set, then rank.

Matching is done in Python over the catalog rows, so it behaves the same on SQLite and PostgreSQL
(and handles non-ASCII text that JSON columns would escape); catalogs are small enough for this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from enum import IntEnum


class Rank(IntEnum):
    """How well a feature matches a query; lower ranks sort first."""

    EXACT_NAME = 0  # the feature name equals the query or one of its terms
    NAME = 1  # every term is part of the feature name
    FEATURE = 2  # every term is found in the feature itself (name, description, tags)
    FEATURE_SET = 3  # some term is found only in the feature set (name, description, tags)


def query_terms(query: str) -> list[str]:
    """The case-folded, whitespace-separated terms of ``query``."""
    return [term.casefold() for term in query.split()]


def searchable_text(*parts: str | None, tags: Mapping[str, str] | None = None) -> str:
    """One case-folded string holding ``parts`` and the keys and values of ``tags``."""
    words = [p for p in parts if p]
    for key, value in (tags or {}).items():
        words.extend((key, value))
    return "\n".join(words).casefold()


def rank_feature(terms: Iterable[str], *, name: str, feature_text: str, feature_set_text: str) -> Rank | None:
    """The rank of one feature for ``terms``, or None when a term matches nowhere.

    ``feature_text`` and ``feature_set_text`` come from ``searchable_text``.

    >>> rank_feature(["amount"], name="amount", feature_text="amount", feature_set_text="txns")
    <Rank.EXACT_NAME: 0>
    """
    terms = list(terms)
    folded_name = name.casefold()
    in_feature = [t in feature_text for t in terms]
    if not all(hit or t in feature_set_text for hit, t in zip(in_feature, terms, strict=True)):
        return None
    if folded_name in terms or folded_name == " ".join(terms):
        return Rank.EXACT_NAME
    if all(t in folded_name for t in terms):
        return Rank.NAME
    if all(in_feature):
        return Rank.FEATURE
    return Rank.FEATURE_SET
