"""Fast construction of frozen, slotted dataclass records (inodes, extents, xattrs).

A frozen dataclass's generated ``__init__`` stores every field through
``object.__setattr__`` (its own ``__setattr__`` refuses), which costs several times a
plain attribute store: for a 25-field inode record, most of the time decoding it takes.
:func:`record_maker` gives a function that builds exactly the object the class's own
constructor builds, with plain stores: it fills a mutable twin class that has the same
slots (so the same memory layout) and then makes the object an instance of the real
class, an assignment to ``__class__`` that Python allows between such layouts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


def record_maker(cls: Callable[P, T]) -> Callable[P, T]:
    """A constructor for the frozen, slotted dataclass ``cls``: same parameters (names,
    order, defaults) and same result as ``cls(...)``, without the cost of
    ``object.__setattr__`` per field.

    Only for dataclasses whose ``__init__`` does nothing but store its parameters (no
    ``__post_init__``, no default factories, no init-only or ``init=False`` fields);
    for anything else, or if the result would differ, ``cls`` itself is returned.
    """
    klass: Any = cls
    if not isinstance(klass, type) or not dataclasses.is_dataclass(klass):
        return cls
    fields = dataclasses.fields(klass)
    names = tuple(f.name for f in fields)
    if (
        getattr(klass, "__slots__", None) != names
        or len(getattr(klass, "__dataclass_fields__", ())) != len(fields)  # InitVar, ClassVar
        or hasattr(klass, "__post_init__")
        or klass.__bases__ != (object,)
        or any(not f.init or f.default_factory is not dataclasses.MISSING for f in fields)
    ):
        return cls
    twin = type(f"_{klass.__name__}Builder", (), {"__slots__": names})
    defaults: dict[str, Any] = {
        f"_d_{f.name}": f.default for f in fields if f.default is not dataclasses.MISSING
    }
    signature = ", ".join(f"{n}=_d_{n}" if f"_d_{n}" in defaults else n for n in names)
    body = "".join(f"    self.{n} = {n}\n" for n in names)
    source = (
        f"def make({signature}):\n"
        "    self = _new(_twin)\n"
        f"{body}"
        "    self.__class__ = _cls\n"
        "    return self\n"
    )
    namespace: dict[str, Any] = {"_new": object.__new__, "_twin": twin, "_cls": klass, **defaults}
    try:
        exec(source, namespace)
        make = namespace["make"]
        make.__qualname__ = f"record_maker({klass.__qualname__})"
        probe = [object() for _ in names]
        made = make(*probe)
        if type(made) is not klass or made != klass(*probe):
            return cls
    except (TypeError, SyntaxError):  # layouts differ after all: the class's own way
        return cls
    result: Callable[P, T] = make
    return result
