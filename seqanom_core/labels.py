"""Shopper labels: a table of ``user_id``, ``is_anomalous`` (0/1) and an optional anomaly ``kind``,
read from a CSV file or given as a frame, and lined up with the shoppers a detector scored.

One reader for every caller (``seqanom score --labels``, a site's labelled test shoppers, the
simulation's injected anomalies): errors name the file, the line and the field.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seqanom_core.errors import ConfigError

if TYPE_CHECKING:  # pandas costs a site's ClientApp 0.25 s of start; only labelled runs use it
    import pandas as pd

LABEL_COLUMNS = ("user_id", "is_anomalous")


def check_labels(frame: pd.DataFrame, source: str = "labels") -> pd.DataFrame:
    """A checked copy of a labels frame: ``user_id`` str, ``is_anomalous`` int64 0/1, ``kind``
    str ("" where unknown); raises ``ConfigError`` naming ``source`` for a missing column, a flag
    other than 0/1 (with its CSV line) or a repeated shopper."""
    import pandas as pd

    for col in LABEL_COLUMNS:
        if col not in frame.columns:
            raise ConfigError(f"{source}: labels need a '{col}' column (found {list(frame.columns)})")
    flags = frame["is_anomalous"].astype(str).str.strip()
    bad = ~flags.isin(["0", "1"])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise ConfigError(f"{source}: line {row + 2}: is_anomalous must be 0 or 1, not "
                          f"{frame['is_anomalous'].iloc[row]!r} ({int(bad.sum())} such rows)")
    ids = frame["user_id"].astype(str)
    dup = ids.duplicated(keep=False)
    if dup.any():
        raise ConfigError(f"{source}: user_id {ids[dup].iloc[0]!r} is listed more than once "
                          f"({int(dup.sum())} rows share an id)")
    kinds = (frame["kind"].fillna("").astype(str) if "kind" in frame.columns
             else pd.Series([""] * len(frame), index=frame.index))
    return pd.DataFrame({"user_id": ids.to_numpy(dtype=object),
                         "is_anomalous": flags.astype(np.int64).to_numpy(),
                         "kind": kinds.to_numpy(dtype=object)})


def read_labels(path: str | Path) -> pd.DataFrame:
    """A labels CSV (``user_id,is_anomalous[,kind]``) -> the checked frame of ``check_labels``."""
    import pandas as pd

    try:
        frame = pd.read_csv(path, dtype={"user_id": str}, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise ConfigError(f"{path}: cannot read labels: {err}") from err
    return check_labels(frame, str(path))


def align_labels(ids: Sequence[str] | np.ndarray, labels: pd.DataFrame,
                 source: str = "labels") -> tuple[np.ndarray, np.ndarray]:
    """(0/1 labels int64, kinds object) for the shoppers ``ids``, in their order; raises
    ``ConfigError`` when a shopper has no label."""
    import pandas as pd

    table = check_labels(labels, source).set_index("user_id")
    keys = pd.Index(np.asarray(ids).astype(str))
    missing = keys.difference(table.index)
    if len(missing):
        raise ConfigError(f"{source}: {len(missing)} scored shoppers are not in labels.user_id "
                          f"(no label), e.g. {list(missing[:5])}")
    rows = table.loc[keys]
    return rows["is_anomalous"].to_numpy(np.int64), rows["kind"].to_numpy(dtype=object)
