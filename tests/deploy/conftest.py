"""Fixtures of the deploy tier: each overlay rendered once per session."""

from __future__ import annotations

import pytest

from tests.deploy.manifests import OVERLAYS_DIR, Manifest, overlay_names, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[Manifest]]:
    """Overlay name -> the objects it renders."""
    return {name: render(OVERLAYS_DIR / name) for name in overlay_names()}


@pytest.fixture(params=overlay_names())
def manifests(request: pytest.FixtureRequest, rendered: dict[str, list[Manifest]]) -> list[Manifest]:
    """One overlay's objects; tests taking this run once per overlay."""
    return rendered[request.param]
