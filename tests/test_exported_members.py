"""Guard the public API: ``distextract.__all__`` is sorted and every name in it exists."""

from __future__ import annotations

import distextract


def test_all_is_sorted_and_unique():
    names = list(distextract.__all__)
    assert names == sorted(names)
    assert len(names) == len(set(names))


def test_every_exported_member_is_importable():
    for name in distextract.__all__:
        assert hasattr(distextract, name), name
        member = getattr(distextract, name)
        if name.startswith("__"):
            continue
        if isinstance(member, type) or callable(member):
            # public classes and functions live in distextract (not re-exported from a dependency)
            assert member.__module__.startswith("distextract"), (name, member.__module__)


def test_the_documented_api_is_exported():
    documented = {
        "extract", "ExtractionResult", "ExtractConfig", "ReluNetwork", "targets",
        "evaluate_fidelity", "FidelityReport", "ConfigError", "OracleShapeError",
        "OracleValueError", "NonDeterministicOracle", "BudgetExhausted", "__version__",
    }
    assert documented <= set(distextract.__all__)


def test_star_import_gives_exactly_all():
    namespace: dict = {}
    exec("from distextract import *", namespace)  # noqa: S102 -- the star import under test
    namespace.pop("__builtins__")
    assert set(namespace) == set(distextract.__all__)
