"""Deployment: golden bundles that the Swift harness validates against (Core ML export to come)."""

from pocketml.export.golden import BundleError, GoldenBundle, golden, load_golden

__all__ = ["BundleError", "GoldenBundle", "golden", "load_golden"]
