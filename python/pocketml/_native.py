"""The only module that imports the compiled extension; everything else goes through here."""

try:
    from pocketml import _core as core
except ImportError as exc:  # pragma: no cover - only when the package was not built
    raise ImportError(
        "pocketml's native extension (pocketml._core) is missing: install the package with "
        "`pip install .` or `make dev` rather than importing it from the source tree"
    ) from exc

__all__ = ["core"]
