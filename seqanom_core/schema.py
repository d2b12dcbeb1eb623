"""The canonical event schema every ingested log is mapped to."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: Behaviour names, in code order: ``behavior`` column values are indexes into this tuple.
BEHAVIORS: tuple[str, ...] = ("view", "cart", "fav", "buy")
BEHAVIOR_CODE: dict[str, int] = {name: code for code, name in enumerate(BEHAVIORS)}

#: Required columns of an events table, in this order. ``site`` may follow (optional).
EVENT_COLUMNS: tuple[str, ...] = ("user_id", "item_id", "category_id", "behavior", "timestamp")
OPTIONAL_COLUMNS: tuple[str, ...] = ("site",)

#: Arrow schema of a canonical events table.
#: ids are strings (any site's ids fit), behaviour is an int8 code into BEHAVIORS,
#: timestamp is seconds since the Unix epoch (UTC) as float64.
EVENT_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_id", pa.string(), nullable=False),
        pa.field("category_id", pa.string(), nullable=False),
        pa.field("behavior", pa.int8(), nullable=False),
        pa.field("timestamp", pa.float64(), nullable=False),
    ]
)
SITE_FIELD = pa.field("site", pa.string(), nullable=False)

#: Plausible window of e-commerce event times, Unix seconds (inclusive): 1990-01-01T00:00:00Z
#: to 2100-01-01T00:00:00Z. Ingest quarantines rows outside it (e.g. milliseconds read as seconds).
TIMESTAMP_MIN: float = 631152000.0
TIMESTAMP_MAX: float = 4102444800.0
#: The window in words, for messages.
TIMESTAMP_WINDOW: str = "1990-01-01..2100-01-01 UTC"



def encode_values(values: pa.Array | pa.ChunkedArray, sort: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Dictionary-encode a column: (int64 code per row ``(n,)``, distinct values ``(k,)`` as an
    object array), the distinct values in first-seen order, or sorted by their text (``sort``)."""
    arr = values.combine_chunks() if isinstance(values, pa.ChunkedArray) else values
    encoded = pc.dictionary_encode(arr)
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    distinct = np.asarray(encoded.dictionary.to_pylist(), dtype=object)
    if not sort:
        return codes, distinct
    order = np.argsort(distinct.astype(str), kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return rank[codes], distinct[order]


def events_from_arrays(
    user_id: np.ndarray | list,
    item_id: np.ndarray | list,
    category_id: np.ndarray | list,
    behavior: np.ndarray | list,
    timestamp: np.ndarray | list,
    site: np.ndarray | list | None = None,
) -> pa.Table:
    """Build a canonical events table from column arrays (ids are cast to strings)."""
    cols = {
        "user_id": pa.array(np.asarray(user_id).astype(str), pa.string()),
        "item_id": pa.array(np.asarray(item_id).astype(str), pa.string()),
        "category_id": pa.array(np.asarray(category_id).astype(str), pa.string()),
        "behavior": pa.array(np.asarray(behavior, dtype=np.int8), pa.int8()),
        "timestamp": pa.array(np.asarray(timestamp, dtype=np.float64), pa.float64()),
    }
    schema = EVENT_SCHEMA
    if site is not None:
        cols["site"] = pa.array(np.asarray(site).astype(str), pa.string())
        schema = schema.append(SITE_FIELD)
    return pa.table(cols, schema=schema)


def check_events(table: pa.Table, source: str = "<events>") -> pa.Table:
    """Check that a table has the canonical columns and types; return it with columns ordered."""
    from seqanom_core.errors import SchemaError

    problems = []
    for field in EVENT_SCHEMA:
        if field.name not in table.column_names:
            problems.append(f"missing column '{field.name}'")
        elif not table.schema.field(field.name).type.equals(field.type):
            problems.append(
                f"column '{field.name}' has type {table.schema.field(field.name).type}, "
                f"expected {field.type}"
            )
    if problems:
        raise SchemaError(f"{source}: " + "; ".join(problems))
    names = list(EVENT_COLUMNS) + [c for c in OPTIONAL_COLUMNS if c in table.column_names]
    return table.select(names)
