"""``@frozen``: immutable, slotted value classes for events, cheap to define.

What ``@dataclass(frozen=True, slots=True)`` gives (fields, ``__init__``,
``__repr__``, ``__eq__``/``__hash__``, ``FrozenInstanceError``, slots,
``__match_args__``, pickling) with one compiled ``__init__`` per class and
shared methods. ``uncompared`` names fields left out of ``==`` and ``hash``;
``fields_of(obj)`` lists an instance's fields. Why: docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import FrozenInstanceError
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")


def _setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r}")


def _delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r}")


def _repr(self: Any) -> str:
    return "{}({})".format(type(self).__qualname__, ", ".join(f"{n}={getattr(self, n)!r}" for n in self.__fields__))


def _key(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, n) for n in type(self).__compared__])


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _key(self) == _key(other)


def _hash(self: Any) -> int:
    return hash(_key(self))


def _getstate(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, n) for n in self.__fields__])


def _setstate(self: Any, state: tuple[Any, ...]) -> None:
    for n, v in zip(self.__fields__, state):
        object.__setattr__(self, n, v)


def fields_of(obj: Any) -> tuple[str, ...]:
    """The field names of a ``@frozen`` class or instance, in order."""
    names: tuple[str, ...] = obj.__fields__
    return names


def _is_classvar(annotation: Any) -> bool:
    text = annotation if isinstance(annotation, str) else repr(annotation)
    return text.startswith(("ClassVar", "typing.ClassVar"))


# dataclass_transform: type checkers read a @frozen class as a frozen dataclass
# (its __init__ from the annotated fields, no assignment after it)
@overload
@dataclass_transform(frozen_default=True)
def frozen(cls: type[T], /) -> type[T]: ...
@overload
def frozen(*, uncompared: tuple[str, ...] = ()) -> Callable[[type[T]], type[T]]: ...


def frozen(cls: type[T] | None = None, *, uncompared: tuple[str, ...] = ()) -> Any:
    """Make ``cls`` a frozen, slotted value class (see the module docstring)."""

    def wrap(c: type[T]) -> type[T]:
        return _build(c, uncompared)

    return wrap if cls is None else wrap(cls)


def _build(cls: type[T], uncompared: tuple[str, ...]) -> type[T]:
    base_fields: tuple[str, ...] = getattr(cls, "__fields__", ())
    defaults: dict[str, Any] = dict(getattr(cls, "__field_defaults__", {}))
    own = [
        n for n, a in cls.__dict__.get("__annotations__", {}).items() if not _is_classvar(a) and n not in base_fields
    ]
    for n in own:
        if n in cls.__dict__:
            v = cls.__dict__[n]
            if isinstance(v, (list, dict, set)):  # one object shared by every instance: refused, as by dataclass
                raise ValueError(f"{cls.__name__}: mutable default {type(v).__name__} for field {n!r}")
            defaults[n] = v
    names = base_fields + tuple(own)
    seen_default = False
    for n in names:
        if n in defaults:
            seen_default = True
        elif seen_default:
            raise TypeError(f"{cls.__name__}: field {n!r} without a default follows one with a default")
    skip = set(uncompared) | set(getattr(cls, "__uncompared__", ()))
    unknown = skip - set(names)
    if unknown:
        raise TypeError(f"{cls.__name__}: uncompared names no field: {sorted(unknown)}")

    ns = {k: v for k, v in cls.__dict__.items() if k not in own and k not in ("__dict__", "__weakref__")}
    ns.update(
        __slots__=tuple(own),
        __fields__=names,
        __match_args__=names,
        __field_defaults__=defaults,
        __uncompared__=tuple(sorted(skip)),
        __compared__=tuple(n for n in names if n not in skip),
        __setattr__=_setattr,
        __delattr__=_delattr,
        __repr__=_repr,
        __eq__=_eq,
        __hash__=_hash,
        __getstate__=_getstate,
        __setstate__=_setstate,
    )
    meta: Any = type(cls)  # the class's own metaclass (an Event's is type)
    new: type[T] = meta(cls.__name__, cls.__bases__, ns)
    new.__qualname__ = cls.__qualname__
    type.__setattr__(new, "__init__", _first_init(new, names, defaults))
    return new


def _first_init(cls: type, names: tuple[str, ...], defaults: dict[str, Any]) -> Callable[..., None]:
    """An ``__init__`` that compiles the real one at the first instance and
    puts it in its place: most event classes (the rarer weirds, SMB
    compression, TFTP errors) are never built in a run, and the compile is
    the one cost left at import."""

    def __init__(self: Any, *args: Any, **kw: Any) -> None:
        real = _init(cls, names, defaults)
        type.__setattr__(cls, "__init__", real)
        real(self, *args, **kw)

    __init__.__qualname__ = f"{cls.__qualname__}.__init__"
    return __init__


def _init(cls: type, names: tuple[str, ...], defaults: dict[str, Any]) -> Callable[..., None]:
    """``__init__`` for these fields: compiled once per class (the one
    ``exec``). Each field is set through its slot's own descriptor, which
    bypasses the frozen ``__setattr__`` at half the cost of
    ``object.__setattr__`` (what dataclass uses)."""
    setters = []
    for n in names:
        slot = next(k.__dict__[n] for k in cls.__mro__ if n in k.__dict__)
        setters.append(slot.__set__)
    params = ", ".join(f"{n}=__d[{n!r}]" if n in defaults else n for n in names)
    lines = ["def __make(__d, __s):"]
    lines += [f"    __s{i} = __s[{i}]" for i in range(len(names))]
    lines.append(f"    def __init__(self, {params}):")
    lines += [f"        __s{i}(self, {n})" for i, n in enumerate(names)] or ["        pass"]
    lines.append("    return __init__")
    env: dict[str, Any] = {}
    exec(compile("\n".join(lines) + "\n", f"<frozen {cls.__name__}.__init__>", "exec"), env)
    init: Callable[..., None] = env["__make"](defaults, setters)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init
