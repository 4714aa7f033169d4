"""The public surface of ``gristmill``: an explicit list (so it cannot drift) and a fast, light import."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import gristmill as gm

EXPECTED_PUBLIC_NAMES = [
    "ApplyPlan",
    "DataLossError",
    "FieldChange",
    "PlanItem",
    "BackfillError",
    "DataInterval",
    "DataStatus",
    "JobRecord",
    "JobStatus",
    "MaterializationSettings",
    "OnlineResult",
    "OnlineStoreError",
    "StoreUnavailableError",
    "Column",
    "ConfigError",
    "DuckDBEngine",
    "Duration",
    "Entity",
    "Feature",
    "FeatureFrame",
    "FeatureRetrievalSpec",
    "FeatureSet",
    "FeatureSetSpec",
    "FeatureStore",
    "FeatureType",
    "GristmillError",
    "ImmutableError",
    "NotFoundError",
    "RegistryError",
    "RetrievalError",
    "RetrievalResult",
    "SourceError",
    "SpecError",
    "TransformationError",
    "__version__",
    "Scheduler",
    "RemoteFeatureStore",
    "AccessDeniedError",
    "Model",
    "FeatureSetStatistics",
    "WindowStatistics",
    "FeatureStatistics",
    "HistogramBin",
    "TopValue",
    "Freshness",
    "StoreFreshness",
]

HEAVY_MODULES = ["duckdb", "pandas", "sqlalchemy", "deltalake", "pyarrow"]


def test_all_is_the_expected_list() -> None:
    assert sorted(gm.__all__) == sorted(EXPECTED_PUBLIC_NAMES)
    assert len(gm.__all__) == len(set(gm.__all__))


def test_every_public_name_resolves() -> None:
    for name in gm.__all__:
        assert getattr(gm, name) is not None, name
    assert isinstance(gm.__version__, str) and gm.__version__


def test_public_errors_form_one_tree() -> None:
    errors = [gm.SpecError, gm.ConfigError, gm.RegistryError, gm.NotFoundError, gm.ImmutableError,
              gm.RetrievalError, gm.SourceError, gm.TransformationError]
    assert all(issubclass(error, gm.GristmillError) for error in errors)
    assert issubclass(gm.NotFoundError, gm.RegistryError) and issubclass(gm.ImmutableError, gm.RegistryError)


def test_import_is_fast_and_light() -> None:
    probe = textwrap.dedent(f"""
        import json, sys, time
        started = time.perf_counter()
        import gristmill
        elapsed = time.perf_counter() - started
        heavy = [m for m in {HEAVY_MODULES!r} if m in sys.modules]
        print(json.dumps({{"seconds": elapsed, "heavy": heavy}}))
    """)
    # best of three: the limit is about what the import does, not about a busy machine
    runs = [json.loads(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                                      timeout=60).stdout) for _ in range(3)]
    assert all(run["heavy"] == [] for run in runs), runs
    assert min(run["seconds"] for run in runs) < 0.5, runs
