"""Tasks: label definitions over a feature set, and the train / validation / test rows.

A task is the source's own labels, a mapping of them onto coarser classes, or labels from
a separate CSV/Parquet table joined by sample id (never by row order). Splits are the
source's own where it has them, otherwise stratified with a fixed seed. Validation and
test rows are disjoint from training rows by construction, and few-shot and label-fraction
training sets are drawn from the training rows only.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import fsspec
import numpy as np
import pandas as pd

from transfer_pipe.errors import TransferPipeError
from transfer_pipe.schema import LABEL, SAMPLE_ID, SPLIT_ALIASES, SPLITS, TEST, TRAIN, VAL
from transfer_pipe.store import FeatureStore
from transfer_pipe.store.cards import SplitSizes
from transfer_pipe.store.keys import content_id

SOURCE_TASK = "source"

# Built-in example of a mapped task: Fashion-MNIST's 10 classes as 4 coarse groups.
BUILTIN_MAPPINGS: dict[str, dict[str, tuple[str, ...]]] = {
    "fashion-mnist-groups": {
        "footwear": ("Sandal", "Sneaker", "Ankle boot"),
        "tops": ("T-shirt/top", "Pullover", "Coat", "Shirt", "Dress"),
        "bottoms": ("Trouser",),
        "bags": ("Bag",),
    }
}


@dataclass(frozen=True)
class Task:
    """Which label each row gets. ``mapping`` maps source labels to task labels (rows whose
    label is not mapped are left out); ``labels_file`` is a table of sample_id, label."""

    name: str = SOURCE_TASK
    mapping: Mapping[str, str] | None = None
    labels_file: str | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "mapping": dict(sorted(self.mapping.items())) if self.mapping else None,
            "labels_file": self.labels_file,
        }

    @functools.cached_property
    def digest(self) -> str:
        """Identifies the label definition (a labels file by its content, not its path);
        computed once: every head of a run names its task by it."""
        payload = self.to_dict()
        if self.labels_file:
            with fsspec.open(self.labels_file, "rb") as f:
                payload["labels_file"] = hashlib.sha256(f.read()).hexdigest()
        return content_id(payload)


@dataclass(frozen=True)
class SplitOptions:
    """How rows become train / validation / test when the source does not say."""

    val_fraction: float = 0.1
    test_fraction: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1) or (
            self.val_fraction + self.test_fraction >= 1
        ):
            raise TransferPipeError(
                "--val-fraction and --test-fraction must each be between 0 and 1 and leave "
                f"rows for training (got {self.val_fraction} and {self.test_fraction})."
            )


@dataclass(frozen=True)
class SplitRows:
    """One split's features, labels and sample ids, aligned row by row."""

    features: np.ndarray
    labels: np.ndarray
    sample_ids: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, index: np.ndarray) -> SplitRows:
        return SplitRows(self.features[index], self.labels[index], self.sample_ids[index])

    def sample(self, rows: int, seed: int = 0) -> SplitRows:
        """At most ``rows`` of these rows, a fixed draw in their order (all of them when
        they are fewer): what a cheap estimate fits on."""
        if len(self) <= rows:
            return self
        return self.take(np.sort(np.random.default_rng(seed).permutation(len(self))[:rows]))

    @staticmethod
    def concat(*parts: SplitRows) -> SplitRows:
        return SplitRows(
            np.concatenate([p.features for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.sample_ids for p in parts]),
        )


@dataclass(frozen=True)
class TaskData:
    """A task resolved on one feature set and layer: the three splits and the classes.
    ``layer`` may name several layers joined by "+": their features side by side."""

    task: Task
    feature_set: str
    layer: str
    classes: tuple[str, ...]
    train: SplitRows
    val: SplitRows
    test: SplitRows
    split_origin: str  # "source" or "stratified (seed N)"
    dropped: int  # usable rows the task gives no label
    shots: int | None = None
    shot_seed: int | None = None  # the draw's seed, for few-shot and label-fraction runs
    notes: tuple[str, ...] = field(default_factory=tuple)
    label_fraction: float | None = None

    def few_shot(self, shots: int, seed: int) -> TaskData:
        """Keep ``shots`` training rows per class, drawn with ``seed``; validation and test
        stay whole so that every seed is judged on the same rows."""
        rng = np.random.default_rng(seed)
        picks = []
        for label in self.classes:
            rows = np.flatnonzero(self.train.labels == label)
            if len(rows) < shots:
                raise TransferPipeError(
                    f"class {label!r} has {len(rows)} training rows, fewer than --shots {shots}."
                )
            picks.append(rng.choice(rows, size=shots, replace=False))
        index = np.sort(np.concatenate(picks))
        return replace(self, train=self.train.take(index), shots=shots, shot_seed=seed)

    def label_subset(self, fraction: float, seed: int) -> TaskData:
        """Keep ``ceil(fraction * n)`` (at least one) of the ``n`` training rows of each
        class, drawn with ``seed`` (a learning curve's point); validation and test stay
        whole so that every fraction and seed is judged on the same rows. Fraction 1 keeps
        every row, whatever the seed."""
        if not 0 < fraction <= 1:
            raise TransferPipeError(f"--label-fraction must be in (0, 1], not {fraction}.")
        rng = np.random.default_rng(seed)
        picks = []
        for label in self.classes:
            rows = np.flatnonzero(self.train.labels == label)
            # (less a hair: 0.07 * 100 is 7.000000000000001 in floats, and keeps 7 rows)
            keep = max(1, math.ceil(fraction * len(rows) - 1e-9))
            picks.append(rng.choice(rows, size=min(keep, len(rows)), replace=False))
        index = np.sort(np.concatenate(picks))
        return replace(self, train=self.train.take(index), label_fraction=fraction, shot_seed=seed)

    def sizes(self) -> dict[str, int]:
        return {TRAIN: len(self.train), VAL: len(self.val), TEST: len(self.test)}

    def split_sizes(self) -> SplitSizes:
        """Rows per split, where the split came from and the rows the task left unlabelled:
        as a card records them."""
        return SplitSizes(**self.sizes(), origin=self.split_origin, dropped=self.dropped)


def split_layers(layer: str) -> list[str]:
    """``"a+b"`` -> ``["a", "b"]``: the layers whose features a head reads, side by side."""
    return [name for name in layer.split("+") if name]


def parse_task(text: str) -> Task:
    """``source``, a built-in mapping name, a JSON task file, or a CSV/Parquet labels file."""
    if text == SOURCE_TASK:
        return Task()
    if text in BUILTIN_MAPPINGS:
        return Task(name=text, mapping=_invert(BUILTIN_MAPPINGS[text]))
    name, extension = posixpath.splitext(posixpath.basename(text))
    if extension.lower() in (".csv", ".parquet", ".pq"):
        return Task(name=name, labels_file=text)
    if extension.lower() == ".json":
        return _task_from_json(text)
    raise TransferPipeError(
        f"unknown task {text!r}: use 'source', one of {sorted(BUILTIN_MAPPINGS)}, a JSON task "
        "file ({'name': ..., 'mapping': {'new class': ['source class', ...]}}), or a "
        "CSV/Parquet file with sample_id and label columns."
    )


def _task_from_json(path: str) -> Task:
    try:
        with fsspec.open(path, "rt") as f:
            raw = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise TransferPipeError(f"cannot read task file {path}: {err}") from err
    name = raw.get("name") or posixpath.splitext(posixpath.basename(path))[0]
    if "mapping" in raw:
        groups = raw["mapping"]
        if not isinstance(groups, dict) or not all(isinstance(v, list) for v in groups.values()):
            raise TransferPipeError(
                f"{path}: 'mapping' must map each task class to a list of source classes."
            )
        return Task(name=name, mapping=_invert(groups))
    if "labels" in raw:
        labels = posixpath.join(posixpath.dirname(path), raw["labels"])
        return Task(name=name, labels_file=labels)
    raise TransferPipeError(f"{path}: a task file needs a 'mapping' or a 'labels' entry.")


def _invert(groups: Mapping[str, tuple[str, ...] | list[str]]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for group, members in groups.items():
        for member in members:
            if member in mapping:
                raise TransferPipeError(
                    f"source class {member!r} is mapped to both {mapping[member]!r} and {group!r}."
                )
            mapping[member] = group
    return mapping


def layer_features(
    store: FeatureStore, key: str, layer: str, sample_ids: Sequence[str]
) -> np.ndarray:
    """The features a head reads for ``sample_ids`` of ``key`` at ``layer`` (several
    layers joined by "+" side by side), as ``load_task`` gives them to it."""
    return np.hstack(
        [
            np.asarray(store.load(key, layer=name, sample_ids=sample_ids).features, np.float32)
            for name in split_layers(layer)
        ]
    )


def load_task(
    store: FeatureStore, key: str, task: Task, layer: str, options: SplitOptions
) -> TaskData:
    """Read the usable rows of ``key`` at ``layer`` (several layers joined by "+" are
    concatenated), label them for ``task`` and split them."""
    names = split_layers(layer)
    loaded = store.load(key, layer=names[0])
    features = np.hstack(
        [np.asarray(loaded.features, dtype=np.float32)]
        # Every layer of a feature set has the same usable rows, in the same order.
        + [np.asarray(store.load(key, layer=n).features, dtype=np.float32) for n in names[1:]]
    )
    labels, notes = _task_labels(task, loaded.sample_ids, loaded.labels.astype(str))
    keep = labels != ""
    if not keep.any():
        raise TransferPipeError(
            f"task {task.name!r} labels none of the {len(keep)} usable rows of {key}."
        )
    rows = SplitRows(features[keep], labels[keep], loaded.sample_ids[keep].astype(str))
    splits = loaded.splits[keep].astype(str)
    classes = tuple(sorted(set(rows.labels)))
    if len(classes) < 2:
        raise TransferPipeError(f"task {task.name!r} has only the class {classes}; need two.")
    train, val, test, origin = _split(rows, splits, options)
    return TaskData(
        task=task,
        feature_set=key,
        layer=layer,
        classes=classes,
        train=train,
        val=val,
        test=test,
        split_origin=origin,
        dropped=int((~keep).sum()),
        notes=tuple(notes),
    )


def _task_labels(
    task: Task, sample_ids: np.ndarray, source_labels: np.ndarray
) -> tuple[np.ndarray, list[str]]:
    """Task label per row ("" = not part of the task) and notes for the user."""
    if task.mapping is not None:
        unknown = sorted(set(task.mapping) - set(source_labels))
        notes = [f"mapped classes absent from the data: {unknown}"] if unknown else []
        mapped = [task.mapping.get(label, "") for label in source_labels]
        return np.asarray(mapped, dtype=object).astype(str), notes
    if task.labels_file is not None:
        table = _read_labels(task.labels_file)
        by_id = dict(zip(table[SAMPLE_ID], table[LABEL], strict=True))
        labels = np.asarray([by_id.get(s, "") for s in sample_ids.astype(str)], dtype=object)
        missing = len(set(by_id) - set(sample_ids.astype(str)))
        notes = [f"{missing} labelled sample ids have no usable features"] if missing else []
        return labels.astype(str), notes
    return source_labels, []


def _read_labels(path: str) -> pd.DataFrame:
    try:
        if path.lower().endswith((".parquet", ".pq")):
            table = pd.read_parquet(path)
        else:
            table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, ValueError) as err:
        raise TransferPipeError(f"cannot read labels file {path}: {err}") from err
    missing = {SAMPLE_ID, LABEL} - set(table.columns)
    if missing:
        raise TransferPipeError(
            f"labels file {path} lacks the column(s) {sorted(missing)}; it needs sample_id and "
            f"label (it has {list(table.columns)})."
        )
    # An empty label (NaN in Parquet) leaves the row out of the task, as in a CSV.
    table = table.fillna({LABEL: ""}).astype({SAMPLE_ID: str, LABEL: str})
    duplicated = table[SAMPLE_ID][table[SAMPLE_ID].duplicated()]
    if len(duplicated):
        raise TransferPipeError(
            f"labels file {path} gives sample id {duplicated.iloc[0]!r} more than one label."
        )
    return table


def _split(
    rows: SplitRows, splits: np.ndarray, options: SplitOptions
) -> tuple[SplitRows, SplitRows, SplitRows, str]:
    """The source's own splits when it has train and test; validation, when the source
    has none, is a stratified share of its training rows."""
    lowered = np.char.lower(splits.astype(str))
    is_train, is_val, is_test = (np.isin(lowered, SPLIT_ALIASES[s]) for s in SPLITS)
    if is_train.any() and is_test.any():
        train, test = np.flatnonzero(is_train), np.flatnonzero(is_test)
        if is_val.any():
            return rows.take(train), rows.take(np.flatnonzero(is_val)), rows.take(test), "source"
        train, val = _stratified(rows.labels, train, options.val_fraction, options.seed)
        origin = f"source; validation {options.val_fraction:g} of train (seed {options.seed})"
        return rows.take(train), rows.take(val), rows.take(test), origin
    everything = np.arange(len(rows))
    rest, test = _stratified(rows.labels, everything, options.test_fraction, options.seed)
    val_share = options.val_fraction / (1 - options.test_fraction)
    train, val = _stratified(rows.labels, rest, val_share, options.seed)
    origin = f"stratified (seed {options.seed})"
    return rows.take(train), rows.take(val), rows.take(test), origin


def _stratified(
    labels: np.ndarray, index: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn takes seconds, and a run whose heads the store holds
    # never splits.
    from sklearn.model_selection import train_test_split

    try:
        kept, held = train_test_split(
            index, test_size=fraction, random_state=seed, stratify=labels[index]
        )
    except ValueError as err:
        raise TransferPipeError(
            f"cannot split {len(index)} rows with stratification ({err}); every class needs "
            "a few examples, or the source should define its own splits."
        ) from err
    return np.sort(kept), np.sort(held)
