"""Statistics of any events table that the generator is calibrated and tested against
(behaviour mix, events and sessions per shopper, gaps, category switches, funnels; how far sites'
category mixes are from the pooled one)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from seqanom_core.config import SESSION_GAP_S
from seqanom_core.schema import BEHAVIORS, check_events, encode_values


def _preceded_frac(
    key: np.ndarray, beh: np.ndarray, target_code: int, prior_code: int, any_order: bool = False
) -> float:
    """Share of ``target_code`` events with an earlier ``prior_code`` event on the same key."""
    tgt = np.flatnonzero(beh == target_code)
    if tgt.size == 0:
        return float("nan")
    pri = np.flatnonzero(beh == prior_code)
    uk, first_idx = np.unique(key[pri], return_index=True)
    first_pos = pri[first_idx]
    j = np.searchsorted(uk, key[tgt])
    j = np.minimum(j, max(uk.size - 1, 0))
    found = (uk.size > 0) & (uk[j] == key[tgt]) if uk.size else np.zeros(tgt.size, bool)
    if any_order:
        return float(found.mean())
    return float((found & (first_pos[j] < tgt)).mean())


def synthesis_stats(table: pa.Table, session_gap_s: float = SESSION_GAP_S) -> dict:
    """Compute the calibration statistics of any events table (sorted by shopper and time)."""
    t = check_events(table, "synthesis_stats")
    user = encode_values(t["user_id"])[0]
    item = encode_values(t["item_id"])[0]
    cat = encode_values(t["category_id"])[0]
    beh = t["behavior"].to_numpy().astype(np.int64)
    ts = t["timestamp"].to_numpy()
    order = np.lexsort((ts, user))
    user, item, cat, beh, ts = user[order], item[order], cat[order], beh[order], ts[order]
    n = user.size
    same = np.concatenate([[False], user[1:] == user[:-1]])
    gap = np.concatenate([[np.nan], np.diff(ts)])
    counts = np.bincount(user)
    counts = counts[counts > 0]
    new_sess = ~same | (gap > session_gap_s)
    sess_id = np.cumsum(new_sess) - 1
    sess_len = np.bincount(sess_id)
    sess_per_user = np.bincount(user, weights=new_sess)[np.unique(user)]
    g_in = gap[same & (gap <= session_gap_s) & (gap > 0)]
    g_out = gap[same & (gap > session_gap_s)]
    cat_counts = np.sort(np.bincount(cat))[::-1]
    cat_counts = cat_counts[cat_counts > 0]
    k = min(100, cat_counts.size)
    slope = (
        float(-np.polyfit(np.log(np.arange(1, k + 1)), np.log(cat_counts[:k]), 1)[0])
        if k >= 3
        else float("nan")
    )
    uc_key = np.unique(user * (cat.max() + 1) + cat)
    distinct_cats = np.bincount(uc_key // (cat.max() + 1))
    distinct_cats = distinct_cats[distinct_cats > 0]
    ui_key = user * (item.max() + 1) + item
    _, first_idx = np.unique(ui_key, return_index=True)
    distinct_items = np.bincount(user[first_idx])
    distinct_items = distinct_items[distinct_items > 0]
    mix = np.bincount(beh, minlength=len(BEHAVIORS)) / max(n, 1)
    stats = {
        "n_events": int(n),
        "n_shoppers": int(counts.size),
        "behavior_mix": {name: float(mix[i]) for i, name in enumerate(BEHAVIORS)},
        "events_per_shopper_min": int(counts.min()),
        "events_per_shopper_median": float(np.median(counts)),
        "events_per_shopper_max": int(counts.max()),
        "events_per_shopper_log_mean": float(np.log(counts).mean()),
        "events_per_shopper_log_std": float(np.log(counts).std()),
        "sessions_per_shopper_median": float(np.median(sess_per_user)),
        "session_length_mean": float(sess_len.mean()),
        "session_length_median": float(np.median(sess_len)),
        "session_single_frac": float((sess_len == 1).mean()),
        "within_gap_median_s": float(np.median(g_in)) if g_in.size else float("nan"),
        "within_gap_log_mean": float(np.log(g_in).mean()) if g_in.size else float("nan"),
        "within_gap_log_std": float(np.log(g_in).std()) if g_in.size else float("nan"),
        "between_gap_median_s": float(np.median(g_out)) if g_out.size else float("nan"),
        "between_gap_log_mean": float(np.log(g_out).mean()) if g_out.size else float("nan"),
        "between_gap_log_std": float(np.log(g_out).std()) if g_out.size else float("nan"),
        "category_zipf_exponent": slope,
        "top10_category_share": float(cat_counts[:10].sum() / max(n, 1)),
        "distinct_categories_per_shopper_median": float(np.median(distinct_cats)),
        "distinct_categories_ratio_median": float(np.median(distinct_cats / counts)),
        "category_switch_rate": float((cat[1:] != cat[:-1])[same[1:]].mean()) if n > 1 else 0.0,
        "item_revisit_rate": float(1.0 - first_idx.size / max(n, 1)),
        "distinct_items_ratio_median": float(np.median(distinct_items / counts)),
        "buy_after_view": _preceded_frac(ui_key, beh, 3, 0),
        "cart_after_view": _preceded_frac(ui_key, beh, 1, 0),
        "fav_after_view": _preceded_frac(ui_key, beh, 2, 0),
        "buy_any_view": _preceded_frac(ui_key, beh, 3, 0, any_order=True),
        "buy_after_cart": _preceded_frac(ui_key, beh, 3, 1),
    }
    if "site" in table.column_names:
        stats["site_category_tv_mean"] = site_category_tv(table)
    return stats


def site_category_tv(table: pa.Table) -> float:
    """Mean pairwise total-variation distance between the sites' category distributions."""
    site = encode_values(table["site"])[0]
    cat = encode_values(table["category_id"])[0]
    n_sites = int(site.max()) + 1 if site.size else 0
    if n_sites < 2:
        return 0.0
    n_cat = int(cat.max()) + 1
    hist = np.zeros((n_sites, n_cat))
    np.add.at(hist, (site, cat), 1.0)
    hist /= hist.sum(axis=1, keepdims=True)
    tv = [
        0.5 * np.abs(hist[a] - hist[b]).sum() for a in range(n_sites) for b in range(a + 1, n_sites)
    ]
    return float(np.mean(tv))
