"""Shared test configuration."""

from __future__ import annotations

from hypothesis import HealthCheck, settings

settings.register_profile(
    "default", deadline=None, suppress_health_check=[HealthCheck.too_slow], max_examples=100
)
settings.register_profile("ci", parent=settings.get_profile("default"), max_examples=100)
settings.load_profile("default")


# In-process pytester runs (the conformance tests) restore sys.modules afterwards, so a
# module first imported inside such a run is imported again later, and two copies of a
# class break isinstance checks (cryptography's Rust core: "curve must be an
# EllipticCurve instance", "Extension not supported").  Load the whole package (and
# what it imports) before any such run.
def _import_the_package() -> None:
    import importlib
    import pkgutil

    import switchy

    for module in pkgutil.walk_packages(switchy.__path__, "switchy."):
        if ".conformance.test_" not in module.name:
            importlib.import_module(module.name)


_import_the_package()
