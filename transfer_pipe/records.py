"""Results that serialise themselves: the base of every model card and step summary.

A result is a frozen dataclass, so a reader writes ``summary.accuracy`` and a misspelt
field is a type error, not a ``KeyError`` in production. ``to_dict`` gives the JSON shape
written to disk (``card.json``) and printed by ``--json``; a type that is read back from
disk adds a ``from_dict`` classmethod (see :func:`known_fields`).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Collection, Mapping
from typing import Any

from transfer_pipe.errors import TransferPipeError


class Record:
    """Mixin for dataclass results: ``to_dict`` (nested records become dicts) and ``to_json``."""

    def to_dict(self) -> dict[str, Any]:
        """The result as JSON-able plain data, field by field; a nested record by its own
        ``to_dict`` (``dataclasses.asdict`` would bypass an override)."""
        assert dataclasses.is_dataclass(self)
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def to_json(self, exclude: Collection[str] = ()) -> str:
        """One line of JSON; ``exclude`` leaves top-level fields out (e.g. a long table)."""
        return json.dumps({k: v for k, v in self.to_dict().items() if k not in exclude})


def _plain(value: Any) -> Any:
    if isinstance(value, Record):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def known_fields(cls: type, data: Mapping[str, Any], what: str) -> dict[str, Any]:
    """The entries of ``data`` that are fields of the dataclass ``cls``, for ``cls(**...)``.

    Keys ``cls`` does not know are dropped, so a card written by a newer version still
    reads; a required field that is missing raises a :class:`TransferPipeError` naming
    ``what`` was being read.
    """
    fields = dataclasses.fields(cls)
    missing = [
        f.name
        for f in fields
        if f.name not in data
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise TransferPipeError(f"{what} lacks {missing}; it was not written by transfer-pipe.")
    names = {f.name for f in fields}
    return {key: value for key, value in data.items() if key in names}
