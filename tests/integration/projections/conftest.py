"""The projection fixtures live beside the e2e tests that use them most; this re-exports them."""

from __future__ import annotations

from tests.e2e.projections.conftest import harness

__all__ = ["harness"]
