"""Tests of the built-in format specs and the generic mapping mini-language."""

from __future__ import annotations

import dataclasses

import pytest

from seqanom_core.errors import ConfigError
from seqanom_core.formats import (
    TIME_KINDS,
    FormatSpec,
    get_format,
    list_formats,
    normalize_name,
    parse_mapping,
)
from seqanom_core.schema import BEHAVIOR_CODE, BEHAVIORS

BUILT_IN = ["diginetica", "rees46", "retailrocket", "seqanom", "taobao", "tmall", "yoochoose"]


def test_list_formats_names_exactly_the_built_ins() -> None:
    assert list_formats() == BUILT_IN


@pytest.mark.parametrize("name", BUILT_IN)
def test_built_in_specs_are_consistent(name: str) -> None:
    spec = get_format(name)
    assert spec.name == name
    assert spec.description
    assert spec.time_kind in TIME_KINDS
    for lay in spec.layouts():
        assert set(lay.required_columns()) <= set(lay.columns), lay
        for _, canonical in lay.behaviors:
            assert canonical in BEHAVIORS


def test_specs_are_frozen() -> None:
    spec = get_format("taobao")
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.delimiter = ";"  # type: ignore[misc]


def test_unknown_format_lists_known_names() -> None:
    with pytest.raises(ConfigError, match="unknown format 'nope'.*taobao.*tmall"):
        get_format("nope")


def test_built_in_mappings() -> None:
    taobao = get_format("taobao")
    assert taobao.behavior_values()["pv"] == BEHAVIOR_CODE["view"]
    assert taobao.columns == ("user_id", "item_id", "category_id", "behavior_type", "timestamp")
    tmall = get_format("tmall")
    values = tmall.behavior_values()
    assert [values[str(i)] for i in range(4)] == [0, 3, 2, 1]  # click, buy, collect, cart
    assert tmall.item_id == tmall.category_id == "brand_id" and tmall.year == 2014
    assert get_format("retailrocket").category_id is None
    assert get_format("retailrocket").time_kind == "unix_ms"
    assert get_format("rees46").behavior_values()["purchase"] == BEHAVIOR_CODE["buy"]
    assert get_format("rees46").dropped_behaviors == ("remove_from_cart",)
    dig = get_format("diginetica")
    assert (dig.delimiter, dig.user_id, dig.time_offset_ms) == (";", "session_id", "timeframe")
    yoo = get_format("yoochoose")
    assert [len(lay.columns) for lay in yoo.layouts()] == [4, 4, 5]
    assert yoo.variants[1].constant_behavior == "buy"
    seq = get_format("seqanom")
    assert seq.behavior_values()["2"] == BEHAVIOR_CODE["fav"]
    assert seq.behavior_values()["fav"] == BEHAVIOR_CODE["fav"]


def test_header_names_fold_case_and_separators() -> None:
    assert normalize_name("sessionId") == normalize_name("session_id") == "sessionid"
    dig = get_format("diginetica")
    assert normalize_name("itemId") in dig.header_names("item_id")


def test_parse_mapping_brief_example() -> None:
    spec = parse_mapping(
        "user_id=visitorid,item_id=itemid,category_id=-,behavior=event,timestamp=timestamp,"
        "behaviors=view:view;addtocart:cart;transaction:buy,time=unix_ms,delimiter=;"
    )
    assert spec.name == "custom"
    assert (spec.user_id, spec.item_id, spec.category_id) == ("visitorid", "itemid", None)
    assert spec.behavior == "event" and spec.timestamp == "timestamp"
    assert spec.behaviors == (("view", "view"), ("addtocart", "cart"), ("transaction", "buy"))
    assert spec.time_kind == "unix_ms" and spec.delimiter == ";"
    assert spec.columns == ()  # no positional order given: a header is required


def test_parse_mapping_options() -> None:
    spec = parse_mapping(
        " user_id = sid , item_id=iid, category_id=cat, behaviour=-, timestamp=day,"
        "time=month_day:2015, delimiter=tab, columns=sid;iid;cat;day;shop;ms, constant_behavior=buy,"
        "site=shop, name=mysite, drop=remove;refund, time_offset_ms=ms"
    )
    assert spec.behavior is None and spec.constant_behavior == "buy"
    assert spec.time_kind == "month_day" and spec.year == 2015
    assert spec.delimiter == "\t" and spec.columns == ("sid", "iid", "cat", "day", "shop", "ms")
    assert spec.site == "shop" and spec.name == "mysite"
    assert spec.dropped_behaviors == ("remove", "refund")
    assert spec.time_offset_ms == "ms"
    assert parse_mapping("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,delimiter=comma").delimiter == ","
    assert parse_mapping("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,time=iso").time_kind == "datetime"


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,colour=red", "unknown key 'colour'"),
        ("user_id=u,item_id=i,category_id=c,behavior=b", "missing key.*timestamp"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,user_id=v", "'user_id' given twice"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,time=fortnights", "time 'fortnights'"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,behaviors=click:clicked", "'clicked' is not one of"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,behaviors=click", "not SOURCE:NAME"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,time=month_day", "needs a year"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,delimiter=ab", "one character"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,year=14", "4-digit year"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp", "not key=value"),
        ("user_id=,item_id=i,category_id=c,behavior=b,timestamp=t", "'user_id' has an empty value"),
        ("user_id=-,item_id=i,category_id=c,behavior=b,timestamp=t", "'user_id' must name a column"),
        ("user_id=u,item_id=i,category_id=c,behavior=b,timestamp=t,columns=u;i;c", "lack"),
    ],
)
def test_parse_mapping_rejects(text: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_mapping(text)


def test_spec_validation() -> None:
    with pytest.raises(ConfigError, match="time kind"):
        FormatSpec(name="x", user_id="u", item_id="i", timestamp="t", time_kind="weekly")
    with pytest.raises(ConfigError, match="maps to 'click'"):
        FormatSpec(name="x", user_id="u", item_id="i", timestamp="t", behaviors=(("c", "click"),))
