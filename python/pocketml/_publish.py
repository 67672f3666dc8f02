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
    back if the second rename does not happen). Everything under `source` reaches
    the disk first: a crash after the rename must not leave empty or short files
    under the published name."""
    _sync_tree(source)
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
    _sync(target.parent)  # the rename itself survives a crash
    if retired is None:
        return
    if retired.is_dir() and not retired.is_symlink():
        shutil.rmtree(retired, ignore_errors=True)
    else:
        retired.unlink()


def _sync(path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (or `root` itself, a file)."""
    if not root.is_dir():
        _sync(root)
        return
    for directory, _, files in os.walk(root):
        for name in files:
            _sync(os.path.join(directory, name))
        _sync(directory)


def _make_parents(directory: Path) -> list[Path]:
    """mkdir -p; returns the directories it created, outermost first."""
    missing = []
    while not directory.exists():
        missing.append(directory)
        directory = directory.parent
    for d in reversed(missing):
        d.mkdir(exist_ok=True)
    return missing[::-1]
