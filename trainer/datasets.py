"""Deterministic synthetic data sets: card transactions with a learnable fraud label, and the
per-entity feature histories a feature store ingests (a generic one, and the daily per-user and
per-merchant aggregates of the card transactions that ``mlserve demo`` serves from).

Pure functions of their arguments (seeded numpy generators); safe to call from any thread.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pandas as pd

_CATEGORIES = ["grocery", "fuel", "restaurant", "travel", "electronics", "fashion", "pharmacy",
               "gaming", "jewelry", "gift_cards", "crypto", "pawn_shop"]
_COUNTRIES = ["US", "GB", "DE", "FR", "ES", "IT", "NL", "CA", "MX", "BR", "IN", "JP",
              "NG", "RU", "VN", "KP"]
_RISKY_CATEGORIES = {"gaming", "jewelry", "gift_cards", "crypto", "pawn_shop"}
_RISKY_COUNTRIES = {"NG", "RU", "VN", "KP"}
_START = pd.Timestamp("2026-01-01T00:00:00Z")
#: The columns ``card_transactions``' ``drift`` knob can shift.
DRIFTING_FEATURES = ("amount", "tx_velocity_1h", "distance_km", "country", "channel")


def _zipf_choice(rng: np.random.Generator, values: list[str], n: int, a: float) -> np.ndarray:
    """Draw from ``values`` with Zipf-like weights (the tail values are rare)."""
    weights = 1.0 / np.arange(1, len(values) + 1) ** a
    return rng.choice(np.array(values, dtype=object), size=n, p=weights / weights.sum())


def card_transactions(n_rows: int = 20000, seed: int = 7, drift: float = 0.0,
                      drift_features: Collection[str] | None = None) -> pd.DataFrame:
    """Synthetic card transactions with an ``is_fraud`` label (about 5% positives).

    Columns: ``user_id``, ``merchant_id`` (entities, int64), ``event_ts`` (UTC, increasing),
    numeric ``amount`` (lognormal), ``account_age_days``, ``tx_velocity_1h``, ``hour``,
    ``distance_km`` (with missing values), string categoricals ``merchant_category``,
    ``country``, ``channel`` (with rare values and a few missing), and ``is_fraud`` (0/1).
    A well-fitted model reaches ROC-AUC well above 0.9. ``drift`` (0 = none, 1 = strong) shifts
    amounts, velocities, distances and the country/channel mix, as production traffic might;
    ``drift_features`` (default: all of ``DRIFTING_FEATURES``) limits it to some of them. The
    same seed draws the same random numbers whatever the drift, so only the shifted columns
    (and the labels that depend on them) change.
    """
    chosen = DRIFTING_FEATURES if drift_features is None else tuple(drift_features)
    unknown = sorted(set(chosen) - set(DRIFTING_FEATURES))
    if unknown:
        raise ValueError(f"drift_features: {', '.join(unknown)} cannot drift; choose from "
                         f"{', '.join(DRIFTING_FEATURES)}")

    def shift(column: str) -> float:
        return drift if column in chosen else 0.0

    rng = np.random.default_rng(seed)
    n = int(n_rows)
    user_id = rng.integers(1, max(2, n // 20), n)
    merchant_id = rng.integers(1, max(2, n // 10), n)
    seconds = np.sort(rng.uniform(0, 90 * 86400, n))
    event_ts = _START + pd.to_timedelta(seconds, unit="s")
    amount = rng.lognormal(3.5 + 0.5 * shift("amount"), 1.1, n)
    account_age = rng.gamma(2.0, 400.0, n)
    velocity = rng.poisson(1.2 + 1.5 * shift("tx_velocity_1h"), n).astype(np.float64)
    hour = event_ts.hour.to_numpy().astype(np.float64)
    distance = rng.lognormal(2.0 + 0.7 * shift("distance_km"), 1.3, n)
    category = _zipf_choice(rng, _CATEGORIES, n, 1.1)
    country = _zipf_choice(rng, _COUNTRIES, n, 1.4 - 0.6 * shift("country"))
    mix = shift("channel")
    channel = rng.choice(np.array(["pos", "web", "app"], dtype=object), n,
                         p=np.array([0.55, 0.3, 0.15]) * (1 - mix) + np.array([0.2, 0.4, 0.4])
                         * mix)

    night = (hour < 5) | (hour >= 23)
    logit = (
        -6.2
        + 1.6 * (np.log1p(amount) - 3.5)
        - 1.4 * np.log1p(account_age / 100.0)
        + 1.1 * velocity
        + 1.8 * night
        + 1.0 * np.log1p(distance) * (distance > 50)
        + 2.2 * np.isin(category, list(_RISKY_CATEGORIES))
        + 2.0 * np.isin(country, list(_RISKY_COUNTRIES))
        + 1.2 * (channel == "web")
    )
    logit = 1.8 * logit + 1.0
    is_fraud = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)

    frame = pd.DataFrame({
        "user_id": user_id.astype(np.int64),
        "merchant_id": merchant_id.astype(np.int64),
        "event_ts": event_ts,
        "amount": amount.round(2),
        "account_age_days": account_age.round(0),
        "tx_velocity_1h": velocity,
        "hour": hour,
        "distance_km": distance.round(1),
        "merchant_category": pd.Series(category, dtype=object),
        "country": pd.Series(country, dtype=object),
        "channel": pd.Series(channel, dtype=object),
        "is_fraud": is_fraud,
    })
    for column, rate in (("amount", 0.02), ("account_age_days", 0.03), ("distance_km", 0.1)):
        frame.loc[rng.random(n) < rate, column] = np.nan
    frame.loc[rng.random(n) < 0.01, "country"] = None
    return frame


def feature_history(n_users: int = 500, n_events: int = 5000, seed: int = 11,
                    max_delay_s: float = 300.0) -> pd.DataFrame:
    """Per-entity feature rows for a feature store: ``user_id``, ``event_ts`` (when the value
    became true), ``created_ts`` (when it was written, a little later), and the features
    ``tx_count_24h``, ``avg_amount_7d``, ``account_age_days``, ``home_country``.
    Rows are sorted by ``event_ts``; each user's values evolve over time.
    """
    rng = np.random.default_rng(seed)
    user_id = rng.integers(1, n_users + 1, n_events).astype(np.int64)
    seconds = np.sort(rng.uniform(0, 30 * 86400, n_events))
    event_ts = _START + pd.to_timedelta(seconds, unit="s")
    created_ts = event_ts + pd.to_timedelta(rng.uniform(0, max_delay_s, n_events), unit="s")
    base_age = rng.gamma(2.0, 400.0, n_users + 1)
    homes = _zipf_choice(rng, _COUNTRIES, n_users + 1, 1.4)
    return pd.DataFrame({
        "user_id": user_id,
        "event_ts": event_ts,
        "created_ts": created_ts,
        "tx_count_24h": rng.poisson(3.0, n_events).astype(np.int64),
        "avg_amount_7d": rng.lognormal(3.5, 0.8, n_events).round(2),
        "account_age_days": (base_age[user_id] + seconds / 86400.0).round(0),
        "home_country": pd.Series(homes[user_id], dtype=object),
    })


def _window_sums(daily: np.ndarray, end: int, length: int, lag: int = 0) -> np.ndarray:
    """Per entity, the sum of ``daily[:, d]`` over the ``length`` days ending ``lag`` days
    before each day ``d`` (inclusive), for every d < ``end``: shape [entities, end]."""
    cs = np.concatenate([np.zeros((daily.shape[0], 1)), np.cumsum(daily, axis=1)], axis=1)
    hi = np.clip(np.arange(end) + 1 - lag, 0, None)
    lo = np.clip(hi - length, 0, None)
    return np.asarray(cs[:, hi] - cs[:, lo])


def _daily(ids: np.ndarray, day: np.ndarray, values: np.ndarray, shape: tuple[int, int]
           ) -> np.ndarray:
    out = np.zeros(shape)
    np.add.at(out, (ids, day), values)
    return out


def transaction_feature_history(transactions: pd.DataFrame, *, delay_s: float = 300.0,
                                label_delay_days: int = 7) -> dict[str, pd.DataFrame]:
    """The per-entity feature views a feature store would compute from card transactions
    (:func:`card_transactions`): daily batch snapshots, one row per entity and day with
    transactions, stamped at the end of that day (``event_ts``) and written ``delay_s`` later
    (``created_ts``).

    - ``user_activity`` (``user_id``): ``tx_count_1d``, ``tx_count_7d``, ``amount_avg_7d``,
      ``amount_max_7d``, ``night_share_7d`` (share of transactions between 23:00 and 05:00).
    - ``merchant_risk`` (``merchant_id``): ``tx_count_30d``, ``amount_avg_30d`` and
      ``fraud_rate_30d``, the smoothed fraud rate of the 30 days ending ``label_delay_days``
      before the snapshot: fraud labels arrive late, so a snapshot never counts labels that
      were not known yet (and a point-in-time join never leaks a transaction's own label).

    The transactions are drawn independently of their entities, so these aggregates carry
    little signal about ``is_fraud``; they show the plumbing (the request-time columns of the
    transaction carry the signal).
    """
    ts = pd.to_datetime(transactions["event_ts"], utc=True)
    t0 = ts.min().floor("D")
    day = ((ts - t0) // pd.Timedelta(days=1)).to_numpy(np.int64)
    n_days = int(day.max()) + 1
    amount = transactions["amount"].to_numpy(np.float64)
    has_amount = ~np.isnan(amount)
    amount0 = np.where(has_amount, amount, 0.0)
    hour = ts.dt.hour.to_numpy()
    night = ((hour < 5) | (hour >= 23)).astype(np.float64)
    fraud = transactions["is_fraud"].to_numpy(np.float64)
    out: dict[str, pd.DataFrame] = {}
    for view, key, window in (("user_activity", "user_id", 7), ("merchant_risk", "merchant_id",
                                                                  30)):
        ids = transactions[key].to_numpy(np.int64)
        shape = (int(ids.max()) + 1, n_days)
        count = _daily(ids, day, np.ones(len(ids)), shape)
        sums = {
            "count": _window_sums(count, n_days, window),
            "amounts": _window_sums(_daily(ids, day, has_amount.astype(np.float64), shape),
                                    n_days, window),
            "amount": _window_sums(_daily(ids, day, amount0, shape), n_days, window),
        }
        entity, snap = np.nonzero(count)
        with np.errstate(invalid="ignore", divide="ignore"):
            amount_avg = (sums["amount"] / sums["amounts"])[entity, snap]
        event_ts = t0 + pd.to_timedelta(snap + 1, unit="D")
        frame = pd.DataFrame({key: entity.astype(np.int64), "event_ts": event_ts,
                              "created_ts": event_ts + pd.Timedelta(seconds=delay_s)})
        if view == "user_activity":
            amount_max = np.full(shape, np.nan)
            np.fmax.at(amount_max, (ids, day), amount)
            rolled = np.stack([np.roll(amount_max, k, axis=1) for k in range(window)])
            for k in range(1, window):  # no wrap-around from the last days
                rolled[k][:, :k] = np.nan
            nights = _window_sums(_daily(ids, day, night, shape), n_days, window)
            frame["tx_count_1d"] = count[entity, snap].astype(np.int64)
            frame["tx_count_7d"] = sums["count"][entity, snap].astype(np.int64)
            frame["amount_avg_7d"] = amount_avg.round(2)
            frame["amount_max_7d"] = np.fmax.reduce(rolled, axis=0)[entity, snap]
            frame["night_share_7d"] = (nights[entity, snap]
                                       / sums["count"][entity, snap]).round(3)
        else:
            lag = label_delay_days
            labelled = _window_sums(count, n_days, window, lag)
            frauds = _window_sums(_daily(ids, day, fraud, shape), n_days, window, lag)
            prior = float(fraud.mean())  # smoothing towards the overall rate, 5 pseudo-rows
            frame["tx_count_30d"] = sums["count"][entity, snap].astype(np.int64)
            frame["amount_avg_30d"] = amount_avg.round(2)
            frame["fraud_rate_30d"] = ((frauds + 5 * prior) / (labelled + 5))[entity, snap]
        out[view] = frame.sort_values("event_ts", kind="stable").reset_index(drop=True)
    return out
