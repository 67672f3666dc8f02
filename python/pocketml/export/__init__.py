"""Deployment: Core ML export with pocketml's exact compressed weights, and golden
bundles that the Swift harness validates against."""

from pocketml.export.golden import BundleError, GoldenBundle, golden, load_golden


def __getattr__(name):
    # The Core ML side needs torch and coremltools; import it only when asked for.
    if name in ("to_coreml", "inspect_coreml", "CoreMLExport"):
        from pocketml.export import coreml

        return getattr(coreml, name)
    raise AttributeError(f"module 'pocketml.export' has no attribute {name!r}")


__all__ = ["BundleError", "CoreMLExport", "GoldenBundle", "golden", "inspect_coreml", "load_golden", "to_coreml"]
