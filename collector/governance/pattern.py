"""Pool patterns as clstr writes them: ``name:component:qty(:component:qty)*``.

``zinal:a100:4:epyc:30:memory:80`` asks pool ``zinal`` to hold at least 4 components whose
description contains ``a100``, 30 that contain ``epyc`` (CPU packages) and 80 units of 16 GiB
of memory. Terms are case-insensitive substrings of a component's
``"<kind> <model>"`` (:mod:`collector.governance.inventory`); counts are of components, and a
pool gets whole nodes, so ``a100:2`` on 4-GPU nodes yields 4.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from shared.errors import ConfigError
from shared.text import quoted
from shared.topics import NODE_ID_RE, NODE_ID_RULE

__all__ = [
    "MAX_PATTERN_LEN",
    "MAX_QTY",
    "POOL_NAME_RE",
    "Need",
    "Pattern",
    "parse_pattern",
    "validate_pool_name",
]

MAX_QTY: Final = 10_000_000
"""A count above this is a typo (10 million GPUs, or 160 PiB of memory)."""

MAX_PATTERN_LEN: Final = 1024
"""A longer pattern is a paste gone wrong: refused before any part of it is echoed (a
50,000-character one was quoted whole, three times, in its error line)."""

POOL_NAME_RE: Final = NODE_ID_RE
"""A pool name: the node-id rule (one safe word), so it can be a label and a file name."""

_EXAMPLE: Final = "e.g. zinal:a100:4:epyc:30:memory:80"


@dataclass(frozen=True, slots=True)
class Need:
    """At least ``qty`` units of components whose description contains ``term``."""

    term: str
    qty: int


@dataclass(frozen=True, slots=True)
class Pattern:
    """A parsed pattern: the pool and what it must hold."""

    pool: str
    needs: tuple[Need, ...]

    def __str__(self) -> str:
        return ":".join([self.pool, *(f"{n.term}:{n.qty}" for n in self.needs)])


def validate_pool_name(name: str, *, field: str = "NAME") -> str:
    """``name`` if it can name a pool, else :class:`ConfigError` (``free`` is implicit)."""
    if name.lower() == "free":
        raise ConfigError(
            "'free' is the implicit pool of nodes in no pool: choose another name", field=field
        )
    if name == "import":  # `collector inventory import FILE` would shadow the pool's table
        raise ConfigError(
            "'import' is a word of `collector inventory` (import FILE): choose another name",
            field=field,
        )
    if not POOL_NAME_RE.match(name):
        raise ConfigError(
            f"pool name {quoted(name)} must be {NODE_ID_RULE}",
            field=field,
        )
    return name


def parse_pattern(text: str, *, field: str = "--pattern") -> Pattern:
    """Parse ``name:component:qty(:component:qty)*``; a bad one is one :class:`ConfigError`."""
    if len(text) > MAX_PATTERN_LEN:
        raise ConfigError(
            f"pattern {quoted(text)} is longer than {MAX_PATTERN_LEN:,} characters: give "
            f"name:component:qty(:component:qty)* ({_EXAMPLE})",
            field=field,
        )
    parts = text.strip().split(":")
    if len(parts) < 3:
        raise ConfigError(
            f"pattern {text!r} needs a pool name and at least one component:qty pair ({_EXAMPLE})",
            field=field,
        )
    if len(parts) % 2 == 0:
        raise ConfigError(
            f"pattern {text!r}: component {parts[-1]!r} has no quantity; a pattern is "
            f"name:component:qty(:component:qty)* ({_EXAMPLE})",
            field=field,
        )
    pool = validate_pool_name(parts[0], field=field)
    needs: list[Need] = []
    seen: set[str] = set()
    for i in range(1, len(parts), 2):
        term, qty_text = parts[i].strip().lower(), parts[i + 1].strip()
        if not term:
            raise ConfigError(f"pattern {text!r}: component {i // 2 + 1} is empty", field=field)
        if term in seen:
            raise ConfigError(
                f"pattern {text!r}: component {term!r} is given twice; give its total once",
                field=field,
            )
        if not qty_text.isascii() or not qty_text.isdigit():
            raise ConfigError(
                f"pattern {text!r}: quantity {qty_text!r} of {term!r} must be a whole number "
                "of components (memory: of 16 GiB units)",
                field=field,
            )
        qty = int(qty_text)
        if not 1 <= qty <= MAX_QTY:
            raise ConfigError(
                f"pattern {text!r}: quantity of {term!r} must be within 1..{MAX_QTY:,}, got {qty}",
                field=field,
            )
        seen.add(term)
        needs.append(Need(term, qty))
    return Pattern(pool, tuple(needs))
