"""Files and directories written whole or not at all: the content goes to a temporary file or
directory beside the target, which is renamed onto it only once complete (a crash or an error
never leaves half a file, half a model directory or half a checkpoint)."""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def replaced_on_success(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` (its parent created): renamed onto ``path`` when the
    block ends without an error, removed when it raises."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def replaced_dir_on_success(path: str | Path, staging: str | None = None) -> Iterator[Path]:
    """An empty staging directory beside ``path`` (named ``staging``, default ``<name>.tmp``):
    it replaces ``path`` as a whole when the block ends without an error, and is removed when it
    raises."""
    target = Path(path)
    tmp = target.with_name(staging or target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with replaced_on_success(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
