"""Typed references (``gristmill.spec.refs``): every way a ``name:version`` or ``[store/]name:version:feature``
text is read, one line per case, and the user-facing error of each malformed one."""

from __future__ import annotations

from typing import Any

import pytest

import gristmill as gm
from gristmill.errors import RetrievalError, SpecError
from gristmill.spec.refs import FeatureRef, VersionRef, parse_name_and_version, split_store
from gristmill.spec.retrieval_spec import FeatureReference

# -- name:version ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("transactions:1", VersionRef("transactions", "1")),
    ("account:v2", VersionRef("account", "v2")),
    (" account:1 ", VersionRef("account", "1")),
    ("\taccount:1\n", VersionRef("account", "1")),
    ("a.b-c_d:1.0", VersionRef("a.b-c_d", "1.0")),
])
def test_version_ref_parses(text: str, expected: VersionRef) -> None:
    ref = VersionRef.parse(text)
    assert ref == expected
    assert str(ref) == f"{expected.name}:{expected.version}"
    name, version = ref                                   # still unpacks as the (name, version) pair
    assert (name, version) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("a", "entity reference 'a' must look like name:version, e.g. account:1"),
    ("a:", "entity reference 'a:' must look like name:version, e.g. account:1"),
    (":1", "entity reference ':1' must look like name:version, e.g. account:1"),
    ("a:1:", "entity reference 'a:1:' must look like name:version, e.g. account:1"),
    ("a:1:f", "entity reference 'a:1:f' must look like name:version, e.g. account:1"),
    ("a:1:f:g", "entity reference 'a:1:f:g' must look like name:version, e.g. account:1"),
    ("", "entity reference '' must look like name:version, e.g. account:1"),
    ("   ", "entity reference '   ' must look like name:version, e.g. account:1"),
    (":", "entity reference ':' must look like name:version, e.g. account:1"),
    (1, "entity reference: 1 is not a string; write name:version, e.g. account:1"),
    (None, "entity reference: None is not a string; write name:version, e.g. account:1"),
    (["a", "1"], "entity reference: ['a', '1'] is not a string; write name:version, e.g. account:1"),
])
def test_a_malformed_version_ref_names_the_field_and_the_form(text: Any, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        VersionRef.parse(text, what="entity reference", example="account:1")
    assert str(raised.value) == message


def test_a_version_ref_raises_the_error_type_asked_for() -> None:
    with pytest.raises(RetrievalError, match="feature_set 'a' must look like name:version"):
        VersionRef.parse("a", what="feature_set", error=RetrievalError)


@pytest.mark.parametrize(("text", "expected"), [
    ("scores:2", (None, VersionRef("scores", "2"))),
    ("risk/scores:2", ("risk", VersionRef("scores", "2"))),
    (" risk/scores:2 ", ("risk", VersionRef("scores", "2"))),
    ("/scores:2", (None, VersionRef("scores", "2"))),
])
def test_store_qualified_version_ref_parses(text: str, expected: tuple[str | None, VersionRef]) -> None:
    assert VersionRef.parse_qualified(text) == expected


@pytest.mark.parametrize("text", ["a/b/scores:2", "risk/scores", "risk/scores:2:f", "risk/:2", "risk/"])
def test_a_malformed_store_qualified_version_ref(text: str) -> None:
    with pytest.raises(SpecError) as raised:
        VersionRef.parse_qualified(text, what="feature_set")
    assert str(raised.value) == (f"feature_set '{text}' must look like name:version or store/name:version, "
                                 "e.g. transactions:1")


@pytest.mark.parametrize(("text", "expected"), [
    ("risk/scores:2", ("risk", "scores:2")),
    ("scores:2", (None, "scores:2")),
    ("a/b/c:1", ("a/b", "c:1")),
    ("/c:1", (None, "c:1")),
])
def test_split_store(text: str, expected: tuple[str | None, str]) -> None:
    assert split_store(text) == expected


# -- name[:version] (a latest-version lookup or a filter) ----------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("transactions", ("transactions", None)),
    (" transactions ", ("transactions", None)),
    ("transactions:1", ("transactions", "1")),
    (" transactions:1 ", ("transactions", "1")),
])
def test_name_and_optional_version(text: str, expected: tuple[str, str | None]) -> None:
    assert parse_name_and_version(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("", "--model '' must look like name or name:version, e.g. transactions:1"),
    (" ", "--model ' ' must look like name or name:version, e.g. transactions:1"),
    ("a:", "--model 'a:' must look like name or name:version, e.g. transactions:1"),
    (":1", "--model ':1' must look like name or name:version, e.g. transactions:1"),
    ("a:1:2", "--model 'a:1:2' must look like name or name:version, e.g. transactions:1"),
    (3, "--model: 3 is not a string; write name or name:version, e.g. transactions:1"),
])
def test_a_malformed_name_and_optional_version(text: Any, message: str) -> None:
    with pytest.raises(SpecError) as raised:
        parse_name_and_version(text, what="--model")
    assert str(raised.value) == message


# -- [store/]feature_set:version:feature --------------------------------------------------------------------

@pytest.mark.parametrize(("text", "expected"), [
    ("a:1:f", FeatureRef(None, "a", "1", "f")),
    (" a:1:f ", FeatureRef(None, "a", "1", "f")),
    ("s/a:1:f", FeatureRef("s", "a", "1", "f")),
    ("/a:1:f", FeatureRef(None, "a", "1", "f")),
    ("transactions:v2:amount_7d_sum", FeatureRef(None, "transactions", "v2", "amount_7d_sum")),
])
def test_feature_ref_parses(text: str, expected: FeatureRef) -> None:
    ref = FeatureRef.parse(text)
    assert ref == expected
    assert ref.feature_set_ref == VersionRef(expected.feature_set, expected.version)
    assert str(ref) == ref.text == text.strip().removeprefix("/")
    assert FeatureRef.parse(ref.text) == ref                                      # the text round-trips


@pytest.mark.parametrize(("text", "message"), [
    ("a", "features: 'a' must look like 'feature_set:version:feature'; e.g. 'transactions:1:amount_7d_sum'"),
    ("a:", "features: 'a:' must look like 'feature_set:version:feature'; e.g. 'transactions:1:amount_7d_sum'"),
    (":1", "features: ':1' must look like 'feature_set:version:feature'; e.g. 'transactions:1:amount_7d_sum'"),
    ("a:1", "features: 'a:1' must look like 'feature_set:version:feature'; is the feature missing? "
            "e.g. 'a:1:amount_7d_sum'"),
    ("a:f", "features: 'a:f' must look like 'feature_set:version:feature'; is the version missing? e.g. 'a:1:f'"),
    ("a:1:", "features: 'a:1:' must look like 'feature_set:version:feature'; e.g. 'transactions:1:amount_7d_sum'"),
    ("a::f", "features: 'a::f' must look like 'feature_set:version:feature'; e.g. 'transactions:1:amount_7d_sum'"),
    ("a:1:f:g", "features: 'a:1:f:g' must look like 'feature_set:version:feature'; "
                "e.g. 'transactions:1:amount_7d_sum'"),
    ("x/s/a:1:f", "features: 'x/s/a:1:f' must look like 'feature_set:version:feature'; "
                  "e.g. 'transactions:1:amount_7d_sum'"),
    ("   ", "features: '   ' must look like 'feature_set:version:feature'; e.g. 'transactions:1:amount_7d_sum'"),
    (7, "features: 7 is not a string; write 'feature_set:version:feature', e.g. 'transactions:1:amount_7d_sum'"),
    (None, "features: None is not a string; write 'feature_set:version:feature', "
           "e.g. 'transactions:1:amount_7d_sum'"),
])
def test_a_malformed_feature_ref_is_a_retrieval_error(text: Any, message: str) -> None:
    with pytest.raises(RetrievalError) as raised:
        FeatureRef.parse(text)
    assert str(raised.value) == message


def test_feature_ref_is_frozen_and_importable_where_it_was() -> None:
    from gristmill.retrieval import FeatureRef as from_retrieval
    from gristmill.spec.retrieval_spec import FeatureRef as from_retrieval_spec

    assert from_retrieval is from_retrieval_spec is FeatureRef
    ref = FeatureRef.parse("a:1:f")
    with pytest.raises(AttributeError):
        ref.feature = "g"  # type: ignore[misc]


# -- the YAML boundary: parsed once, when the spec is validated ------------------------------------------------

@pytest.mark.parametrize(("feature_set", "expected"), [
    ("fs:1", FeatureRef(None, "fs", "1", "f")),
    ("risk/fs:2", FeatureRef("risk", "fs", "2", "f")),
    (" fs:1 ", FeatureRef(None, "fs", "1", "f")),
])
def test_a_retrieval_spec_entry_is_parsed_when_validated(feature_set: str, expected: FeatureRef) -> None:
    assert FeatureReference(feature_set=feature_set, feature_name="f").feature_ref == expected


def test_azure_ml_split_names_are_parsed_too() -> None:
    entry = FeatureReference.model_validate({"featureset_name": "fs", "featureset_version": 3, "feature_name": "f",
                                             "output_name": "renamed"})
    assert entry.feature_ref == FeatureRef(None, "fs", "3", "f", "renamed")


@pytest.mark.parametrize("feature_set", ["fs", "fs:", ":1", "fs:1:f", "a/b/fs:1"])
def test_a_malformed_retrieval_spec_entry_names_the_file_and_field(tmp_path: Any, feature_set: str) -> None:
    path = tmp_path / "feature_retrieval_spec.yaml"
    path.write_text(f"feature_stores:\n- features:\n  - feature_set: '{feature_set}'\n    feature_name: f\n",
                    encoding="utf-8")
    with pytest.raises(SpecError) as raised:
        gm.FeatureRetrievalSpec.load(path)
    message = str(raised.value)
    assert str(path) in message and f"feature_set '{feature_set}' must look like name:version" in message, message
