"""Files written whole or not at all: the content goes to a temporary file beside the target,
which is renamed onto it only once complete (a crash or an error never leaves half a file)."""

from __future__ import annotations

import json
import os
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


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    with replaced_on_success(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2))
