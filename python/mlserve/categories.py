"""Category values -> the plan's codes, and what happens to categories a model never saw.

A categorical input of a bundle's signature (docs/bundle.md) knows its categories through a
``vocabulary`` (the string whose index is the code) or, for inputs that are codes already, the
``size`` of its plan feature's onehot encoding (valid codes ``0 .. size - 1``). Its ``unknown``
policy says what a value outside them becomes:

- ``"oov"`` (the default, and what bundles without the field get): the plan's out-of-vocabulary
  slot (code -1);
- ``"missing"``: a missing value (NaN), then the plan's missing-value handling; only for a
  nullable input;
- ``"error"``: :class:`mlserve.errors.InvalidInput` (HTTP 400) naming the input, the unknown
  values and a few known ones.

:class:`CategoryEncoder` maps a whole column at once. Decoded requests hold ``bytes`` objects:
they are looked up in a dict keyed by the UTF-8 vocabulary with ``map`` inside ``np.fromiter``
(C loops, no Python bytecode per value; exact, and faster than converting to fixed-width arrays);
numpy string arrays go through the vocabulary sorted once and ``searchsorted``. The policy is
then numpy on the column's unknown mask: the common all-known case ends at one ``isnan().any()``.
Only the distinct values the lookup missed are examined one by one (UTF-8 decoding, empty strings,
the error message). Encoders are immutable after construction and safe to share between threads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import repeat
from typing import Any

import numpy as np

from mlserve.errors import InvalidInput

#: The unknown-category policies, in the order docs list them.
UNKNOWN_POLICIES = ("oov", "missing", "error")
#: The policy of a categorical input whose signature entry has no ``unknown`` field.
DEFAULT_UNKNOWN_POLICY = "oov"
#: The code the plan's onehot encoding sends to its out-of-vocabulary slot.
OOV_CODE = -1.0

_SHOW_VALUES = 5  # distinct unknown (and known) values an error message lists
_SHOW_CHARS = 40  # characters shown of each value


def check_policy(policy: object, where: str) -> str:
    """``policy`` when it is one of :data:`UNKNOWN_POLICIES`; InvalidInput naming ``where``."""
    if policy not in UNKNOWN_POLICIES:
        raise InvalidInput(
            f"{where}: unknown-category policy {policy!r}; choose one of "
            f"{', '.join(UNKNOWN_POLICIES)}"
        )
    return str(policy)


def parse_feature_policies(items: str | Iterable[str], where: str) -> dict[str, str]:
    """``"country:error,channel=missing"`` (or the items of a list) -> feature -> policy.

    Each item is ``FEATURE:POLICY`` or ``FEATURE=POLICY``; a feature named twice is an error.
    """
    parts = items.split(",") if isinstance(items, str) else list(items)
    out: dict[str, str] = {}
    for raw in parts:
        if not isinstance(raw, str):
            raise InvalidInput(f"{where}: expected FEATURE:POLICY strings, got {raw!r}")
        item = raw.strip().strip("[]()'\" ")
        if not item:
            continue
        sep = ":" if ":" in item else "="
        name, found, policy = (s.strip().strip("'\"") for s in item.partition(sep))
        if not found or not name:
            raise InvalidInput(f"{where}: {raw.strip()!r} should be FEATURE:POLICY, e.g. "
                               "country:error")
        if name in out:
            raise InvalidInput(f"{where}: feature '{name}' is named twice")
        out[name] = check_policy(policy, f"{where} for '{name}'")
    return out


def check_policy_features(policies: Mapping[str, str], categorical: Sequence[str],
                          where: str) -> None:
    """InvalidInput when per-feature ``policies`` name a feature that is not categorical."""
    stray = sorted(set(policies) - set(categorical))
    if stray:
        raise InvalidInput(
            f"{where} names {', '.join(stray)}, not categorical features of this model "
            f"(categorical: {', '.join(categorical) or 'none'})"
        )


def onehot_size(feature: Mapping[str, Any] | None) -> int | None:
    """How many codes a plan feature's onehot encoding has a slot for (None: no onehot)."""
    for op in (feature or {}).get("ops", []):
        if op.get("op") == "onehot":
            if "size" in op:
                return int(op["size"])
            return len(op.get("vocabulary", []))
    return None


def _shorten(value: object) -> str:
    if not isinstance(value, str):
        return str(value)
    return repr(value if len(value) <= _SHOW_CHARS else value[: _SHOW_CHARS - 1] + "…")


def _listing(values: Sequence[object], total: int) -> str:
    shown = ", ".join(_shorten(v) for v in values[:_SHOW_VALUES])
    more = total - min(len(values), _SHOW_VALUES)
    return f"{shown} and {more} more" if more > 0 else shown


class CategoryEncoder:
    """One categorical input's value -> code mapping and unknown-category policy.

    Args:
        name: the input's name (for error messages).
        vocabulary: the category strings, index = code; None for inputs that are codes already.
        size: valid codes are ``0 .. size - 1`` (default: the vocabulary's length); None when
            every code is valid (a hash_bucket encoding).
        unknown: the policy (:data:`UNKNOWN_POLICIES`).
        nullable: whether the input may be missing; ``unknown="missing"`` needs it.
    """

    def __init__(
        self,
        name: str,
        *,
        vocabulary: Sequence[object] | None = None,
        size: int | None = None,
        unknown: str = DEFAULT_UNKNOWN_POLICY,
        nullable: bool = True,
    ) -> None:
        self.name = name
        self.unknown = check_policy(unknown, f"input '{name}'")
        if self.unknown == "missing" and not nullable:
            raise InvalidInput(
                f"input '{name}': unknown='missing' turns unseen categories into missing values, "
                "but the input is not nullable; use 'oov' or 'error'"
            )
        self.vocabulary = None if vocabulary is None else [str(v) for v in vocabulary]
        self.size = len(self.vocabulary) if self.vocabulary is not None else size
        if self.unknown != "oov" and self.size is None:
            raise InvalidInput(
                f"input '{name}': unknown={self.unknown!r} needs a vocabulary or a onehot "
                "encoding to tell unseen categories apart (a hash_bucket takes every code)"
            )
        # Like a dict built in vocabulary order, a repeated string keeps its last index.
        self._index = {v: float(i) for i, v in enumerate(self.vocabulary or [])}
        self._utf8_index: dict[bytes, float] = {}
        for key, code in self._index.items():
            try:
                self._utf8_index[key.encode("utf-8")] = code
            except UnicodeEncodeError:
                continue  # a lone surrogate: no valid UTF-8 request value can name it
        # numpy's fixed-width strings cannot hold a trailing NUL: such entries stay out of the
        # sorted tables (values missed there are checked against the dict).
        fixed = {k: c for k, c in self._index.items() if not k.endswith("\x00")}
        self._str_table = _SortedTable(np.array(list(fixed), dtype=str), list(fixed.values()))
        utf8 = {k: c for k, c in self._utf8_index.items() if not k.endswith(b"\x00")}
        self._bytes_table = _SortedTable(np.array(list(utf8), dtype=bytes), list(utf8.values()))

    @classmethod
    def for_input(
        cls, spec: Mapping[str, Any], feature: Mapping[str, Any] | None = None
    ) -> CategoryEncoder | None:
        """The encoder of a signature input (None for a numeric one).

        ``feature``: the input's plan feature, whose onehot size bounds the codes of an input
        without vocabulary.
        """
        name = str(spec.get("name"))
        if spec.get("kind", "numeric") != "categorical":
            if "unknown" in spec:
                raise InvalidInput(
                    f"input '{name}' is numeric; 'unknown' applies to categorical inputs only"
                )
            return None
        vocabulary = spec.get("vocabulary")
        return cls(
            name,
            vocabulary=vocabulary,
            size=None if vocabulary is not None else onehot_size(feature),
            unknown=spec.get("unknown", DEFAULT_UNKNOWN_POLICY),
            nullable=bool(spec.get("nullable", True)),
        )

    @property
    def checks_codes(self) -> bool:
        """Whether :meth:`check_codes` can change or refuse anything."""
        return self.unknown != "oov" and self.size is not None

    # ---- strings ---------------------------------------------------------------------------

    def encode_strings(self, values: Any, *, empty_is_missing: bool = False) -> np.ndarray:
        """Category strings (``bytes`` as UTF-8, or ``str``) -> float32 codes, one per value.

        A value outside the vocabulary follows the policy; with ``empty_is_missing`` an empty
        string that is not in the vocabulary is a missing value (NaN) instead. Bytes that are
        not UTF-8, and values that are not strings, raise InvalidInput.
        """
        data = np.asarray(values).reshape(-1)
        if data.size == 0:
            return np.empty(0, dtype=np.float32)
        kind = data.dtype.kind
        if kind in "SU":
            table = self._bytes_table if kind == "S" else self._str_table
            codes, known = table.lookup(data)
            if known.all():
                return codes
            missed = np.flatnonzero(~known)
            return self._resolve(codes, missed, data[missed].tolist(), empty_is_missing)
        if kind != "O":
            raise InvalidInput(f"input '{self.name}': expected strings, got {data.dtype}")
        items = data.tolist()
        index: Mapping[Any, float] = (
            self._utf8_index if isinstance(items[0], bytes) else self._index
        )
        try:
            codes = np.fromiter(map(index.get, items, repeat(np.nan)), np.float32, len(items))
        except TypeError:  # an unhashable object: leave every value to _resolve
            codes = np.full(len(items), np.nan, dtype=np.float32)
        missed_mask = np.isnan(codes)  # no code is NaN: NaN marks a value the dict missed
        if not missed_mask.any():
            return codes
        missed = np.flatnonzero(missed_mask)
        return self._resolve(codes, missed, [items[i] for i in missed], empty_is_missing)

    def encode_integers(self, values: Any) -> np.ndarray:
        """Integer category values (``3`` is the category ``"3"``) -> float32 codes."""
        data = np.asarray(values).reshape(-1)
        if data.dtype.kind not in "iub":
            raise InvalidInput(f"input '{self.name}': expected integers, got {data.dtype}")
        if data.dtype.kind == "b":
            data = data.astype(np.int8)
        return self.encode_strings(data.astype(bytes))

    def _resolve(
        self, codes: np.ndarray, missed: np.ndarray, items: list[Any], empty_is_missing: bool
    ) -> np.ndarray:
        """The values the fast lookup missed (positions ``missed`` of ``codes``): each distinct
        one decoded and looked up exactly, then the policy for those still unknown."""
        try:
            distinct = list(dict.fromkeys(items))
        except TypeError:  # unhashable (bytearray, memoryview): compare by text instead
            items = [self._text(item) for item in items]
            distinct = list(dict.fromkeys(items))
        code_of: dict[Any, float] = {}
        unknown_items: set[Any] = set()
        unknown_texts: dict[str, None] = {}
        for item in distinct:
            text = self._text(item)
            code = self._index.get(text)
            if code is None and not (empty_is_missing and text == ""):
                unknown_items.add(item)
                unknown_texts[text] = None
            code_of[item] = np.nan if code is None else code
        codes[missed] = np.fromiter(map(code_of.__getitem__, items), np.float32, len(items))
        if not unknown_items:
            return codes
        unknown = np.zeros(codes.size, dtype=bool)
        unknown[missed] = np.fromiter(map(unknown_items.__contains__, items), bool, len(items))
        return self._apply_policy(codes, unknown, sorted(unknown_texts))

    def _text(self, item: Any) -> str:
        if isinstance(item, str):
            return item
        if isinstance(item, (bytes, bytearray, memoryview, np.bytes_)):
            try:
                return bytes(item).decode("utf-8")
            except UnicodeDecodeError:
                pass
        raise InvalidInput(f"input '{self.name}': values must be UTF-8 strings")

    def _apply_policy(
        self, codes: np.ndarray, unknown: np.ndarray, texts: Sequence[str]
    ) -> np.ndarray:
        if self.unknown == "oov":
            codes[unknown] = OOV_CODE
        elif self.unknown == "missing":
            codes[unknown] = np.nan
        else:
            known = self.vocabulary or []
            raise InvalidInput(
                f"input '{self.name}': unknown {'category' if len(texts) == 1 else 'categories'}"
                f" {_listing(texts, len(texts))} in {int(unknown.sum())} of {unknown.size} rows;"
                f" known categories: {_listing(known, len(known))} (this model refuses unseen "
                "categories: unknown='error')"
            )
        return codes

    # ---- codes -----------------------------------------------------------------------------

    def check_codes(self, codes: np.ndarray) -> np.ndarray:
        """Applies the policy to codes outside ``0 .. size - 1`` (and fractional or infinite
        ones); NaN stays missing. Returns ``codes`` itself when nothing changes, else a float32
        copy (policy "missing"); raises InvalidInput (policy "error")."""
        if not self.checks_codes:
            return codes
        assert self.size is not None
        c = np.asarray(codes)
        if c.dtype.kind in "iub":
            unknown = (c < 0) | (c >= self.size)
        else:
            with np.errstate(invalid="ignore"):
                valid = (c >= 0) & (c < self.size) & (np.floor(c) == c)
            unknown = ~(valid | np.isnan(c))
        if not unknown.any():
            return codes
        if self.unknown == "missing":
            out = c.astype(np.float32, copy=True)
            out[unknown] = np.nan
            return out
        bad = np.unique(c[unknown]).tolist()
        shown = [int(v) if float(v).is_integer() else v for v in bad]
        raise InvalidInput(
            f"input '{self.name}': category {'code' if len(bad) == 1 else 'codes'} "
            f"{_listing(shown, len(shown))} in {int(unknown.sum())} of {unknown.size} rows are "
            f"outside 0..{self.size - 1} (this model refuses unseen categories: unknown='error')"
        )


class _SortedTable:
    """A vocabulary as one sorted numpy string array and the code of each entry."""

    def __init__(self, keys: np.ndarray, codes: Sequence[float]) -> None:
        order = np.argsort(keys, kind="stable")
        self.keys = keys[order]
        self.codes = np.asarray(codes, dtype=np.float32).reshape(-1)[order]

    def lookup(self, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """float32 codes (a new array, meaningless where not known) and the known mask."""
        if self.keys.size == 0:
            return np.full(values.size, np.nan, dtype=np.float32), np.zeros(values.size, bool)
        pos = np.searchsorted(self.keys, values)
        np.minimum(pos, self.keys.size - 1, out=pos)
        return self.codes[pos], self.keys[pos] == values
