"""Backbones published by fine-tuning: ids ``finetuned/<run_id>``.

A published backbone is its base architecture and stages, the fine-tuned weights file, and
the preprocessing it was fine-tuned with. Records live in one registry file,
``$TRANSFER_PIPE_HOME/backbones.json`` (default ``~/.transfer-pipe``), read on demand, so
every process of the machine (Dask workers included) resolves the same ids.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

from transfer_pipe.backbones.preprocessing import Preprocessing
from transfer_pipe.backbones.registry import BackboneEntry, lookup, register_namespace
from transfer_pipe.backbones.weights import WeightsFile, file_sha256
from transfer_pipe.files import write_text_atomic

PREFIX = "finetuned/"
HOME_ENV = "TRANSFER_PIPE_HOME"


def registry_path() -> Path:
    return Path(os.environ.get(HOME_ENV) or "~/.transfer-pipe").expanduser() / "backbones.json"


def _records() -> dict[str, dict[str, Any]]:
    path = registry_path()
    if not path.exists():
        return {}
    records: dict[str, dict[str, Any]] = json.loads(path.read_text())
    return records


def publish_backbone(
    name: str,
    base: str,
    weights_file: str,
    preprocessing: Preprocessing,
    details: dict[str, Any],
) -> str:
    """Record ``finetuned/<name>``: ``base``'s architecture with ``weights_file``; returns
    the id. Publishing a name again replaces its record."""
    backbone_id = PREFIX + name
    records = _records()
    records[backbone_id] = {
        "base": base,
        "weights_file": os.path.abspath(weights_file),
        "weights_sha256": file_sha256(weights_file),
        "preprocessing": preprocessing.to_dict(),
        **details,
    }
    # Readers (every process of the machine) never see half a registry.
    write_text_atomic(registry_path(), json.dumps(records, indent=2))
    return backbone_id


def _resolve(backbone_id: str) -> BackboneEntry | None:
    record = _records().get(backbone_id)
    if record is None:
        return None
    base = lookup(record["base"])
    metadata = {
        **{k: v for k, v in base.metadata.items() if k != "imagenet_top1"},
        "base": record["base"],
        "source": f"fine-tuned from {record['base']} ({record.get('run', backbone_id)})",
    }
    return BackboneEntry(
        id=backbone_id,
        architecture=base.architecture,
        weights=WeightsFile(path=functools.partial(str, record["weights_file"])),
        preprocessing=Preprocessing.from_dict(record["preprocessing"]),
        metadata=metadata,
        stages=base.stages,
        adapt_state_dict=dict,  # the file is written in our own key format
    )


register_namespace(PREFIX, _resolve, lambda: sorted(_records()))
