"""The :class:`FormatSpec`: which source column feeds each canonical event field
(``seqanom_core.schema.EVENT_SCHEMA``), how behaviour values and timestamps are written, and
how a file without a header lays its columns out."""

from __future__ import annotations

import codecs
import re
from dataclasses import dataclass, field

from seqanom_core.errors import ConfigError
from seqanom_core.schema import BEHAVIOR_CODE, BEHAVIORS

#: Ways a timestamp column can be written.
TIME_KINDS: tuple[str, ...] = ("unix_s", "unix_ms", "datetime", "date", "month_day")

#: Canonical fields a source column can feed (``site`` is optional).
MAPPED_FIELDS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "category_id",
    "behavior",
    "timestamp",
    "site",
)

_CANONICAL_VALUES: tuple[tuple[str, str], ...] = tuple((b, b) for b in BEHAVIORS) + tuple(
    (str(code), b) for code, b in enumerate(BEHAVIORS)
)


def _is_text_encoding(name: str) -> bool:
    """Return whether Python can decode bytes as text in encoding ``name``."""
    try:
        codecs.lookup(name)
        b"ab".decode(name, "ignore")  # codecs such as base64 or rot13 are not text encodings
    except (LookupError, TypeError, ValueError):
        return False
    return True


def normalize_name(name: str) -> str:
    """Return a column name folded for header matching (lower case, no ``_``/``-``/spaces/quotes)."""
    return re.sub(r"[\s_\-\"'\ufeff]", "", name).lower()


@dataclass(frozen=True)
class FormatSpec:
    """How one input format's columns map to the canonical event schema."""

    name: str
    user_id: str
    item_id: str
    timestamp: str
    #: Source column of the category; ``None`` means "use the item id".
    category_id: str | None = None
    #: Source column of the behaviour; ``None`` means every event is ``constant_behavior``.
    behavior: str | None = None
    site: str | None = None
    #: When True a missing ``site`` column is not an error (the table then has no site).
    site_optional: bool = False
    #: Column order of a headerless file (source names); empty means a header is required.
    columns: tuple[str, ...] = ()
    #: Extra accepted header names: ``((column, (alias, ...)), ...)``.
    aliases: tuple[tuple[str, tuple[str, ...]], ...] = ()
    delimiter: str = ","
    #: Source behaviour value -> canonical name (matched case-insensitively, trimmed).
    behaviors: tuple[tuple[str, str], ...] = _CANONICAL_VALUES
    #: Known behaviour values that are not modelled: quarantined under their own reason.
    dropped_behaviors: tuple[str, ...] = ()
    constant_behavior: str = "view"
    time_kind: str = "unix_s"
    #: Source column of milliseconds added to the timestamp (Diginetica ``timeframe``).
    time_offset_ms: str | None = None
    #: Year of ``month_day`` dates (which carry none).
    year: int | None = None
    #: Text encodings tried in order (the first that decodes the file's start is used).
    encodings: tuple[str, ...] = ("utf-8",)
    #: Other layouts of the same format, chosen by header names or field count.
    variants: tuple[FormatSpec, ...] = field(default=(), repr=False)
    description: str = ""

    def __post_init__(self) -> None:
        """Check the spec is self-consistent."""
        where = f"format '{self.name}'"
        self._check_conflicts(where)
        if self.time_kind not in TIME_KINDS:
            raise ConfigError(f"{where}: time kind '{self.time_kind}' is not one of {TIME_KINDS}")
        if self.time_kind == "month_day" and self.year is None:
            raise ConfigError(f"{where}: time kind 'month_day' needs a year")
        if len(self.delimiter) != 1 or self.delimiter in "\r\n\"":
            raise ConfigError(f"{where}: delimiter must be one character, got {self.delimiter!r}")
        for value, canonical in self.behaviors:
            if canonical not in BEHAVIOR_CODE:
                raise ConfigError(
                    f"{where}: behaviour value {value!r} maps to {canonical!r}, "
                    f"expected one of {', '.join(BEHAVIORS)}"
                )
        if self.constant_behavior not in BEHAVIOR_CODE:
            raise ConfigError(
                f"{where}: constant behaviour {self.constant_behavior!r} is not one of "
                f"{', '.join(BEHAVIORS)}"
            )
        if self.columns:
            absent = [c for c in self.required_columns() if c not in self.columns]
            if absent:
                raise ConfigError(f"{where}: positional columns {self.columns} lack {absent}")
            if len(set(self.columns)) != len(self.columns):
                raise ConfigError(f"{where}: positional columns repeat a name: {self.columns}")

    def _check_conflicts(self, where: str) -> None:
        """Reject fields sharing a column, a behaviour value with two targets, a mapped drop value."""
        owner: dict[str, str] = {}
        for fld, col in self.field_columns().items():
            other = owner.setdefault(normalize_name(col), fld)
            if other != fld and {other, fld} != {"item_id", "category_id"}:
                raise ConfigError(
                    f"{where}: fields '{other}' and '{fld}' both read column '{col}'; "
                    "each field needs its own column"
                )
        target: dict[str, str] = {}
        for value, canonical in self.behaviors:
            key = value.strip().lower()
            if target.setdefault(key, canonical) != canonical:
                raise ConfigError(
                    f"{where}: behaviour value {value!r} is mapped twice, to "
                    f"'{target[key]}' and to '{canonical}'"
                )
        for value in self.dropped_behaviors:
            key = value.strip().lower()
            if key in target:
                raise ConfigError(
                    f"{where}: behaviour value {value!r} is both dropped and mapped to "
                    f"'{target[key]}'; remove it from one of the two lists"
                )
        for encoding in self.encodings:
            if not _is_text_encoding(encoding):
                raise ConfigError(f"{where}: encoding {encoding!r} is not a known text encoding")

    def field_columns(self) -> dict[str, str]:
        """Return canonical field -> source column, for the fields read from a column."""
        pairs = {
            "user_id": self.user_id,
            "item_id": self.item_id,
            "category_id": self.category_id,
            "behavior": self.behavior,
            "timestamp": self.timestamp,
            "site": self.site,
            "timestamp_offset": self.time_offset_ms,
        }
        return {k: v for k, v in pairs.items() if v is not None}

    def source_columns(self) -> tuple[str, ...]:
        """Return the distinct source columns this spec reads, in first-use order."""
        return tuple(dict.fromkeys(self.field_columns().values()))

    def required_columns(self) -> tuple[str, ...]:
        """Return the source columns a file must have (all but an optional site)."""
        return tuple(
            c for c in self.source_columns() if not (self.site_optional and c == self.site)
        )

    def header_names(self, column: str) -> tuple[str, ...]:
        """Return the normalised header names accepted for a source column."""
        names = [column, *dict(self.aliases).get(column, ())]
        return tuple(dict.fromkeys(normalize_name(n) for n in names))

    def behavior_values(self) -> dict[str, int]:
        """Return normalised source behaviour value -> canonical code."""
        return {v.strip().lower(): BEHAVIOR_CODE[b] for v, b in self.behaviors}

    def layouts(self) -> tuple[FormatSpec, ...]:
        """Return this layout followed by its variants."""
        return (self, *self.variants)
