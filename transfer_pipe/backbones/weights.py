"""Where weights come from: random init, a local file, or a torchvision download.

Each source knows its digest (what the feature-store key records) and how to turn an
architecture into a model with those weights. torch is imported where weights are loaded,
not at import: a digest needs only the file.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from transfer_pipe.errors import TransferPipeError

if TYPE_CHECKING:
    import torch
    from torch import nn

Architecture = Callable[[], "nn.Module"]
StateDictAdapter = Callable[[Mapping[str, "torch.Tensor"]], dict[str, "torch.Tensor"]]
DEFAULT_SEED = 0


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 hex digest of a file; cached per (path, size, mtime) so it is read once."""
    p = Path(path).expanduser().resolve()
    try:
        st = p.stat()
    except OSError as exc:
        raise TransferPipeError(
            f"weights file {path} cannot be read ({exc.strerror}); check the path"
        ) from exc
    return _sha256_cached(str(p), st.st_size, st.st_mtime_ns)


@lru_cache(maxsize=64)
def _sha256_cached(path: str, size: int, mtime_ns: int) -> str:
    # size and mtime are part of the cache key so an overwritten file is hashed again.
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run a block with torch's CPU RNG seeded, restoring the caller's RNG state after."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def read_state_dict(path: str) -> dict[str, torch.Tensor]:
    """Load a state dict from a file; unwrap ``{"state_dict": ...}`` / ``{"model": ...}``
    and a DataParallel ``module.`` prefix."""
    import torch

    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError as exc:
        raise TransferPipeError(f"weights file {path} does not exist; check the path") from exc
    except Exception as exc:  # torch raises many types for unreadable / unsafe pickles
        raise TransferPipeError(
            f"weights file {path} could not be loaded as a PyTorch state dict ({exc}); "
            "save one with torch.save(model.state_dict(), PATH)"
        ) from exc
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise TransferPipeError(
            f"weights file {path} holds a {type(obj).__name__}, not a state dict of tensors; "
            "save one with torch.save(model.state_dict(), PATH)"
        )
    state = {str(k): v for k, v in obj.items()}
    if state and all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _examples(keys: list[str], n: int = 3) -> str:
    return ", ".join(keys[:n]) + (", ..." if len(keys) > n else "")


def load_strict(
    model: nn.Module, state: Mapping[str, torch.Tensor], source: str, backbone: str
) -> None:
    """Load every tensor of ``state`` into ``model``; every key must match in name and shape.

    Raises TransferPipeError naming ``source`` and what did not match.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing keys (e.g. {_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected keys (e.g. {_examples(unexpected)})")
    if wrong_shape:
        problems.append(
            f"{len(wrong_shape)} tensors of the wrong shape (e.g. {_examples(wrong_shape)}; "
            "file vs model)"
        )
    if problems:
        raise TransferPipeError(
            f"this weights file does not match backbone {backbone}: {'; '.join(problems)}. "
            f"File: {source}. Pass the backbone id the file was saved from."
        )
    model.load_state_dict(state, strict=True)


class WeightsSource(Protocol):
    """Where a backbone's weights come from."""

    def digest(self) -> str:
        """What the feature-store key records for these weights."""
        ...

    def materialize(self, architecture: Architecture, backbone: str) -> nn.Module:
        """Build the architecture and put these weights in it."""
        ...

    def describe(self) -> str:
        """A short human description, for metadata and messages."""
        ...


@dataclass(frozen=True)
class RandomInit:
    """Deterministic random weights: the architecture built with torch seeded to ``seed``.

    ``arch`` names the architecture in the digest: random-init digests of different
    architectures must differ, or two backbones would share a feature-store key.
    """

    arch: str
    seed: int = DEFAULT_SEED
    versions: tuple[tuple[str, str], ...] = ()  # extra libraries whose init code matters

    def digest(self) -> str:
        """``random-init:seed=<n>:torch=<version>[:<lib>=<version>...]:arch=<arch>``."""
        import torch

        libs = "".join(f":{name}={version}" for name, version in self.versions)
        return f"random-init:seed={self.seed}:torch={torch.__version__}{libs}:arch={self.arch}"

    def materialize(self, architecture: Architecture, backbone: str) -> nn.Module:
        """Build the architecture with the seeded RNG."""
        with seeded(self.seed):
            return architecture()

    def describe(self) -> str:
        """E.g. ``random init (seed 0)``."""
        return f"random init (seed {self.seed})"


@dataclass(frozen=True)
class WeightsFile:
    """A local state-dict file. ``path`` is a callable so packaged files resolve lazily."""

    path: Callable[[], str]
    adapt: StateDictAdapter = dict

    def digest(self) -> str:
        """sha256 hex digest of the file."""
        return file_sha256(self.path())

    def materialize(self, architecture: Architecture, backbone: str) -> nn.Module:
        """Build the architecture (seeded, so nothing touches the caller's RNG) and load."""
        path = self.path()
        state = self.adapt(read_state_dict(path))
        with seeded(DEFAULT_SEED):
            model = architecture()
        load_strict(model, state, source=path, backbone=backbone)
        return model

    def describe(self) -> str:
        """E.g. ``file /path/to/weights.pth``."""
        return f"file {self.path()}"
