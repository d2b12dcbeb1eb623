"""Split an events table into simulated sites by whole shoppers (natural id, IID, Dirichlet)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from seqanom_core.config import is_positive_number
from seqanom_core.errors import ConfigError
from seqanom_core.schema import BEHAVIORS, SITE_FIELD, check_events, encode_values

logger = logging.getLogger(__name__)

SCHEMES: tuple[str, ...] = ("natural", "iid", "dirichlet")


def _mode_per_shopper(user: np.ndarray, value: np.ndarray, n_users: int) -> np.ndarray:
    """Most frequent value code of each shopper (ties: the smallest code) ``(n_users,)``."""
    n_values = int(value.max()) + 1 if value.size else 1
    keys, counts = np.unique(user * n_values + value, return_counts=True)
    k_user, k_value = keys // n_values, keys % n_values
    best = np.lexsort((k_value, -counts, k_user))  # per shopper: highest count, then lowest code
    first = np.concatenate([[True], k_user[best][1:] != k_user[best][:-1]])
    out = np.zeros(n_users, dtype=np.int64)
    out[k_user[best][first]] = k_value[best][first]
    return out


def _natural(
    events: pa.Table, user: np.ndarray, n_users: int, n_sites: int, site_column: str
) -> tuple[np.ndarray, list[str]]:
    """Sites from the distinct values of ``site_column``; extra values merged into the smallest sites."""
    if site_column not in events.column_names:
        raise ConfigError(f"scheme 'natural' needs column '{site_column}', which the events lack")
    value, names = encode_values(events.column(site_column).cast(pa.string()), sort=True)
    if names.size < 2:
        raise ConfigError(
            f"scheme 'natural': column '{site_column}' has {names.size} distinct value(s); need >= 2"
        )
    group = _mode_per_shopper(user, value, n_users)
    if names.size < n_sites:  # fewer sites than asked would leave the caller's sites empty
        raise ConfigError(
            f"scheme 'natural': column '{site_column}' has only {names.size} value(s), fewer than "
            f"the {n_sites} sites asked for: ask for {names.size} sites or use another scheme"
        )
    if names.size == n_sites:
        return group, [str(v) for v in names]
    # More values than sites: the n_sites biggest groups seed the sites, every other group
    # (biggest first) joins the site with the fewest shoppers so far (ties: lowest index).
    size = np.bincount(group, minlength=names.size)
    by_size = np.lexsort((np.arange(names.size), -size))
    bin_of = np.empty(names.size, dtype=np.int64)
    load = np.zeros(n_sites, dtype=np.int64)
    for rank, g in enumerate(by_size):
        b = rank if rank < n_sites else int(np.argmin(load))
        bin_of[g] = b
        load[b] += size[g]
    members = [sorted(str(names[g]) for g in np.flatnonzero(bin_of == b)) for b in range(n_sites)]
    order = sorted(range(n_sites), key=lambda b: members[b][0])
    relabel = np.empty(n_sites, dtype=np.int64)
    relabel[order] = np.arange(n_sites)
    logger.info("merged %d values of '%s' into %d sites", names.size, site_column, n_sites)
    return relabel[bin_of[group]], ["+".join(members[b]) for b in order]


def _iid(n_users: int, n_sites: int, rng: np.random.Generator) -> np.ndarray:
    """Shoppers shuffled uniformly into near-equal sites ``(n_users,)``."""
    site = np.empty(n_users, dtype=np.int64)
    for k, part in enumerate(np.array_split(rng.permutation(n_users), n_sites)):
        site[part] = k
    return site


def _dirichlet(
    events: pa.Table, user: np.ndarray, n_users: int, n_sites: int, alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Each shopper to a site drawn from the Dirichlet proportions of their top category."""
    cat, cat_names = encode_values(events.column("category_id"), sort=True)
    top = _mode_per_shopper(user, cat, n_users)
    props = rng.dirichlet(np.full(n_sites, alpha), size=cat_names.size)  # (n_cat, n_sites)
    bad = ~np.isfinite(props).all(axis=1) | (props.sum(axis=1) <= 0)
    if bad.any():  # tiny alpha can underflow: put all mass on one random site
        props[bad] = np.eye(n_sites)[rng.integers(0, n_sites, size=int(bad.sum()))]
    cum = np.cumsum(props[top], axis=1)
    u = rng.random(n_users) * cum[:, -1]
    return np.minimum((u[:, None] >= cum).sum(axis=1), n_sites - 1)


def _rebalance(
    site: np.ndarray, n_sites: int, min_shoppers: int, rng: np.random.Generator
) -> np.ndarray:
    """Move shoppers from the largest site until every site has ``min_shoppers`` (in place)."""
    priority = rng.permutation(site.size)  # seeded order in which a donor gives shoppers away
    moved = 0
    while True:
        size = np.bincount(site, minlength=n_sites)
        short = np.flatnonzero(size < min_shoppers)
        if short.size == 0:
            break
        target = int(short[0])
        donor = int(np.argmax(size))  # ties: lowest index
        n_move = min(min_shoppers - size[target], size[donor] - min_shoppers)
        members = np.flatnonzero(site == donor)
        give = members[np.argsort(priority[members], kind="stable")[:n_move]]
        site[give] = target
        moved += give.size
    if moved:
        logger.info("moved %d shoppers so every site has >= %d", moved, min_shoppers)
    return site


def partition_events(
    events: pa.Table,
    n_sites: int,
    scheme: str,
    *,
    alpha: float = 0.5,
    site_column: str = "site",
    seed: int = 0,
    min_shoppers: int = 10,
) -> list[pa.Table]:
    """Split events into sites by whole shoppers; each table's ``site`` column names its site.

    ``natural`` uses the distinct values of ``site_column`` (sorted); a shopper seen under
    several values goes to their most frequent one. With more values than ``n_sites`` the
    biggest groups seed the sites and the others join the smallest site so far (a merged site
    is named by its values joined with "+"); fewer values than ``n_sites`` is an error.
    ``iid`` deals shuffled shoppers into near-equal sites. ``dirichlet`` draws site
    proportions ~ Dirichlet(alpha) per category and sends each shopper to a site drawn from
    the proportions of their most frequent category, then tops up sites below
    ``min_shoppers`` from the largest site.
    """
    if scheme not in SCHEMES:
        raise ConfigError(f"unknown partition scheme {scheme!r}; choose from {', '.join(SCHEMES)}")
    if n_sites < 2:
        raise ConfigError(f"n_sites must be >= 2, not {n_sites}")
    if not is_positive_number(alpha):
        raise ConfigError(f"alpha must be a positive number, not {alpha}")
    if min_shoppers < 1:
        raise ConfigError(f"min_shoppers must be >= 1, not {min_shoppers}")
    check_events(events, "partition_events")
    user, user_ids = encode_values(events.column("user_id"), sort=True)
    n_users = user_ids.size
    if n_users < n_sites * min_shoppers:
        raise ConfigError(
            f"{n_users} shoppers cannot fill n_sites={n_sites} sites of min_shoppers={min_shoppers}"
        )
    rng = np.random.default_rng(seed)
    if scheme == "natural":
        site, names = _natural(events, user, n_users, n_sites, site_column)
        size = np.bincount(site, minlength=len(names))
        small = {names[k]: int(size[k]) for k in np.flatnonzero(size < min_shoppers)}
        if small:
            raise ConfigError(
                f"scheme 'natural': sites of column '{site_column}' below min_shoppers="
                f"{min_shoppers}: {small}"
            )
    else:
        if scheme == "iid":
            site = _iid(n_users, n_sites, rng)
        else:
            site = _rebalance(_dirichlet(events, user, n_users, n_sites, alpha, rng),
                              n_sites, min_shoppers, rng)
        names = [f"site-{k}" for k in range(n_sites)]
    row_site = site[user]
    parts = []
    for k, name in enumerate(names):
        part = events.take(pa.array(np.flatnonzero(row_site == k), pa.int64()))
        column = pa.array(np.full(part.num_rows, name, dtype=object), pa.string())
        if "site" in part.column_names:
            part = part.set_column(part.column_names.index("site"), SITE_FIELD, column)
        else:
            part = part.append_column(SITE_FIELD, column)
        parts.append(part)
    logger.info("partition %s: %d shoppers into sites of %s shoppers", scheme, n_users,
                np.bincount(site, minlength=len(names)).tolist())
    return parts


def _category_share(table: pa.Table) -> pd.Series:
    """Share of events per category."""
    return pd.Series(table.column("category_id").to_numpy(zero_copy_only=False)).value_counts(
        normalize=True
    )


def partition_summary(parts: list[pa.Table]) -> list[dict]:
    """Per site: shoppers, events, behaviour mix, and TV distance of categories from the pool."""
    pooled = _category_share(pa.concat_tables([p.select(["category_id"]) for p in parts]))
    rows = []
    for k, part in enumerate(parts):
        name = part.column("site")[0].as_py() if "site" in part.column_names and part.num_rows \
            else f"site-{k}"
        beh = np.bincount(part.column("behavior").to_numpy().astype(np.int64),
                          minlength=len(BEHAVIORS))
        share = _category_share(part)
        tv = 0.5 * float(share.sub(pooled, fill_value=0.0).abs().sum())
        rows.append({
            "site": name,
            "shoppers": int(pc.count_distinct(part.column("user_id")).as_py()),
            "events": int(part.num_rows),
            "behavior_mix": {b: float(beh[i] / max(part.num_rows, 1))
                             for i, b in enumerate(BEHAVIORS)},
            "category_tv": tv,
        })
    return rows
