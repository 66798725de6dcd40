"""User-item interactions for recommendation: reading and checking, cleaning, id maps, per-user histories,
train/validation/test splits and negative sampling.

Interactions come from a CSV/TSV/JSONL/Parquet table with user, item and optional rating / timestamp columns, or
straight from MovieLens files (ml-100k `u.data`, `u1.base`..., ml-1m/10m `ratings.dat`). Every bad row stops with
an error naming the file, the line and the field.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from luban.data.readers import LINE, decode_file, read_table, resolve_column
from luban.errors import DataError

USER, ITEM, RATING, TIME = "user", "item", "rating", "timestamp"
ROLES = (USER, ITEM, RATING, TIME)
# column names tried (case-insensitively) when data.columns does not name one
GUESSES = {
    USER: ("user", "user_id", "userid", "uid", "customer_id", "visitor_id", "visitorid", "member_id"),
    ITEM: ("item", "item_id", "itemid", "iid", "movie_id", "movieid", "product_id", "track_id", "song_id",
           "book_id", "course_id"),
    RATING: ("rating", "ratings", "score", "stars"),
    TIME: ("timestamp", "time", "ts", "datetime", "date", "event_time", "created_at"),
}
# then any id-like column (user_id, userID, UserId, USER_ID ...): the user's by its stem, the item the one left
_ID_LIKE = re.compile(r"(?:[_\-\s][iI][dD]|[a-z0-9]I[dD]|^[A-Z0-9_]+ID)$")
USER_STEMS = ("user", "customer", "visitor", "member", "client", "account", "person", "reader", "listener",
              "viewer", "buyer", "player", "subscriber", "u")
# a per-row strength of an implicit interaction (lastfm's weight, play counts): reported, not used by the models
WEIGHT_GUESSES = ("weight", "weights", "count", "counts", "plays", "playcount", "play_count", "plays_count",
                  "listens", "listen_count", "clicks", "click_count", "views", "view_count", "quantity", "qty",
                  "frequency", "freq", "times")


# ------------------------------------------------------------------------------------------------ reading


def movielens_kind(path: Path) -> str | None:
    """'tab' for ml-100k rating files (u.data, u1.base, ua.test ...), '::' for ratings.dat, else None."""
    name = Path(path).name.lower()
    if name == "u.data" or re.fullmatch(r"u[1-5ab]\.(base|test)", name):
        return "\t"
    if name == "ratings.dat":
        return "::"
    return None


def read_movielens(path: Path, sep: str, names: list[str], encoding: str = "latin-1") -> pd.DataFrame:
    """A MovieLens-style file without header: one record per line, fields split by `sep` (may be '::')."""
    text = decode_file(Path(path), encoding)
    rows, lines = [], []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split(sep)
        if len(parts) != len(names):
            raise DataError(f"{path}: line {n}: expected {len(names)} fields separated by {sep!r} "
                            f"({', '.join(names)}), found {len(parts)}")
        rows.append(parts)
        lines.append(n)
    if not rows:
        raise DataError(f"{path}: no data rows")
    df = pd.DataFrame(rows, columns=names, dtype=object)
    df[LINE] = lines
    df.attrs["source"] = str(path)
    return df


def _stem(column) -> str:
    """userID -> user, artist_id -> artist, Movie-Id -> movie."""
    return re.sub(r"[^0-9a-z]", "", str(column)[:-2].lower())


def _guess(frame: pd.DataFrame, role: str, header: bool, taken=()) -> str | None:
    cols = [c for c in frame.columns if c != LINE]
    if not header:  # positional defaults: user, item, rating, timestamp
        pos = ROLES.index(role)
        return cols[pos] if pos < len(cols) else None
    lower = {str(c).lower(): c for c in cols}
    exact = next((lower[g] for g in GUESSES[role] if g in lower), None)
    if exact is not None or role not in (USER, ITEM):
        return exact
    ids = [c for c in cols if _ID_LIKE.search(str(c)) and c not in taken]
    if role == USER:
        return next((c for c in ids if _stem(c) in USER_STEMS), None)
    ids = [c for c in ids if _stem(c) not in USER_STEMS]
    if len(ids) > 1:
        raise DataError(f"{frame.attrs.get('source', 'data')}: several columns could hold the item id "
                        f"({', '.join(map(str, ids))}); name it with data.columns.item")
    return ids[0] if ids else None


def weight_column(frame: pd.DataFrame, taken) -> str | None:
    """A column of per-row interaction strengths (weight, count, plays ...) not used for another role."""
    lower = {str(c).lower(): c for c in frame.columns if c != LINE and c not in taken}
    return next((lower[g] for g in WEIGHT_GUESSES if g in lower), None)


def user_column(frame: pd.DataFrame, columns, header: bool) -> str | None:
    """The user column of a table: data.columns.user, else a guess by name (or position without header)."""
    return resolve_column(frame, columns.user, USER) if columns.user is not None else _guess(frame, USER, header)


def interaction_columns(frame: pd.DataFrame, columns, header: bool) -> dict[str, str | None]:
    """The frame's column for each role: data.columns.<role> when set, else a guess by name (or by position in a
    file without header). user and item are required."""
    out = {}
    for role in ROLES:
        ref = getattr(columns, role)
        out[role] = (resolve_column(frame, ref, role) if ref is not None
                     else _guess(frame, role, header, taken=[c for c in out.values() if c is not None]))
    for role in (USER, ITEM):
        if out[role] is None:
            cols = ", ".join(str(c) for c in frame.columns if c != LINE)
            raise DataError(f"{frame.attrs.get('source', 'data')}: no {role} column found (tried "
                            f"{', '.join(GUESSES[role])} and names ending in _id / ID / Id); "
                            f"set data.columns.{role} (columns are: {cols})")
    return out


def canonical_ids(values: pd.Series, lines: np.ndarray, source: str, field: str, role: str, int_ids: bool,
                  why_int: str = "") -> np.ndarray:
    """Ids as strings; missing ones are an error, and with `int_ids` so is anything but an integer (007 -> 7)."""
    def text(v):
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return "" if v is None or (isinstance(v, float) and np.isnan(v)) else str(v).strip()

    s = pd.Series([text(v) for v in values], dtype=object)
    empty = (s == "").to_numpy()
    if empty.any():
        i = int(np.flatnonzero(empty)[0])
        raise DataError(f"{source}: line {lines[i]}: field {field!r}: missing {role} id")
    if not int_ids:
        return s.to_numpy(dtype=object)
    ok = s.str.fullmatch(r"[+-]?\d+").to_numpy(dtype=bool)
    if not ok.all():
        i = int(np.flatnonzero(~ok)[0])
        raise DataError(f"{source}: line {lines[i]}: field {field!r}: {role} id {s.iloc[i]!r} is not an integer "
                        f"(recommendation.id_type is int{why_int}; set recommendation.id_type: str for text ids)")
    return np.array([str(int(v)) for v in s], dtype=object)


def parse_numbers(values: pd.Series, lines: np.ndarray, source: str, field: str, what: str) -> np.ndarray:
    """Floats; empty cells become NaN, anything else that is not a number is an error naming the line."""
    raw = pd.Series(list(values), dtype=object)
    missing = raw.isna().to_numpy() | (raw.astype(str).str.strip() == "").to_numpy()
    num = pd.to_numeric(raw.where(~missing, None), errors="coerce").to_numpy(dtype=float)
    bad = (np.isnan(num) & ~missing) | np.isinf(num)  # inf would turn the loss into NaN
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: line {lines[i]}: field {field!r}: {what} {raw.iloc[i]!r} is not a "
                        f"{'finite ' * bool(np.isinf(num[i]))}number")
    return num


def parse_times(values: pd.Series, lines: np.ndarray, source: str, field: str) -> np.ndarray:
    """Seconds: numbers as they are (unix time), or dates/datetimes parsed; a missing or unparsable one is an error."""
    raw = pd.Series(list(values), dtype=object)
    text = raw.astype(str).str.strip()
    missing = raw.isna().to_numpy() | (text == "").to_numpy()
    if missing.any():
        i = int(np.flatnonzero(missing)[0])
        raise DataError(f"{source}: line {lines[i]}: field {field!r}: missing timestamp")
    num = pd.to_numeric(raw, errors="coerce").to_numpy(dtype=float)
    if not np.isnan(num).any():
        return num
    dates = pd.to_datetime(text, errors="coerce", utc=True, format="mixed")
    bad = dates.isna().to_numpy()
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{source}: line {lines[i]}: field {field!r}: timestamp {raw.iloc[i]!r} is neither a "
                        "number (unix time) nor a date")
    return ((dates - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)).to_numpy(dtype=float)


def read_interactions(path: Path, data_cfg, id_type: str) -> pd.DataFrame:
    """One interactions file as a frame with columns user, item (canonical id strings), rating, timestamp (floats,
    NaN when the file has none) and _line; attrs: source, columns (role -> the file's column), int_ids."""
    path = Path(path)
    sep = movielens_kind(path)
    if sep is not None:
        raw = read_movielens(path, sep, list(ROLES))
        cols = {r: r for r in ROLES}
        int_ids, why = id_type != "str", " for MovieLens files"
    else:
        raw = read_table(path, data_cfg.format, data_cfg.header, data_cfg.delimiter, data_cfg.quoting,
                         data_cfg.encoding_for(path))
        cols = interaction_columns(raw, data_cfg.columns, data_cfg.header)
        int_ids, why = id_type == "int", ""
    weight = weight_column(raw, [c for c in cols.values() if c is not None]) if data_cfg.header else None
    src, lines = str(path), raw[LINE].to_numpy()
    out = pd.DataFrame({LINE: lines})
    for role in (USER, ITEM):
        out[role] = canonical_ids(raw[cols[role]], lines, src, str(cols[role]), role, int_ids, why)
    out[RATING] = (parse_numbers(raw[cols[RATING]], lines, src, str(cols[RATING]), "rating")
                   if cols[RATING] is not None else np.nan)
    out[TIME] = parse_times(raw[cols[TIME]], lines, src, str(cols[TIME])) if cols[TIME] is not None else np.nan
    out.attrs.update(source=src, columns={r: (str(c) if c is not None else None) for r, c in cols.items()},
                     int_ids=int_ids, weight_column=str(weight) if weight is not None else None)
    return out


# ------------------------------------------------------------------------------------------------ cleaning


def _keep(frame: pd.DataFrame, mask: np.ndarray) -> pd.DataFrame:
    attrs = frame.attrs
    out = frame[mask].reset_index(drop=True)
    out.attrs = attrs
    return out


def require_ratings(frame: pd.DataFrame, why: str) -> None:
    col = frame.attrs.get("columns", {}).get(RATING)
    if col is None:
        raise DataError(f"{frame.attrs.get('source', 'data')}: {why} needs ratings, and the file has no rating "
                        "column (set data.columns.rating)")
    missing = np.isnan(frame[RATING].to_numpy(dtype=float))
    if missing.any():
        line = frame[LINE].iloc[int(np.flatnonzero(missing)[0])]
        raise DataError(f"{frame.attrs['source']}: line {line}: field {col!r}: missing rating ({why} needs one)")


def clean_interactions(frame: pd.DataFrame, threshold: float | None,
                       drop_duplicates: bool) -> tuple[pd.DataFrame, dict]:
    """Binarize by rating threshold (rows below are dropped) and keep only the latest row of a repeated pair."""
    dropped = {}
    if threshold is not None:
        keep = frame[RATING].to_numpy(dtype=float) >= threshold
        if (~keep).any():
            dropped[f"rating below {threshold:g}"] = int((~keep).sum())
            frame = _keep(frame, keep)
    if drop_duplicates and len(frame):
        order = time_order(frame)
        last = ~frame.iloc[order].duplicated([USER, ITEM], keep="last").to_numpy()
        keep = np.zeros(len(frame), dtype=bool)
        keep[order[last]] = True
        if (~keep).any():
            dropped["repeated user-item pairs (the latest kept)"] = int((~keep).sum())
            frame = _keep(frame, keep)
    return frame, dropped


def k_core(frame: pd.DataFrame, min_user: int, min_item: int) -> tuple[pd.DataFrame, int]:
    """Repeatedly drop users / items with too few interactions; returns the frame and the rows dropped."""
    n0 = len(frame)
    for _ in range(50):
        uc = frame[USER].map(frame[USER].value_counts()).to_numpy()
        ic = frame[ITEM].map(frame[ITEM].value_counts()).to_numpy()
        keep = (uc >= min_user) & (ic >= min_item)
        if keep.all():
            break
        frame = _keep(frame, keep)
    return frame, n0 - len(frame)


# ------------------------------------------------------------------------------------------------ order and splits


def time_order(frame: pd.DataFrame, by_user: bool = False) -> np.ndarray:
    """Row order by (user,) timestamp, then line: ties in time keep the file's order; no timestamps = file order."""
    t = np.nan_to_num(frame[TIME].to_numpy(dtype=float), nan=0.0)
    keys = (frame[LINE].to_numpy(), t) + ((frame[USER].to_numpy(),) if by_user else ())
    return np.lexsort(keys)


def has_timestamps(frame: pd.DataFrame) -> bool:
    return bool(frame[TIME].notna().any())


def resolve_split(frames: dict, strategy: str) -> tuple[str, str | None]:
    """The split to use and why it differs from the one asked for: without a timestamp column "latest" means the
    last row in the file (often each user's highest item id), so leave_last_out becomes leave_random_out and
    temporal_ratio random_ratio, with a note saying so."""
    needs_split = frames.get("test") is None or frames.get("validation") is None
    if strategy not in ("leave_last_out", "temporal_ratio") or not needs_split or has_timestamps(frames["train"]):
        return strategy, None
    instead, what, held = {
        "leave_last_out": ("leave_random_out", "each user's last row", "one random interaction per user"),
        "temporal_ratio": ("random_ratio", "the last rows", "random data.split fractions")}[strategy]
    return instead, (f"{frames['train'].attrs.get('source', 'data.train')} has no timestamp column, so "
                     f"recommendation.split: {strategy} would hold out {what} in file order (often the highest "
                     f"item ids), not the latest; holding out {held} instead (split {instead}, seeded). Name the "
                     f"time column with data.columns.timestamp, or set recommendation.split: {instead} to choose "
                     "this yourself.")


def _split_off(frame: pd.DataFrame, strategy: str, fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(frame)
    held = np.zeros(n, dtype=bool)
    if strategy in ("leave_last_out", "leave_random_out"):  # one row per user who keeps at least one other
        # leave_last_out: each user's latest row; leave_random_out: a seeded random one
        order = (time_order(frame, by_user=True) if strategy == "leave_last_out"
                 else np.lexsort((np.random.default_rng(seed).permutation(n), frame[USER].to_numpy())))
        users = frame[USER].to_numpy()[order]
        last = np.r_[users[1:] != users[:-1], True]
        first = np.r_[True, users[1:] != users[:-1]]
        held[order[last & ~first]] = True
    else:
        k = int(round(n * fraction))
        order = time_order(frame) if strategy == "temporal_ratio" else np.random.default_rng(seed).permutation(n)
        if k:
            held[order[n - k:]] = True
    return _keep(frame, ~held), _keep(frame, held)


def split_interactions(frames: dict, strategy: str, validation: float, test: float, seed: int) -> dict:
    """Train/validation/test: the given files, or held out of train by the strategy (test first, then
    validation from what is left, as leave-last-out does it twice)."""
    train = frames["train"]
    out = {}
    if frames.get("test") is None:
        train, out["test"] = _split_off(train, strategy, test, seed)
    else:
        out["test"] = frames["test"]
    if frames.get("validation") is None:
        frac = validation / max(1e-9, 1 - (test if frames.get("test") is None else 0))
        train, out["validation"] = _split_off(train, strategy, frac, seed + 1)
    else:
        out["validation"] = frames["validation"]
    out["train"] = train
    for split in ("train", "validation", "test"):
        if len(out[split]) == 0:
            hint = (" (leave-last-out needs users with at least 3 interactions)"
                    if strategy in ("leave_last_out", "leave_random_out")
                    else " (raise data.split fractions)")
            raise DataError(f"{train.attrs.get('source', 'data')}: no {split} interactions after splitting{hint}")
    return {s: out[s] for s in ("train", "validation", "test")}


# ------------------------------------------------------------------------------------------------ ids and histories


def _id_key(v: str):
    return (0, int(v), v) if re.fullmatch(r"[+-]?\d+", v) else (1, 0, v)


class IdMap:
    """Raw id (string) <-> contiguous index, numbers in numeric order."""

    def __init__(self, ids):
        self.ids = list(ids)
        self.index = {v: i for i, v in enumerate(self.ids)}

    @classmethod
    def fit(cls, *columns) -> "IdMap":
        return cls(sorted({v for col in columns for v in col}, key=_id_key))

    def __len__(self):
        return len(self.ids)

    def get(self, raw) -> int | None:
        return self.index.get(str(raw).strip())

    def encode(self, values) -> np.ndarray:
        """Indexes; -1 where an id is unknown."""
        return np.fromiter((self.index.get(v, -1) for v in values), dtype=np.int64, count=len(values))


def id_maps_state(users: IdMap, items: IdMap, int_ids: bool) -> dict:
    """The "ids" part of a recommender's processor.json (luban.processor)."""
    return {"int_ids": int_ids, "users": users.ids, "items": items.ids}


def id_maps_from_state(d: dict) -> tuple[IdMap, IdMap, bool]:
    return IdMap(d["users"]), IdMap(d["items"]), d["int_ids"]


@dataclass
class Encoded:
    """One split as index arrays (rows in file order)."""

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    times: np.ndarray
    lines: np.ndarray

    @classmethod
    def of(cls, frame: pd.DataFrame, users: IdMap, items: IdMap) -> "Encoded":
        return cls(users.encode(frame[USER].tolist()), items.encode(frame[ITEM].tolist()),
                   frame[RATING].to_numpy(dtype=np.float32), np.nan_to_num(frame[TIME].to_numpy(dtype=float)),
                   frame[LINE].to_numpy(dtype=np.int64))

    def __len__(self):
        return len(self.users)

    @staticmethod
    def concat(parts: list["Encoded"]) -> "Encoded":
        return Encoded(*(np.concatenate([getattr(p, f) for p in parts])
                         for f in ("users", "items", "ratings", "times", "lines")))


class Histories:
    """Each user's items in time order (CSR: items[indptr[u]:indptr[u + 1]])."""

    def __init__(self, indptr: np.ndarray, items: np.ndarray):
        self.indptr, self.items = indptr.astype(np.int64), items.astype(np.int64)

    @classmethod
    def build(cls, data: Encoded, n_users: int, order_tiebreak: np.ndarray | None = None) -> "Histories":
        """`order_tiebreak`: a key after time (default: the file line)."""
        tie = data.lines if order_tiebreak is None else order_tiebreak
        order = np.lexsort((tie, data.times, data.users))
        counts = np.bincount(data.users, minlength=n_users)
        return cls(np.r_[0, np.cumsum(counts)], data.items[order])

    @property
    def n_users(self) -> int:
        return len(self.indptr) - 1

    def of(self, u: int) -> np.ndarray:
        if u < 0 or u >= self.n_users:
            return np.zeros(0, dtype=np.int64)
        return self.items[self.indptr[u]:self.indptr[u + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def user_index(self) -> np.ndarray:
        """The user of every entry of `items`."""
        return np.repeat(np.arange(self.n_users), self.lengths())


# ------------------------------------------------------------------------------------------------ negatives


class NegativeSampler:
    """Items a user has not interacted with: uniform, or in proportion to popularity**exponent. A draw that hits
    a positive is redrawn (up to 20 times; what still collides after that is kept, vanishingly rare)."""

    def __init__(self, n_items: int, users: np.ndarray, items: np.ndarray, sampler: str = "uniform",
                 exponent: float = 0.75):
        self.n_items = n_items
        self.keys = np.unique(users.astype(np.int64) * n_items + items)
        self.cdf = None
        if sampler == "popularity":
            w = np.bincount(items, minlength=n_items).astype(np.float64) ** exponent
            w[np.bincount(items, minlength=n_items) == 0] = 0.0
            self.cdf = np.cumsum(w / w.sum())

    def _draw(self, rng: np.random.Generator, shape) -> np.ndarray:
        if self.cdf is None:
            return rng.integers(0, self.n_items, size=shape)
        return np.minimum(np.searchsorted(self.cdf, rng.random(size=shape), side="right"), self.n_items - 1)

    def is_positive(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        key = users.astype(np.int64) * self.n_items + items
        pos = np.minimum(np.searchsorted(self.keys, key), len(self.keys) - 1)
        return self.keys[pos] == key

    def sample(self, users: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
        """[len(users), n] negatives."""
        users = np.asarray(users, dtype=np.int64)
        out = self._draw(rng, (len(users), n))
        for _ in range(20):
            bad = self.is_positive(users[:, None], out)
            if not bad.any():
                break
            out[bad] = self._draw(rng, int(bad.sum()))
        return out
