"""The built-in input formats, and looking them up by name."""

from __future__ import annotations

from dataclasses import replace

from seqanom_core.errors import ConfigError
from seqanom_core.formats.spec import FormatSpec

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
