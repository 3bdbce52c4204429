"""``sensor.core.frozen``: behaves as ``@dataclass(frozen=True, slots=True)`` where
the events rely on it (the two are built side by side and compared)."""

from __future__ import annotations

import copy
import pickle
from dataclasses import FrozenInstanceError, dataclass, field
from typing import ClassVar

import pytest

from sensor.core.events import Event, ExpectConnection, Weird
from sensor.core.frozen import fields_of, frozen


@dataclass(frozen=True, slots=True)
class DBase:
    ts: int
    kind: ClassVar[str] = "base"


@dataclass(frozen=True, slots=True)
class DChild(DBase):
    name: str
    size: int | None = None
    tags: tuple = ()
    note: object = field(default=None, compare=False)


@frozen
class FBase:
    ts: int
    kind: ClassVar[str] = "base"


@frozen(uncompared=("note",))
class FChild(FBase):
    name: str
    size: int | None = None
    tags: tuple = ()
    note: object = None


ARGS = [((1, "a"), {}), ((1, "a", 5), {}), ((2,), {"name": "b", "tags": (1, 2)}), ((3, "c"), {"note": [1], "size": 0})]


@pytest.mark.parametrize("args,kw", ARGS)
def test_same_as_dataclass(args: tuple, kw: dict) -> None:
    d, f = DChild(*args, **kw), FChild(*args, **kw)
    assert repr(f) == repr(d).replace("DChild", "FChild")
    assert fields_of(f) == ("ts", "name", "size", "tags", "note") == FChild.__match_args__
    assert f == FChild(*args, **kw) and f != d
    if not isinstance(kw.get("note"), list):
        assert hash(f) == hash(FChild(*args, **kw))
    assert (f == FChild(*args, **{**kw, "note": "other"})) == (d == DChild(*args, **{**kw, "note": "other"}))
    assert (f == FChild(9, "z")) is False
    assert FChild.kind == DChild.kind == "base"


def test_hash_ignores_uncompared_and_equal_objects_hash_alike() -> None:
    assert hash(FChild(1, "a", note=1)) == hash(FChild(1, "a", note=2))
    assert hash(FChild(1, "a")) != hash(FChild(1, "b"))


def test_frozen_and_slotted() -> None:
    f = FChild(1, "a")
    with pytest.raises(FrozenInstanceError):
        f.name = "b"  # type: ignore[misc]
    with pytest.raises(FrozenInstanceError):
        del f.name  # type: ignore[misc]
    with pytest.raises((AttributeError, TypeError, FrozenInstanceError)):
        f.extra = 1  # type: ignore[attr-defined]
    assert not hasattr(f, "__dict__")


def test_missing_and_unknown_arguments_fail_as_for_a_dataclass() -> None:
    for cls in (DChild, FChild):
        with pytest.raises(TypeError):
            cls(1)
        with pytest.raises(TypeError):
            cls(1, "a", bogus=2)
        with pytest.raises(TypeError):
            cls(1, "a", 2, (), None, "one too many")


def test_a_required_field_after_a_default_is_refused() -> None:
    with pytest.raises(TypeError, match="without a default"):

        @frozen
        class Bad:
            a: int = 1
            b: int


def test_a_mutable_default_is_refused_as_by_dataclass() -> None:
    with pytest.raises(ValueError, match="mutable default"):

        @frozen
        class Bad:
            a: list = []


def test_uncompared_must_name_a_field() -> None:
    with pytest.raises(TypeError, match="uncompared"):

        @frozen(uncompared=("nope",))
        class Bad:
            a: int


def test_pickle_and_copy_round_trip() -> None:
    f = FChild(1, "a", 3, (1,), note="n")
    for g in (pickle.loads(pickle.dumps(f)), copy.copy(f), copy.deepcopy(f)):
        assert g == f and g.note == "n" and type(g) is FChild


def test_events_keep_their_contract() -> None:
    w = Weird(5, "ftp_line_too_long", "x")
    assert w.event_type == "weird" and isinstance(w, Event)
    assert w == Weird(5, "ftp_line_too_long", "x", "") and w != Weird(5, "other", "x")
    e1 = ExpectConnection(1, "tcp", None, None, "10.0.0.1", 20, "ftp-data", 9, context={"a": 1})
    e2 = ExpectConnection(1, "tcp", None, None, "10.0.0.1", 20, "ftp-data", 9)
    assert e1 == e2 and e1.context == {"a": 1}  # context is left out of ==, as field(compare=False) did
    match w:
        case Weird(ts, name):
            assert (ts, name) == (5, "ftp_line_too_long")
        case _:
            pytest.fail("positional match on an event")
