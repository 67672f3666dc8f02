"""Writing a directory so that it appears complete or not at all: build it in a
hidden staging directory beside the target, then rename it into place. Used by
the token-shard writer, golden bundles and the Core ML exporter."""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from pathlib import Path


@contextlib.contextmanager
def staged_directory(target: Path, prefix: str):
    """Yields a new staging directory beside `target` (its parents are created).
    On an exception the staging directory and the parents it created are removed;
    otherwise `publish` it before the block ends or it is removed all the same."""
    created = _make_parents(target.parent)
    staging = target.parent / f".{prefix}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        staging.mkdir()
        staging.chmod(0o755)
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for directory in reversed(created):  # deepest first; rmdir leaves any a concurrent writer filled
            try:
                directory.rmdir()
            except OSError:
                break
        raise
    shutil.rmtree(staging, ignore_errors=True)  # left over when `publish` took only a part of it


def publish(source: Path, target: Path) -> None:
    """Renames `source` to `target` (one atomic rename when `target` is new; an
    existing one, directory or file, is first moved aside, then removed, and moved
    back if the second rename does not happen)."""
    retired = None
    if target.exists() or target.is_symlink():
        retired = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(target, retired)
    try:
        os.rename(source, target)
    except BaseException:
        if retired is not None:
            os.rename(retired, target)
        raise
    fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself survives a crash
    finally:
        os.close(fd)
    if retired is None:
        return
    if retired.is_dir() and not retired.is_symlink():
        shutil.rmtree(retired, ignore_errors=True)
    else:
        retired.unlink()


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p; returns the directories it created, outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return missing[::-1]
