"""Seeded generator of realistic shopper event sequences, calibrated on public Taobao data.

Generative process, per shopper (vectorised with numpy over batches of shoppers):

1. The shopper belongs to one site; each site tilts the global Zipf category popularity with
   a Dirichlet draw (``SynthConfig.site_concentration``), so sites differ.
2. The number of events is log-normal (clipped); events are cut into sessions whose lengths
   are ``1 + NegativeBinomial``; gaps inside a session are log-normal (seconds to minutes),
   gaps between sessions are log-normal truncated above the 30-minute session threshold
   (hours to days), and the whole history fits in the ``days`` window.
3. The shopper has a small set of interest categories drawn from the site's distribution,
   with Zipf-like weights. Inside a session the shopper browses in runs: each event stays in
   the current category or starts a new run in another interest category (rarely exploring
   a category drawn from the site distribution). Items come from the category's own
   Zipf-like item popularity.
4. Behaviours follow the Taobao mix. Items are linked to earlier events of the same shopper:
   views sometimes re-visit an earlier item; carts/favs/buys follow a view of the SAME item
   (funnel view -> (fav|cart) -> buy), with buys often following a cart of that item. The
   rest of the actions have no in-window view (their funnel began before the window), as in
   the Taobao data.

All calibration constants below were measured with ``simulation.synth_stats.synthesis_stats``
(and pandas) on ``/work/shared/data/taobao_userbehavior_users_sample.csv.gz`` (814 shoppers,
84,287 events, complete histories 2017-11-25..12-03), sessions split at gaps > 30 minutes.

Over 400 lines: the measured constants stay beside the one vectorised batch generator that
uses them (its statistics are in ``synth_stats``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from scipy.special import ndtr, ndtri

from seqanom_core.config import SESSION_GAP_S
from seqanom_core.errors import ConfigError
from seqanom_core.schema import BEHAVIORS, EVENT_SCHEMA, SITE_FIELD, check_events

logger = logging.getLogger(__name__)

# --- Calibration constants (Taobao users sample unless stated otherwise) -------------------
#: Behaviour mix (view, cart, fav, buy): counts pv 75,693 / cart 4,494 / fav 2,351 / buy 1,749.
TAOBAO_BEHAVIOR_MIX: tuple[float, float, float, float] = (0.8980, 0.0533, 0.0279, 0.0208)
#: Events per shopper: min 4, median 78, max 539; log(count) mean 4.269, std 0.915.
TAOBAO_EVENTS_MEDIAN = 78.0
TAOBAO_EVENTS_LOG_STD = 0.915
TAOBAO_EVENTS_MIN = 4
#: Session statistics split sessions at SESSION_GAP_S (the tokenizer default).
#: Sessions per shopper: median 15 (mean 17.3); session length mean 5.98, median 3,
#: 31.2% single-event sessions, 90th percentile 15.
#: Sessions per shopper grow as 1.63 * n_events ** 0.513 (log-log fit over shoppers), so the
#: mean session length is about 0.613 * n_events ** 0.487.
TAOBAO_SESSION_LEN_SCALE = 0.613
TAOBAO_SESSION_LEN_EXPONENT = 0.487
#: Gaps inside sessions (0 < gap <= 30 min): log mean 4.026, log std 1.365 (median 54 s).
TAOBAO_WITHIN_GAP_LOG_MEAN = 4.026
TAOBAO_WITHIN_GAP_LOG_STD = 1.365
#: Gaps between sessions (> 30 min): log mean 9.884, log std 1.273 (median 21,136 s = 5.9 h).
TAOBAO_BETWEEN_GAP_LOG_STD = 1.273
#: Category rank-frequency slope over the top 100 categories: -0.895 (top 500: -1.03);
#: top-10 categories hold 26.5% of events.
TAOBAO_CATEGORY_ZIPF = 0.895
#: Item rank-frequency slope inside the five biggest categories: about -0.33..-0.42.
TAOBAO_ITEM_ZIPF = 0.40
#: Distinct categories per shopper: median 21; distinct/events median 0.286.
#: Category switch rate between consecutive events of a shopper: 0.587.
TAOBAO_CATEGORY_SWITCH_RATE = 0.587
#: Share of events whose item the shopper already had an event on: 0.243.
#: Share of buys / carts / favs preceded by a view of the same item by the same shopper:
#: 0.526 / 0.159 / 0.098; buys preceded by a cart of the same item: 0.167.
TAOBAO_BUY_AFTER_VIEW = 0.526
#: 2017-11-25 00:00 in UTC+8, the start of the Taobao window (Unix seconds).
TAOBAO_START_TIME = 1511539200.0

#: Distance (in events) of a "local" item link back to an earlier event: 1 + Geometric.
_LINK_LOCAL_P = 0.35


@dataclass(frozen=True)
class SynthConfig:
    """Parameters of :func:`synthesize_events`; defaults reproduce the Taobao sample."""

    #: Number of shoppers in total (over all sites).
    n_shoppers: int = 1000
    #: Number of sites; shoppers are spread uniformly, named "site-0".."site-{K-1}".
    n_sites: int = 1
    #: Size of the category catalogue.
    n_categories: int = 400
    #: Size of the item catalogue (each item belongs to one category).
    n_items: int = 20000
    #: Length of the observation window in days.
    days: float = 9.0
    #: Seed of every random draw; same config -> identical table.
    seed: int = 0
    #: Window start (Unix seconds).
    start_time: float = TAOBAO_START_TIME
    #: Log-normal parameters of events per shopper, and its clip range.
    #: (log mean raised from the measured 4.269 to ln(78 * 0.97) so the median matches 78.)
    events_log_mean: float = 4.33
    events_log_std: float = TAOBAO_EVENTS_LOG_STD
    min_events: int = TAOBAO_EVENTS_MIN
    max_events: int = 1000
    #: Session length is 1 + NegativeBinomial(r, .) with mean scale * n_events ** exponent.
    session_nb_r: float = 0.5
    session_len_scale: float = TAOBAO_SESSION_LEN_SCALE
    session_len_exponent: float = TAOBAO_SESSION_LEN_EXPONENT
    #: Log-normal gaps (seconds) inside and between sessions.
    within_gap_log_mean: float = TAOBAO_WITHIN_GAP_LOG_MEAN
    within_gap_log_std: float = TAOBAO_WITHIN_GAP_LOG_STD
    #: (between-gap log mean is set above the measured 9.884: fitting busy shoppers' sessions
    #: into the window shrinks their gaps, and the generated pooled log mean lands near 9.7.)
    between_gap_log_mean: float = 10.1
    between_gap_log_std: float = TAOBAO_BETWEEN_GAP_LOG_STD
    #: Zipf exponent of the global category popularity and of item popularity in a category.
    category_zipf: float = TAOBAO_CATEGORY_ZIPF
    item_zipf: float = TAOBAO_ITEM_ZIPF
    #: Per-category Dirichlet concentration of each site's category distribution around the
    #: global one (alpha = site_concentration * n_categories * p_global): smaller = sites
    #: differ more; <= 0 means every site uses the global distribution.
    site_concentration: float = 100.0
    #: Interest categories per shopper: 1 + Poisson(interest_rate * n_events ** 0.75).
    interest_rate: float = 1.7
    #: Zipf exponent of a shopper's weights over its interest categories.
    interest_zipf: float = 1.0
    #: Probability that the next event stays in the current category (inside a session).
    category_stay_prob: float = 0.5
    #: Probability that a new category run explores outside the shopper's interests.
    explore_prob: float = 0.15
    #: Probability that a view re-visits an item of an earlier event.
    view_revisit_prob: float = 0.18
    #: Probability that a cart / fav / buy follows a view of the same item.
    #: (tuned so that the generated after-view shares match TAOBAO_*_AFTER_VIEW: chance
    #: re-visits and cart->buy chains add to the explicit links.)
    cart_view_prob: float = 0.09
    fav_view_prob: float = 0.03
    buy_view_prob: float = 0.56
    #: Probability that a buy follows the shopper's latest cart (when there is one).
    buy_cart_prob: float = 0.2
    #: Share of item links that point a few events back (else anywhere earlier in history).
    link_local_prob: float = 0.8
    #: Behaviour mix (view, cart, fav, buy).
    behavior_mix: tuple[float, float, float, float] = field(default=TAOBAO_BEHAVIOR_MIX)
    #: Shoppers generated per batch (part of the seed stream: keep it fixed for reproducibility).
    batch_size: int = 20000

    def validate(self) -> None:
        """Raise ConfigError on an invalid field."""
        problems = []
        for name in ("n_shoppers", "n_sites", "n_categories", "n_items", "batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.n_items < self.n_categories:
            problems.append("n_items must be >= n_categories")
        if self.days <= 0:
            problems.append("days must be > 0")
        if not 1 <= self.min_events <= self.max_events:
            problems.append("need 1 <= min_events <= max_events")
        mix = np.asarray(self.behavior_mix, dtype=float)
        if mix.shape != (len(BEHAVIORS),) or (mix < 0).any() or mix.sum() <= 0:
            problems.append(f"behavior_mix must be {len(BEHAVIORS)} non-negative weights")
        for name in (
            "category_stay_prob",
            "explore_prob",
            "view_revisit_prob",
            "cart_view_prob",
            "fav_view_prob",
            "buy_view_prob",
            "buy_cart_prob",
            "link_local_prob",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be in [0, 1]")
        if self.session_nb_r <= 0 or self.session_len_scale <= 0:
            problems.append("session_nb_r and session_len_scale must be > 0")
        if problems:
            raise ConfigError("invalid SynthConfig: " + "; ".join(problems))


def _zipf_weights(n: int, exponent: float) -> np.ndarray:
    """Return normalised weights proportional to rank ** -exponent for ranks 1..n."""
    w = np.arange(1, n + 1, dtype=float) ** -exponent
    return w / w.sum()


def _power_rank(rng: np.random.Generator, sizes: np.ndarray, exponent: float) -> np.ndarray:
    """Draw one 0-based rank < size per entry from a continuous power law ~ x ** -exponent."""
    u = rng.random(sizes.shape[0])
    top = sizes.astype(float) + 1.0
    if abs(exponent - 1.0) < 1e-9:
        x = top**u
    else:
        a = 1.0 - exponent
        x = (1.0 + u * (top**a - 1.0)) ** (1.0 / a)
    return np.minimum(np.floor(x).astype(np.int64) - 1, sizes.astype(np.int64) - 1)


def _unique_ids(rng: np.random.Generator, n: int, low: int) -> pa.Array:
    """Return n distinct Taobao-looking integer ids (as strings) in shuffled order."""
    ids = low + np.cumsum(rng.integers(1, 60, size=n))
    return pa.array(rng.permutation(ids).astype(str), pa.string())


@dataclass
class _World:
    """Catalogue shared by all batches: category/item structure and site distributions."""

    site_cat_p: np.ndarray  # (n_sites, n_categories)
    cat_item_start: np.ndarray  # first item index of each category
    cat_item_count: np.ndarray  # number of items of each category
    item_ids: pa.Array
    cat_ids: pa.Array
    user_ids: pa.Array
    site_names: pa.Array


def _build_world(cfg: SynthConfig, rng: np.random.Generator) -> _World:
    """Draw the catalogue, the per-site category distributions and the id strings."""
    p_global = _zipf_weights(cfg.n_categories, cfg.category_zipf)
    # Shuffle which category gets which popularity rank, so category ids carry no order.
    p_global = p_global[rng.permutation(cfg.n_categories)]
    if cfg.site_concentration > 0:
        site_p = rng.dirichlet(cfg.site_concentration * cfg.n_categories * p_global, cfg.n_sites)
        site_p = np.maximum(site_p, 1e-12)
        site_p /= site_p.sum(axis=1, keepdims=True)
    else:
        site_p = np.tile(p_global, (cfg.n_sites, 1))
    # Items per category proportional to popularity (at least one each).
    extra = cfg.n_items - cfg.n_categories
    counts = 1 + np.floor(p_global * extra).astype(np.int64)
    short = cfg.n_items - counts.sum()
    counts[np.argsort(-p_global)[: max(short, 0)]] += 1
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    return _World(
        site_cat_p=site_p,
        cat_item_start=starts,
        cat_item_count=counts,
        item_ids=_unique_ids(rng, int(counts.sum()), 1_000_000),
        cat_ids=_unique_ids(rng, cfg.n_categories, 100_000),
        user_ids=pa.array(np.arange(1, cfg.n_shoppers + 1).astype(str), pa.string()),
        site_names=pa.array([f"site-{k}" for k in range(cfg.n_sites)], pa.string()),
    )


def _group_cumsum(values: np.ndarray, starts: np.ndarray, group: np.ndarray) -> np.ndarray:
    """Inclusive cumulative sum of ``values`` restarted at each group start."""
    cs = np.cumsum(values)
    before = cs[starts] - values[starts]
    return cs - before[group]


def _sample_sites_categories(
    rng: np.random.Generator, probs: np.ndarray, site_of: np.ndarray
) -> np.ndarray:
    """Draw one category per entry from its site's category distribution."""
    out = np.empty(site_of.shape[0], dtype=np.int64)
    cdf = np.cumsum(probs, axis=1)
    cdf[:, -1] = 1.0
    u = rng.random((int(site_of.shape[0]),))
    for s in range(probs.shape[0]):
        m = site_of == s
        if m.any():
            out[m] = np.searchsorted(cdf[s], u[m], side="right")
    return np.minimum(out, probs.shape[1] - 1)


def _gen_batch(
    cfg: SynthConfig, world: _World, rng: np.random.Generator, user0: int, n_users: int
) -> pa.Table:
    """Generate the events of shoppers user0 .. user0 + n_users - 1."""
    # ---- shoppers: site, event count, interest categories
    site = rng.integers(0, cfg.n_sites, size=n_users)
    n_ev = np.exp(rng.normal(cfg.events_log_mean, cfg.events_log_std, size=n_users))
    n_ev = np.clip(np.round(n_ev), cfg.min_events, cfg.max_events).astype(np.int64)
    total = int(n_ev.sum())
    u_start = np.concatenate([[0], np.cumsum(n_ev)[:-1]])
    owner = np.repeat(np.arange(n_users), n_ev)
    pos = np.arange(total, dtype=np.int64)
    first = u_start[owner]
    k_int = 1 + rng.poisson(cfg.interest_rate * n_ev**0.75)
    int_start = np.concatenate([[0], np.cumsum(k_int)[:-1]])
    interests = _sample_sites_categories(rng, world.site_cat_p, np.repeat(site, k_int))

    # ---- sessions: per shopper, lengths 1 + NB with a mean growing with activity
    mean_len = np.maximum(
        cfg.session_len_scale * n_ev.astype(float) ** cfg.session_len_exponent, 1.05
    )
    n_sess = np.ceil(1.5 * n_ev / mean_len).astype(np.int64) + 3
    s_owner = np.repeat(np.arange(n_users), n_sess)
    p_nb = cfg.session_nb_r / (cfg.session_nb_r + mean_len - 1.0)
    lens = 1 + rng.negative_binomial(cfg.session_nb_r, p_nb[s_owner])
    s_first = np.concatenate([[0], np.cumsum(n_sess)[:-1]])
    ends = _group_cumsum(lens, s_first, s_owner)  # session end offsets within the shopper
    keep = ends < n_ev[s_owner]
    sess_start = np.zeros(total, dtype=bool)
    sess_start[u_start[s_owner[keep]] + ends[keep]] = True
    sess_start[u_start] = True

    # ---- category runs
    new_run = sess_start | (rng.random(total) >= cfg.category_stay_prob)
    run_pos = np.flatnonzero(new_run)
    run_owner = owner[run_pos]
    rank = _power_rank(rng, k_int[run_owner], cfg.interest_zipf)
    run_cat = interests[int_start[run_owner] + rank]
    explore = rng.random(run_pos.shape[0]) < cfg.explore_prob
    if explore.any():
        run_cat[explore] = _sample_sites_categories(rng, world.site_cat_p, site[run_owner[explore]])
    cat = run_cat[np.cumsum(new_run) - 1]
    item = world.cat_item_start[cat] + _power_rank(rng, world.cat_item_count[cat], cfg.item_zipf)

    # ---- behaviours and item links (funnels, re-visits)
    mix = np.asarray(cfg.behavior_mix, dtype=float)
    beh = np.searchsorted(np.cumsum(mix / mix.sum()), rng.random(total), side="right")
    beh = np.minimum(beh, len(BEHAVIORS) - 1).astype(np.int8)
    history = pos - first  # number of earlier events of the same shopper
    local = rng.random(total) < cfg.link_local_prob
    dist = np.where(
        local,
        rng.geometric(_LINK_LOCAL_P, size=total),
        1 + np.floor(rng.random(total) * np.maximum(history, 1)).astype(np.int64),
    )
    dist = np.minimum(dist, np.maximum(history, 1))
    target = pos - dist
    is_view = beh == 0
    last_view = np.maximum.accumulate(np.where(is_view, pos, -1))
    last_cart = np.maximum.accumulate(np.where(beh == 1, pos, -1))
    prev_cart = np.concatenate([[-1], last_cart[:-1]])
    view_target = last_view[np.maximum(target, 0)]
    u = rng.random(total)
    ref = pos.copy()
    ok = history > 0
    m = ok & is_view & (u < cfg.view_revisit_prob)
    ref[m] = target[m]
    for code, p in ((1, cfg.cart_view_prob), (2, cfg.fav_view_prob)):
        m = ok & (beh == code) & (u < p) & (view_target >= first)
        ref[m] = view_target[m]
    is_buy = beh == 3
    u2 = rng.random(total)
    m_cart = ok & is_buy & (u2 < cfg.buy_cart_prob) & (prev_cart >= first)
    ref[m_cart] = prev_cart[m_cart]
    m = ok & is_buy & ~m_cart & (u < cfg.buy_view_prob) & (view_target >= first)
    ref[m] = view_target[m]
    while True:  # pointer jumping: every event takes the item of the root of its link chain
        nxt = ref[ref]
        if np.array_equal(nxt, ref):
            break
        ref = nxt
    item = item[ref]
    cat = cat[ref]

    # ---- timestamps
    within = np.exp(rng.normal(cfg.within_gap_log_mean, cfg.within_gap_log_std, size=total))
    within = np.clip(np.round(within), 1.0, SESSION_GAP_S)
    lo = ndtr((math.log(SESSION_GAP_S) - cfg.between_gap_log_mean) / cfg.between_gap_log_std)
    z = ndtri(lo + (1.0 - lo) * rng.random(total) * (1 - 1e-12))
    between = np.maximum(
        np.exp(cfg.between_gap_log_mean + cfg.between_gap_log_std * z), SESSION_GAP_S + 1
    )
    is_between = sess_start & (history > 0)
    gap = np.where(is_between, between, within)
    gap[u_start] = 0.0
    window = cfg.days * 86400.0 * 0.98
    w_sum = np.bincount(owner, weights=np.where(is_between, 0.0, gap), minlength=n_users)
    room = window - w_sum
    # Shoppers with many sessions: shrink their between-session gaps (in log space) to fit
    # the window, then squeeze what still overflows above the session threshold.
    b_sum = np.bincount(owner, weights=np.where(is_between, gap, 0.0), minlength=n_users)
    shrink = np.clip(room / np.maximum(b_sum, 1e-9), 0.0, 1.0)
    gap = np.where(is_between, np.maximum(gap * shrink[owner], SESSION_GAP_S + 1), gap)
    b_excess = np.bincount(
        owner, weights=np.where(is_between, gap - SESSION_GAP_S, 0.0), minlength=n_users
    )
    n_between = np.bincount(owner, weights=is_between, minlength=n_users)
    factor = np.clip((room - SESSION_GAP_S * n_between) / np.maximum(b_excess, 1e-9), 0.0, 1.0)
    gap = np.where(is_between, SESSION_GAP_S + (gap - SESSION_GAP_S) * factor[owner], gap)
    gap = np.round(gap)
    gap[is_between] = np.maximum(gap[is_between], SESSION_GAP_S + 1)
    offs = _group_cumsum(gap, u_start, owner)
    span = offs[np.concatenate([u_start[1:] - 1, [total - 1]])]
    begin = cfg.start_time + np.floor(rng.random(n_users) * np.maximum(window - span, 0.0))
    ts = begin[owner] + offs

    users = pa.array(np.arange(user0, user0 + n_users, dtype=np.int64))
    return pa.table(
        {
            "user_id": world.user_ids.take(pc.take(users, pa.array(owner))),
            "item_id": world.item_ids.take(pa.array(item)),
            "category_id": world.cat_ids.take(pa.array(cat)),
            "behavior": pa.array(beh, pa.int8()),
            "timestamp": pa.array(ts.astype(np.float64), pa.float64()),
            "site": world.site_names.take(pa.array(site[owner])),
        },
        schema=EVENT_SCHEMA.append(SITE_FIELD),
    )


def iter_event_batches(config: SynthConfig) -> Iterator[pa.Table]:
    """Yield the events of :func:`synthesize_events` batch by batch (for streaming to disk)."""
    config.validate()
    seeds = np.random.SeedSequence(config.seed)
    world_seed, batch_seed = seeds.spawn(2)
    world = _build_world(config, np.random.default_rng(world_seed))
    n_batches = math.ceil(config.n_shoppers / config.batch_size)
    for b, child in enumerate(batch_seed.spawn(n_batches)):
        user0 = b * config.batch_size
        n_users = min(config.batch_size, config.n_shoppers - user0)
        logger.debug("synth batch %d/%d: %d shoppers", b + 1, n_batches, n_users)
        yield _gen_batch(config, world, np.random.default_rng(child), user0, n_users)


def synthesize_events(config: SynthConfig) -> pa.Table:
    """Generate canonical events (+ ``site``), grouped by shopper and time-ordered."""
    table = pa.concat_tables(list(iter_event_batches(config))).combine_chunks()
    logger.info("synthesised %d events for %d shoppers", table.num_rows, config.n_shoppers)
    return check_events(table, "synthesize_events")
