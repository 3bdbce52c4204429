"""A set of named integer counters (subclasses list them in ``__slots__``)."""

from __future__ import annotations


class Counters:
    # subclasses also annotate each name (``created: int``) so type checkers know it
    __slots__: tuple[str, ...] = ()

    def __init__(self) -> None:
        for s in self.__slots__:
            setattr(self, s, 0)

    def as_dict(self) -> dict[str, int]:
        return {s: getattr(self, s) for s in self.__slots__}
