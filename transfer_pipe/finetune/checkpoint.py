"""Checkpoints that load without running code, in any fsspec folder (the store's).

A checkpoint is one file, ``<folder>/<name>.safetensors``: every tensor of the payload
(model weights, optimizer moments, RNG states) as a safetensors tensor, and everything else
(epoch, history, optimizer hyperparameters, the scheduler's counters...) as plain JSON in
the file's header metadata, tensors replaced by ``{"__tensor__": "<key>"}``. Reading it
parses a length-prefixed JSON header and raw tensor bytes: nothing is unpickled, so a
checkpoint written by anyone who can write to a shared bucket cannot run code here; a file
that is not such a checkpoint is refused with an error naming it and what to do.

One file is one write, so a checkpoint is never half there: on a local folder it is written
beside its name and renamed onto it (atomic), on an object store it is one PUT (an object
is visible whole or not at all).
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
from fsspec.core import url_to_fs
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.files import write_url_atomic

FORMAT = "transfer-pipe-checkpoint/1"
SUFFIX = ".safetensors"
_META_KEY = "transfer_pipe"  # the header metadata entry that holds the JSON part
_TENSOR, _TUPLE, _INT_KEYS = "__tensor__", "__tuple__", "__int_keys__"
_MARKERS = frozenset({_TENSOR, _TUPLE, _INT_KEYS})
_MAX_HEADER = 100 << 20  # safetensors' own limit on a header


class CheckpointRefused(TransferPipeError):
    """A file where a checkpoint should be that is not a valid transfer-pipe checkpoint."""


def split_tensors(value: Any, tensors: dict[str, torch.Tensor], key: str = "") -> Any:
    """``value`` as plain JSON data, each tensor moved into ``tensors`` under its path
    (``optimizer/state/3/exp_avg``) and replaced by a reference to it; tuples and dicts with
    int keys (the optimizer's parameter indices) are tagged so they come back as they were.
    Anything that is neither a tensor nor JSON data raises: it would not come back."""
    if isinstance(value, torch.Tensor):
        # A copy of its own: safetensors refuses tensors that share memory (tied weights).
        tensors[key] = value.detach().to("cpu", copy=True).contiguous()
        return {_TENSOR: key}
    if isinstance(value, tuple):
        return {_TUPLE: [split_tensors(v, tensors, _child(key, i)) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [split_tensors(v, tensors, _child(key, i)) for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return _split_mapping(value, tensors, key)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"cannot checkpoint a {type(value).__name__} at {key or 'the top'}")


def _split_mapping(value: Mapping[Any, Any], tensors: dict[str, torch.Tensor], key: str) -> Any:
    if value and all(isinstance(k, int) and not isinstance(k, bool) for k in value):
        items = {str(k): split_tensors(v, tensors, _child(key, k)) for k, v in value.items()}
        return {_INT_KEYS: items}
    if not all(isinstance(k, str) for k in value) or _MARKERS & set(value):
        raise TypeError(f"cannot checkpoint the keys {list(value)[:3]} at {key or 'the top'}")
    return {k: split_tensors(v, tensors, _child(key, k)) for k, v in value.items()}


def _child(key: str, part: object) -> str:
    return f"{key}/{part}" if key else str(part)


def join_tensors(value: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_tensors`; a reference to a tensor the file does not
    hold raises ``ValueError``."""
    if isinstance(value, list):
        return [join_tensors(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {_TENSOR}:
        if value[_TENSOR] not in tensors:
            raise ValueError(f"it names a tensor {value[_TENSOR]!r} that it does not hold")
        return tensors[value[_TENSOR]]
    if set(value) == {_TUPLE} and isinstance(value[_TUPLE], list):
        return tuple(join_tensors(v, tensors) for v in value[_TUPLE])
    if set(value) == {_INT_KEYS} and isinstance(value[_INT_KEYS], dict):
        return {int(k): join_tensors(v, tensors) for k, v in value[_INT_KEYS].items()}
    return {k: join_tensors(v, tensors) for k, v in value.items()}


def encode(payload: Mapping[str, Any]) -> bytes:
    """The bytes of a checkpoint file holding ``payload``."""
    tensors: dict[str, torch.Tensor] = {}
    data = split_tensors(payload, tensors)
    info = json.dumps({"format": FORMAT, "payload": data})
    return save_tensors(tensors, metadata={_META_KEY: info})


def decode(data: bytes) -> dict[str, Any]:
    """The payload of a checkpoint file's bytes; raises ``ValueError`` saying what is
    wrong with a file that is not one."""
    info = _header_info(data)
    try:
        tensors = load_tensors(data)
    except Exception as exc:  # safetensors raises its own error types for bad bytes
        raise ValueError(f"its tensors cannot be read ({exc})") from exc
    payload = join_tensors(info.get("payload"), tensors)
    if not isinstance(payload, dict):
        raise ValueError("its payload is not a mapping")
    return payload


def _header_info(data: bytes) -> dict[str, Any]:
    """The JSON part of a checkpoint, read from the safetensors header (an 8-byte
    little-endian length, then that much JSON) without touching the tensors."""
    size = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
    if not 0 < size <= min(_MAX_HEADER, len(data) - 8):
        raise ValueError("it is not a safetensors file (no valid header)")
    try:
        header = json.loads(data[8 : 8 + size])
        info = json.loads(header["__metadata__"][_META_KEY])
    except (ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"its header holds no transfer-pipe checkpoint data ({exc})") from exc
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise ValueError(f"its format is {found!r}, not {FORMAT!r}")
    return info


@dataclass(frozen=True)
class CheckpointFolder:
    """The checkpoints of one training run, in a folder given by URL (a local path,
    ``s3://...``, any fsspec URL); ``storage_options`` go to fsspec (credentials,
    endpoint), as the store's own do."""

    url: str
    storage_options: Mapping[str, Any] | None = None

    def file_url(self, name: str) -> str:
        """Where checkpoint ``name`` lives."""
        return posixpath.join(self.url.rstrip("/"), name + SUFFIX)

    def _fs_path(self, name: str) -> tuple[Any, str]:
        return url_to_fs(self.file_url(name), **dict(self.storage_options or {}))

    def exists(self, name: str) -> bool:
        """Whether checkpoint ``name`` has been written."""
        fs, path = self._fs_path(name)
        return bool(fs.exists(path))

    def holds_file(self, filename: str) -> bool:
        """Whether the folder holds a file ``filename`` (of any kind)."""
        fs, path = url_to_fs(self.url, **dict(self.storage_options or {}))
        return bool(fs.exists(posixpath.join(path, filename)))

    def save(self, name: str, payload: Mapping[str, Any]) -> None:
        """Write checkpoint ``name`` whole: a reader (or a run resumed after a kill) sees
        the previous checkpoint or this one, never part of one."""
        write_url_atomic(self.file_url(name), encode(payload), self.storage_options)

    def load(self, name: str) -> dict[str, Any] | None:
        """Checkpoint ``name``'s payload (tensors on the CPU), or ``None`` when there is
        none; a file that is not a valid checkpoint raises :class:`CheckpointRefused`."""
        fs, path = self._fs_path(name)
        try:
            data = fs.cat_file(path)
        except FileNotFoundError:
            return None
        try:
            return decode(data)
        except (ValueError, RecursionError) as exc:  # RecursionError: absurdly nested JSON
            raise self.refused(name, str(exc)) from exc

    def refused(self, name: str, reason: str) -> CheckpointRefused:
        """The error for checkpoint ``name`` that cannot be used, saying what to do."""
        return CheckpointRefused(
            f"checkpoint {self.file_url(name)} was refused: {reason}. It was not loaded "
            "(a checkpoint is read as tensors and JSON only, never unpickled). If you did "
            "not write it, someone else did: check who can write to the store. To train "
            f"the run afresh, delete the checkpoints folder {self.url}."
        )
