"""Column mappings of the built-in input formats, and the generic mapping mini-language.

A :class:`FormatSpec` says which source column feeds each canonical event field
(``seqanom_core.schema.EVENT_SCHEMA``), how behaviour values and timestamps are written, and
how a file without a header lays its columns out. All built-in formats live in this module.

Generic mapping mini-language (``parse_mapping``), for sites whose logs use their own columns::

    user_id=visitorid,item_id=itemid,category_id=-,behavior=event,timestamp=timestamp,
    behaviors=view:view;addtocart:cart;transaction:buy,time=unix_ms,delimiter=;

* Pairs ``key=value`` separated by ``,``; spaces around keys and values are ignored.
* Required: ``user_id``, ``item_id``, ``category_id``, ``behavior`` and ``timestamp``, each the
  name of a source column (matched to headers case-insensitively, ignoring ``_``, ``-``,
  spaces). ``category_id=-`` means "use the item id"; ``behavior=-`` means the file has no
  behaviour column and every event is ``constant_behavior`` (default ``view``).
* Optional: ``site=COLUMN``; ``behaviors=SRC:NAME;SRC:NAME`` (source value -> one of
  ``view, cart, fav, buy``; default: the canonical names and their integer codes 0-3);
  ``drop=VALUE;VALUE`` (behaviour values that are known but not modelled: quarantined under
  their own reason; a dropped value leaves the default ``behaviors``, and may not be listed
  in explicit ones); ``time=unix_s|unix_ms|datetime|date|month_day`` (default ``unix_s``;
  ``datetime`` is ISO 8601 or ``YYYY-MM-DD HH:MM:SS[.fff][Z| UTC|+HH:MM]``, naive = UTC);
  ``year=YYYY`` (for ``month_day``); ``time_offset_ms=COLUMN`` (milliseconds added to the
  timestamp); ``delimiter=CHAR`` (or ``comma``, ``semicolon``, ``tab``, ``pipe``, ``space``);
  ``columns=A;B;C`` (positional column order, for files without a header; without it a
  header is required); ``constant_behavior=NAME``; ``encoding=NAME``; ``name=LABEL``.
* Unknown keys, repeated keys, bad values (e.g. an unknown ``encoding``) and conflicts raise
  :class:`~seqanom_core.errors.ConfigError`. Conflicts: two fields naming the same column
  (except ``category_id`` = the ``item_id`` column, which means the same as ``category_id=-``),
  a source value given two targets in ``behaviors``, a ``drop`` value also in ``behaviors``.
"""

from __future__ import annotations

import codecs
import logging
import re
from dataclasses import dataclass, field, replace

from seqanom_core.errors import ConfigError
from seqanom_core.schema import BEHAVIOR_CODE, BEHAVIORS

logger = logging.getLogger(__name__)

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


_TAOBAO_BEHAVIORS = (("pv", "view"), ("view", "view"), ("cart", "cart"), ("fav", "fav"), ("buy", "buy"))

_FORMATS: dict[str, FormatSpec] = {}


def _register(spec: FormatSpec) -> None:
    """Add a built-in format."""
    _FORMATS[spec.name] = spec


_SEQANOM = FormatSpec(
    name="seqanom",
    user_id="user_id",
    item_id="item_id",
    category_id="category_id",
    behavior="behavior",
    timestamp="timestamp",
    site="site",
    site_optional=True,
    columns=("user_id", "item_id", "category_id", "behavior", "timestamp"),
    aliases=(("behavior", ("behaviour",)),),
    description="canonical seqanom events (write_events); behaviour by name or code 0-3",
)
_register(
    replace(
        _SEQANOM,
        variants=(
            replace(_SEQANOM, site_optional=False, columns=(*_SEQANOM.columns, "site")),
        ),
    )
)
_register(
    FormatSpec(
        name="taobao",
        user_id="user_id",
        item_id="item_id",
        category_id="category_id",
        behavior="behavior_type",
        timestamp="timestamp",
        columns=("user_id", "item_id", "category_id", "behavior_type", "timestamp"),
        aliases=(("behavior_type", ("behavior", "behaviour", "type")),),
        behaviors=_TAOBAO_BEHAVIORS,
        description="Taobao UserBehavior.csv (Tianchi 649); header optional; Unix seconds",
    )
)
_register(
    FormatSpec(
        name="tmall",
        user_id="user_id",
        item_id="brand_id",
        category_id="brand_id",
        behavior="type",
        timestamp="visit_datetime",
        columns=("user_id", "brand_id", "type", "visit_datetime"),
        behaviors=(("0", "view"), ("1", "buy"), ("2", "fav"), ("3", "cart")),
        time_kind="month_day",
        year=2014,
        encodings=("utf-8", "gbk"),
        description="Tmall 2014 t_alibaba_data.csv; brand = item = category; M-D or M月D日 dates",
    )
)
_register(
    FormatSpec(
        name="rees46",
        user_id="user_id",
        item_id="product_id",
        category_id="category_id",
        behavior="event_type",
        timestamp="event_time",
        columns=(
            "event_time",
            "event_type",
            "product_id",
            "category_id",
            "category_code",
            "brand",
            "price",
            "user_id",
            "user_session",
        ),
        behaviors=(("view", "view"), ("cart", "cart"), ("purchase", "buy")),
        dropped_behaviors=("remove_from_cart",),
        time_kind="datetime",
        description="REES46 multi-category store (Open CDP) monthly CSV; 'YYYY-MM-DD hh:mm:ss UTC'",
    )
)
_register(
    FormatSpec(
        name="retailrocket",
        user_id="visitorid",
        item_id="itemid",
        behavior="event",
        timestamp="timestamp",
        columns=("timestamp", "visitorid", "event", "itemid", "transactionid"),
        behaviors=(("view", "view"), ("addtocart", "cart"), ("transaction", "buy")),
        time_kind="unix_ms",
        description="RetailRocket events.csv; Unix ms; no category (item id used)",
    )
)
_YOOCHOOSE_CLICKS = FormatSpec(
    name="yoochoose",
    user_id="session_id",
    item_id="item_id",
    category_id="category",
    timestamp="timestamp",
    columns=("session_id", "timestamp", "item_id", "category"),
    aliases=(("session_id", ("session",)), ("item_id", ("item",)), ("timestamp", ("time",))),
    time_kind="datetime",
    description="YooChoose (RecSys 2015) clicks: session = shopper, all views",
)
_register(
    replace(
        _YOOCHOOSE_CLICKS,
        variants=(
            replace(
                _YOOCHOOSE_CLICKS,
                category_id=None,
                columns=("session_id", "item_id", "timestamp", "split"),
                time_kind="unix_s",
                description="session-rec prepared YooChoose clicks (Unix seconds, no category)",
            ),
            replace(
                _YOOCHOOSE_CLICKS,
                category_id=None,
                columns=("session_id", "timestamp", "item_id", "price", "quantity"),
                constant_behavior="buy",
                description="yoochoose-buys.dat: every row is a buy",
            ),
        ),
    )
)
_register(
    FormatSpec(
        name="diginetica",
        user_id="session_id",
        item_id="item_id",
        timestamp="eventdate",
        columns=("session_id", "user_id", "item_id", "timeframe", "eventdate"),
        delimiter=";",
        time_kind="date",
        time_offset_ms="timeframe",
        description="DIGINETICA train-item-views.csv; session = shopper; date + timeframe ms",
    )
)


def get_format(name: str) -> FormatSpec:
    """Return the built-in format called ``name`` (ConfigError listing known names if unknown)."""
    try:
        return _FORMATS[name]
    except KeyError:
        raise ConfigError(
            f"unknown format '{name}'; known formats: {', '.join(list_formats())} "
            "(or give a generic mapping)"
        ) from None


def list_formats() -> list[str]:
    """Return the names of the built-in formats, sorted."""
    return sorted(_FORMATS)


_MAPPING_KEYS: tuple[str, ...] = (
    "user_id",
    "item_id",
    "category_id",
    "behavior",
    "timestamp",
    "site",
    "behaviors",
    "drop",
    "time",
    "year",
    "time_offset_ms",
    "delimiter",
    "columns",
    "constant_behavior",
    "encoding",
    "name",
)
_KEY_ALIASES = {"behaviour": "behavior", "behaviours": "behaviors", "category": "category_id"}
_DELIMITER_NAMES = {"comma": ",", "semicolon": ";", "tab": "\t", "\\t": "\t", "pipe": "|", "space": " "}
_TIME_ALIASES = {"s": "unix_s", "unix": "unix_s", "seconds": "unix_s", "ms": "unix_ms", "iso": "datetime"}


def parse_mapping(spec: str) -> FormatSpec:
    """Parse a generic column mapping (see the module docstring) into a FormatSpec."""
    values: dict[str, str] = {}
    for part in spec.split(","):
        if not part.strip():
            continue
        key, sep, value = part.partition("=")
        key = key.strip().lower()
        key = _KEY_ALIASES.get(key, key)
        if not (key == "delimiter" and value and not value.strip()):
            value = value.strip()  # a delimiter may be a lone space or tab
        if not sep:
            raise ConfigError(f"mapping: '{part.strip()}' is not key=value")
        if key not in _MAPPING_KEYS:
            raise ConfigError(
                f"mapping: unknown key '{key}'; known keys: {', '.join(_MAPPING_KEYS)}"
            )
        if key in values:
            raise ConfigError(f"mapping: key '{key}' given twice")
        if value == "":
            raise ConfigError(f"mapping: key '{key}' has an empty value")
        values[key] = value
    missing = [k for k in ("user_id", "item_id", "category_id", "behavior", "timestamp") if k not in values]
    if missing:
        raise ConfigError(
            f"mapping: missing key(s) {', '.join(missing)} "
            "(use category_id=- for 'use the item id', behavior=- for 'all views')"
        )
    for key in ("user_id", "item_id", "timestamp"):
        if values[key] == "-":
            raise ConfigError(f"mapping: '{key}' must name a column, not '-'")

    def column(key: str) -> str | None:
        """Return the column of an optional field ('-' or absent: None)."""
        v = values.get(key)
        return None if v in (None, "-") else v

    kwargs: dict = {}
    if "behaviors" in values:
        pairs = []
        for item in values["behaviors"].split(";"):
            if not item.strip():
                continue
            src, sep, canonical = item.rpartition(":")
            if not sep or not src.strip():
                raise ConfigError(f"mapping: behaviors item '{item}' is not SOURCE:NAME")
            if canonical.strip() not in BEHAVIOR_CODE:
                raise ConfigError(
                    f"mapping: behaviors item '{item}': '{canonical.strip()}' is not one of "
                    f"{', '.join(BEHAVIORS)}"
                )
            pairs.append((src.strip(), canonical.strip()))
        kwargs["behaviors"] = tuple(pairs)
    if "drop" in values:
        dropped = tuple(v.strip() for v in values["drop"].split(";") if v.strip())
        kwargs["dropped_behaviors"] = dropped
        if "behaviors" not in values:  # dropping a default value takes it out of the defaults
            gone = {v.lower() for v in dropped}
            kwargs["behaviors"] = tuple(pair for pair in _CANONICAL_VALUES if pair[0] not in gone)
    if "time" in values:
        kind, _, year = values["time"].partition(":")
        kind = _TIME_ALIASES.get(kind.strip().lower(), kind.strip().lower())
        if kind not in TIME_KINDS:
            raise ConfigError(
                f"mapping: time '{values['time']}' is not one of {', '.join(TIME_KINDS)}"
            )
        kwargs["time_kind"] = kind
        if year:
            values.setdefault("year", year)
    if "year" in values:
        if not re.fullmatch(r"\d{4}", values["year"].strip()):
            raise ConfigError(f"mapping: year '{values['year']}' is not a 4-digit year")
        kwargs["year"] = int(values["year"])
    if "delimiter" in values:
        raw = values["delimiter"]
        kwargs["delimiter"] = _DELIMITER_NAMES.get(raw.strip().lower(), raw if len(raw) == 1 else raw.strip())
    if "columns" in values:
        kwargs["columns"] = tuple(c.strip() for c in values["columns"].split(";") if c.strip())
    if "constant_behavior" in values:
        kwargs["constant_behavior"] = values["constant_behavior"]
    if "encoding" in values:
        if not _is_text_encoding(values["encoding"]):
            raise ConfigError(f"mapping: encoding '{values['encoding']}' is not a known text encoding")
        kwargs["encodings"] = (values["encoding"],)
    try:
        result = FormatSpec(
            name=values.get("name", "custom"),
            user_id=values["user_id"],
            item_id=values["item_id"],
            category_id=column("category_id"),
            behavior=column("behavior"),
            timestamp=values["timestamp"],
            site=column("site"),
            time_offset_ms=column("time_offset_ms"),
            description=f"generic mapping: {spec}",
            **kwargs,
        )
    except ConfigError as err:
        raise ConfigError(f"mapping: {err}") from None
    logger.debug("parsed mapping %r into %s", spec, result)
    return result
