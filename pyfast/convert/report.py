"""What a model converter did: the modules it swapped, by kind, and those it left, with the reason, as one line.

Every converter of :mod:`pyfast.convert` builds a :class:`Report` as it walks the model; ``verbose=True`` prints
:meth:`Report.line`, e.g. ``mesa.convert: converted 49 modules (24 Linear, 13 LayerNorm, 12 GELU); left 14: 12
BatchNorm2d (not a Mesa layer), blocks.0.attn (timm attention with its own parameters:
relative_position_bias_table)``.
"""

from __future__ import annotations

import dataclasses
from collections import Counter


@dataclasses.dataclass
class Report:
    converter: str  # "mesa.convert", "wconv.convert", ...
    converted: Counter = dataclasses.field(default_factory=Counter)  # kind -> count
    left: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (module path, reason)
    left_kinds: Counter = dataclasses.field(default_factory=Counter)  # (type name, reason) -> count, for common types

    def swap(self, kind: str) -> None:
        self.converted[kind] += 1

    def leave(self, path: str, reason: str) -> None:
        """A module worth naming, left as it is (an attention with extra parts, a subclass with its own forward)."""
        self.left.append((path, reason))

    def leave_kind(self, type_name: str, reason: str) -> None:
        """A module of a common type left for a reason all of them share (counted, not listed one by one)."""
        self.left_kinds[(type_name, reason)] += 1

    @property
    def total(self) -> int:
        return sum(self.converted.values())

    def line(self, most: int = 8) -> str:
        done = ", ".join(f"{n} {kind}" for kind, n in self.converted.most_common())
        text = f"{self.converter}: converted {self.total} module{'s' if self.total != 1 else ''}"
        text += f" ({done})" if done else ""
        left = [f"{n} {name} ({reason})" for (name, reason), n in self.left_kinds.most_common()]
        left += [f"{path} ({reason})" for path, reason in self.left[:most]]
        more = len(self.left) - most
        count = sum(self.left_kinds.values()) + len(self.left)
        if count:
            text += f"; left {count}: " + ", ".join(left) + (f", and {more} more" if more > 0 else "")
        return text
