"""Stored documents: dataclasses whose JSON form pydantic derives from their field types, and checks on load.

A class that tideline stores as JSON (a rollout's spec and status, an analysis, the run lock, metrics, a
policy decision ...) is a plain dataclass that also inherits ``Document``. Its ``to_dict`` is pydantic's JSON
form of the fields (enums as values, tuples as lists, NaN and infinities as ``null``) and ``from_dict``
validates a stored dict against the field types: a missing required field, a value of the wrong type or an
unknown field is a ``ValueError`` naming the field, and the class's own ``__post_init__`` checks run too. No
hand-written ``to_dict``/``from_dict`` to keep in step with the fields.

    >>> from dataclasses import dataclass
    >>> @dataclass(frozen=True)
    ... class Limit(Document):
    ...     name: str
    ...     value: float = 1.0
    >>> Limit("p99", float("nan")).to_dict()
    {'name': 'p99', 'value': None}
    >>> Limit.from_dict({"name": "p99", "value": "2.5"})
    Limit(name='p99', value=2.5)
    >>> Limit.from_dict({"name": "p99", "valeu": 2})
    Traceback (most recent call last):
    ...
    ValueError: bad Limit: valeu: Unexpected keyword argument
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any, ClassVar, Self

from pydantic import ConfigDict, TypeAdapter, ValidationError


@functools.cache
def _adapter(cls: type) -> TypeAdapter[Any]:
    return TypeAdapter(cls)


def describe(e: ValidationError, what: str) -> str:
    """One line for a pydantic error: ``bad <what>: <field>: <message>`` (the first problem; ``+N more``)."""
    errs = e.errors()
    first = errs[0]
    loc = ".".join(str(p) for p in first["loc"]) or "document"
    more = f" (+{len(errs) - 1} more)" if len(errs) > 1 else ""
    return f"bad {what}: {loc}: {first['msg']}{more}"


class Document:
    """Mixin for a dataclass stored as JSON (see the module docstring)."""

    __pydantic_config__: ClassVar[ConfigDict] = ConfigDict(extra="forbid", ser_json_inf_nan="null")

    def to_dict(self) -> dict[str, Any]:
        """The fields as JSON types (what a store writes)."""
        return dict(json.loads(_adapter(type(self)).dump_json(self)))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Self:
        """The document a stored dict describes; ``ValueError`` naming the field when it does not fit."""
        try:
            return _adapter(cls).validate_python(dict(d))
        except ValidationError as e:
            raise ValueError(describe(e, cls.__name__)) from None
        except TypeError as e:  # not a mapping at all
            raise ValueError(f"bad {cls.__name__}: {e}") from None


__all__ = ["Document", "describe"]
