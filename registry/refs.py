"""Model references (``NAME``, ``NAME/3``, ``NAME@alias``) and the rules for names.

Pure functions; thread-safe.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mlserve.errors import InvalidInput

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_FORM = "expected NAME, NAME/VERSION (e.g. fraud/3) or NAME@ALIAS (e.g. fraud@prod)"


@dataclass(frozen=True)
class Ref:
    """A parsed reference: exactly one of ``version`` and ``alias`` is set, or neither (latest
    ready version)."""

    name: str
    version: int | None = None
    alias: str | None = None

    def __str__(self) -> str:
        if self.version is not None:
            return f"{self.name}/{self.version}"
        if self.alias is not None:
            return f"{self.name}@{self.alias}"
        return self.name


def check_name(name: str, what: str = "model name") -> str:
    """Returns ``name`` if it is a valid model/alias name, else raises InvalidInput."""
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise InvalidInput(
            f"invalid {what} {name!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_alias(alias: str) -> str:
    """Returns ``alias`` if valid; all-digit aliases are refused (they would read as versions)."""
    check_name(alias, "alias")
    if alias.isdigit():
        raise InvalidInput(f"invalid alias {alias!r}: an alias cannot be all digits")
    return alias


def parse_ref(ref: str) -> Ref:
    """Parses ``NAME``, ``NAME/VERSION`` or ``NAME@ALIAS``; malformed → InvalidInput."""
    if not isinstance(ref, str) or not ref.strip():
        raise InvalidInput(f"empty model reference: {_FORM}")
    ref = ref.strip()
    if "/" in ref and "@" in ref:
        raise InvalidInput(f"malformed model reference {ref!r}: {_FORM}, not both")
    try:
        if "/" in ref:
            name, _, version_text = ref.partition("/")
            check_name(name)
            if not version_text.isdigit() or int(version_text) < 1:
                raise InvalidInput(
                    f"malformed model reference {ref!r}: version {version_text!r} is not a "
                    f"positive integer; {_FORM}"
                )
            return Ref(name, version=int(version_text))
        if "@" in ref:
            name, _, alias = ref.partition("@")
            check_name(name)
            return Ref(name, alias=check_alias(alias))
        return Ref(check_name(ref))
    except InvalidInput as exc:
        if str(exc).startswith("malformed"):
            raise
        raise InvalidInput(f"malformed model reference {ref!r}: {exc}; {_FORM}") from None
