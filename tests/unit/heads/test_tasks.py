"""Tasks on a real Zarr feature set: parsing, labels (source, mapped, joined from a file by
sample id), train / validation / test splits, few-shot and label-fraction draws, and the
errors users see."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.task_feature_set import KEY, LAYER, Source, build_feature_set
from transfer_pipe.data.idx import FASHION_MNIST_CLASSES
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.tasks import (
    SplitOptions,
    SplitRows,
    Task,
    TaskData,
    load_task,
    parse_task,
)
from transfer_pipe.store import FeatureStore, ZarrFeatureStore

FASHION = FASHION_MNIST_CLASSES


@pytest.fixture
def store(tmp_path: Path) -> FeatureStore:
    return ZarrFeatureStore(str(tmp_path / "store"))


def _cyclic_labels(n: int, classes: tuple[str, ...] = ("ant", "bee", "cat")) -> list[str]:
    return [classes[i % len(classes)] for i in range(n)]


def _ids(rows: SplitRows) -> set[str]:
    return set(rows.sample_ids.tolist())


def _assert_aligned(rows: SplitRows, source: Source, expected_label: dict[int, str]) -> None:
    """Each row's features, sample id and label all belong to the same source row."""
    for features, sample_id, label in zip(rows.features, rows.sample_ids, rows.labels, strict=True):
        row = int(features[0])
        assert source.sample_ids[row] == sample_id
        assert label == expected_label[row]
        assert np.isfinite(features).all()


def _assert_partition(data: TaskData, expected_ids: set[str]) -> None:
    train, val, test = _ids(data.train), _ids(data.val), _ids(data.test)
    assert len(train) == len(data.train) and len(val) == len(data.val)
    assert len(test) == len(data.test)
    assert not train & val and not train & test and not val & test
    assert train | val | test == expected_ids


# -- splits ------------------------------------------------------------------------------


def test_source_splits_keep_test_rows_and_split_validation_from_train(
    store: FeatureStore,
) -> None:
    n = 150
    splits = ["test" if i % 5 == 0 else "train" for i in range(n)]
    source = build_feature_set(store, _cyclic_labels(n), splits)
    options = SplitOptions(val_fraction=0.25, seed=3)
    data = load_task(store, KEY, Task(), LAYER, options)

    source_test = {source.sample_ids[i] for i in range(n) if splits[i] == "test"}
    source_train = {source.sample_ids[i] for i in range(n) if splits[i] == "train"}
    assert _ids(data.test) == source_test
    assert _ids(data.val) <= source_train
    assert _ids(data.train) == source_train - _ids(data.val)
    assert len(data.val) == int(np.ceil(0.25 * len(source_train)))
    # Stratified: every class keeps its share of the training rows in validation.
    for label in ("ant", "bee", "cat"):
        in_train = sum(source.labels[source.row_of(s)] == label for s in source_train)
        assert abs(int(np.sum(data.val.labels == label)) - 0.25 * in_train) <= 1
    assert data.split_origin.startswith("source")
    assert "seed 3" in data.split_origin
    assert data.classes == ("ant", "bee", "cat")
    assert data.dropped == 0
    for part in (data.train, data.val, data.test):
        _assert_aligned(part, source, dict(enumerate(source.labels.tolist())))

    again = load_task(store, KEY, Task(), LAYER, options)
    assert _ids(again.val) == _ids(data.val)
    other = load_task(store, KEY, Task(), LAYER, SplitOptions(val_fraction=0.25, seed=4))
    assert _ids(other.val) != _ids(data.val)
    assert _ids(other.test) == source_test


def test_source_validation_split_is_used_as_is(store: FeatureStore) -> None:
    n = 60
    splits = [("train", "VAL", "test")[i % 3] for i in range(n)]  # the case is not significant
    source = build_feature_set(store, _cyclic_labels(n, ("a", "b")), splits)
    data = load_task(store, KEY, Task(), LAYER, SplitOptions(val_fraction=0.5))
    for part, name in ((data.train, "train"), (data.val, "VAL"), (data.test, "test")):
        assert _ids(part) == {source.sample_ids[i] for i in range(n) if splits[i] == name}
    assert data.split_origin == "source"


def test_no_source_splits_gives_stratified_train_val_test(store: FeatureStore) -> None:
    n = 200
    labels = ["big"] * 120 + ["small"] * 80
    source = build_feature_set(store, labels, [""] * n)
    options = SplitOptions(val_fraction=0.1, test_fraction=0.2, seed=0)
    data = load_task(store, KEY, Task(), LAYER, options)

    assert len(data.test) == 40
    assert len(data.val) == 20
    assert len(data.train) == 140
    for part, size in ((data.train, 140), (data.val, 20), (data.test, 40)):
        assert abs(int(np.sum(part.labels == "big")) - 0.6 * size) <= 1
    _assert_partition(data, set(source.sample_ids.tolist()))
    assert data.split_origin == "stratified (seed 0)"
    for part in (data.train, data.val, data.test):
        _assert_aligned(part, source, dict(enumerate(labels)))

    same = load_task(store, KEY, Task(), LAYER, options)
    assert _ids(same.test) == _ids(data.test) and _ids(same.val) == _ids(data.val)
    other = load_task(store, KEY, Task(), LAYER, SplitOptions(seed=1))
    assert _ids(other.test) != _ids(data.test)


def test_splits_are_disjoint_cover_usable_rows_and_skip_failures(store: FeatureStore) -> None:
    n = 90
    failures = {2: "corrupt: bad bytes", 17: "empty: zero-byte file", 40: "decode: truncated"}
    labels = _cyclic_labels(n)
    labels[5] = labels[6] = ""  # usable rows without a label: not part of the task
    source = build_feature_set(store, labels, [""] * n, failures=failures)
    data = load_task(store, KEY, Task(), LAYER, SplitOptions())

    usable = {source.sample_ids[i] for i in source.usable() if labels[i]}
    _assert_partition(data, usable)
    failed = {source.sample_ids[i] for i in failures}
    for part in (data.train, data.val, data.test):
        assert not _ids(part) & failed
        assert np.isfinite(part.features).all()
    assert data.dropped == 2  # the unlabelled rows; failed rows never reach the task


# -- mapped tasks ------------------------------------------------------------------------

# Written out here, independently of the library's table.
FASHION_GROUP = {
    "T-shirt/top": "tops",
    "Pullover": "tops",
    "Coat": "tops",
    "Shirt": "tops",
    "Dress": "tops",
    "Trouser": "bottoms",
    "Sandal": "footwear",
    "Sneaker": "footwear",
    "Ankle boot": "footwear",
    "Bag": "bags",
}


def test_builtin_fashion_mnist_groups_relabel_and_drop_unmapped(store: FeatureStore) -> None:
    labels = [FASHION[i % 10] for i in range(100)] + ["Unicorn"] * 7
    splits = ["test" if i % 4 == 0 else "train" for i in range(len(labels))]
    source = build_feature_set(store, labels, splits)
    task = parse_task("fashion-mnist-groups")
    assert task.name == "fashion-mnist-groups"
    data = load_task(store, KEY, task, LAYER, SplitOptions())

    assert data.classes == ("bags", "bottoms", "footwear", "tops")
    assert data.dropped == 7
    expected = {i: FASHION_GROUP.get(label, "") for i, label in enumerate(labels)}
    for part in (data.train, data.val, data.test):
        _assert_aligned(part, source, expected)
    unicorns = {source.sample_ids[i] for i, label in enumerate(labels) if label == "Unicorn"}
    _assert_partition(data, set(source.sample_ids.tolist()) - unicorns)


def test_json_mapping_task_relabels_and_notes_absent_classes(
    store: FeatureStore, tmp_path: Path
) -> None:
    labels = _cyclic_labels(60, ("Sneaker", "Sandal", "Shirt", "Bag"))
    source = build_feature_set(store, labels, [""] * 60)
    task_file = tmp_path / "shoes.json"
    mapping = {"shoes": ["Sneaker", "Sandal", "Loafer"], "shirts": ["Shirt"]}
    task_file.write_text(json.dumps({"name": "shoes-vs-shirts", "mapping": mapping}))
    task = parse_task(str(task_file))
    assert task.name == "shoes-vs-shirts"
    assert dict(task.mapping or {}) == {
        "Sneaker": "shoes",
        "Sandal": "shoes",
        "Loafer": "shoes",
        "Shirt": "shirts",
    }
    data = load_task(store, KEY, task, LAYER, SplitOptions())

    assert data.classes == ("shirts", "shoes")
    assert data.dropped == 15  # the "Bag" rows
    expected = {
        i: {"Sneaker": "shoes", "Sandal": "shoes", "Shirt": "shirts"}.get(label, "")
        for i, label in enumerate(labels)
    }
    for part in (data.train, data.val, data.test):
        _assert_aligned(part, source, expected)
    assert any("Loafer" in note for note in data.notes)


def test_json_task_name_defaults_to_file_name(tmp_path: Path) -> None:
    task_file = tmp_path / "coarse.json"
    task_file.write_text(json.dumps({"mapping": {"x": ["a"], "y": ["b"]}}))
    assert parse_task(str(task_file)).name == "coarse"


# -- labels files ------------------------------------------------------------------------


def _write_labels(table: pd.DataFrame, path: Path) -> None:
    if path.suffix == ".csv":
        table.to_csv(path, index=False)
    else:
        table.to_parquet(path, index=False)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_labels_file_joins_by_sample_id_not_row_order(
    store: FeatureStore, tmp_path: Path, suffix: str
) -> None:
    n = 80
    source = build_feature_set(store, _cyclic_labels(n), [""] * n)
    # A label unrelated to the source's, derived from the sample id itself, for all but
    # the last 10 rows (those become unlabelled); written in shuffled order.
    own_label = {s: ("odd" if int(s[-4:]) % 2 else "even") for s in source.sample_ids[:-10]}
    rng = np.random.default_rng(7)
    order = rng.permutation(len(own_label))
    table = pd.DataFrame(
        {
            "label": np.array(list(own_label.values()))[order],
            "sample_id": np.array(list(own_label))[order],
            "note": ["x"] * len(own_label),
        }
    )
    path = tmp_path / f"parity{suffix}"
    _write_labels(table, path)
    task = parse_task(str(path))
    assert task.name == "parity" and task.labels_file == str(path)
    data = load_task(store, KEY, task, LAYER, SplitOptions())

    assert data.classes == ("even", "odd")
    assert data.dropped == 10
    expected = {source.row_of(s): label for s, label in own_label.items()}
    expected.update({source.row_of(s): "" for s in source.sample_ids[-10:]})
    for part in (data.train, data.val, data.test):
        _assert_aligned(part, source, expected)
    _assert_partition(data, set(own_label))


def test_labels_file_named_by_json_task(store: FeatureStore, tmp_path: Path) -> None:
    source = build_feature_set(store, _cyclic_labels(40), [""] * 40)
    own = {s: "left" if i < 20 else "right" for i, s in enumerate(sorted(source.sample_ids))}
    pd.DataFrame({"sample_id": list(own), "label": list(own.values())}).to_csv(
        tmp_path / "sides.csv", index=False
    )
    (tmp_path / "sides.json").write_text(json.dumps({"name": "sides", "labels": "sides.csv"}))
    task = parse_task(str(tmp_path / "sides.json"))
    assert task.labels_file == str(tmp_path / "sides.csv")
    data = load_task(store, KEY, task, LAYER, SplitOptions())
    for part in (data.train, data.val, data.test):
        _assert_aligned(part, source, {source.row_of(s): label for s, label in own.items()})


def test_labels_file_with_unknown_sample_ids_is_noted(store: FeatureStore, tmp_path: Path) -> None:
    source = build_feature_set(store, _cyclic_labels(40), [""] * 40)
    ids = [*source.sample_ids.tolist(), "ghost-1", "ghost-2"]
    path = tmp_path / "labels.csv"
    pd.DataFrame({"sample_id": ids, "label": ["p", "q"] * 21}).to_csv(path, index=False)
    data = load_task(store, KEY, parse_task(str(path)), LAYER, SplitOptions())
    assert any(note.startswith("2 labelled sample ids") for note in data.notes)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_labels_file_with_duplicate_sample_ids_is_refused(
    store: FeatureStore, tmp_path: Path, suffix: str
) -> None:
    source = build_feature_set(store, _cyclic_labels(30), [""] * 30)
    ids = source.sample_ids.tolist()
    table = pd.DataFrame({"sample_id": [*ids, ids[4]], "label": ["a", "b"] * 15 + ["b"]})
    path = tmp_path / f"dups{suffix}"
    _write_labels(table, path)
    with pytest.raises(TransferPipeError, match=ids[4]):
        load_task(store, KEY, parse_task(str(path)), LAYER, SplitOptions())


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_labels_file_missing_columns_are_named(
    store: FeatureStore, tmp_path: Path, suffix: str
) -> None:
    source = build_feature_set(store, _cyclic_labels(30), [""] * 30)
    path = tmp_path / f"bad{suffix}"
    _write_labels(pd.DataFrame({"id": source.sample_ids, "class": ["a"] * 30}), path)
    with pytest.raises(TransferPipeError) as caught:
        load_task(store, KEY, parse_task(str(path)), LAYER, SplitOptions())
    assert "sample_id" in str(caught.value) and "label" in str(caught.value)

    _write_labels(pd.DataFrame({"sample_id": source.sample_ids, "class": ["a"] * 30}), path)
    with pytest.raises(TransferPipeError, match=r"\['label'\]"):
        load_task(store, KEY, parse_task(str(path)), LAYER, SplitOptions())


# -- few-shot ----------------------------------------------------------------------------


def test_few_shot_draws_k_per_class_from_train_only(store: FeatureStore) -> None:
    n = 120
    source = build_feature_set(store, _cyclic_labels(n), [""] * n)
    data = load_task(store, KEY, Task(), LAYER, SplitOptions())
    few = data.few_shot(5, seed=0)

    assert len(few.train) == 15
    for label in data.classes:
        assert int(np.sum(few.train.labels == label)) == 5
    assert _ids(few.train) <= _ids(data.train)
    _assert_aligned(few.train, source, dict(enumerate(_cyclic_labels(n))))
    for name in ("val", "test"):
        original, kept = getattr(data, name), getattr(few, name)
        np.testing.assert_array_equal(kept.sample_ids, original.sample_ids)
        np.testing.assert_array_equal(kept.features, original.features)
        np.testing.assert_array_equal(kept.labels, original.labels)
    assert (few.shots, few.shot_seed) == (5, 0)
    assert (data.shots, data.shot_seed) == (None, None)
    assert len(data.train) == 84  # the original is not modified

    np.testing.assert_array_equal(data.few_shot(5, seed=0).train.sample_ids, few.train.sample_ids)
    assert _ids(data.few_shot(5, seed=1).train) != _ids(few.train)


def test_few_shot_with_too_few_rows_names_the_class(store: FeatureStore) -> None:
    labels = ["common"] * 60 + ["rare"] * 10
    build_feature_set(store, labels, [""] * 70)
    data = load_task(store, KEY, Task(), LAYER, SplitOptions())
    rare_train = int(np.sum(data.train.labels == "rare"))
    assert data.few_shot(rare_train, seed=0).sizes()["train"] == 2 * rare_train
    with pytest.raises(TransferPipeError, match="'rare'"):
        data.few_shot(rare_train + 1, seed=0)


# -- label fraction (a learning curve's points) ------------------------------------------


def _uneven_train(store: FeatureStore) -> tuple[Source, TaskData]:
    """Source splits with 100 / 20 / 3 training rows of ant / bee / cat, 2 val and 2 test
    rows of each class."""
    counts = {"ant": 100, "bee": 20, "cat": 3}
    labels = [c for c, n in counts.items() for _ in range(n)] + _cyclic_labels(12)
    splits = ["train"] * sum(counts.values()) + ["val", "test"] * 6
    source = build_feature_set(store, labels, splits)
    return source, load_task(store, KEY, Task(), LAYER, SplitOptions())


def _per_class(rows: SplitRows) -> dict[str, int]:
    return dict(Counter(rows.labels.tolist()))


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [
        (0.25, {"ant": 25, "bee": 5, "cat": 1}),
        # Mutation: round() instead of ceil() keeps no cat (0.3 -> 0) and fails here.
        (0.1, {"ant": 10, "bee": 2, "cat": 1}),
        # Mutation: plain ceil(0.07 * 100) (7.000000000000001) keeps 8 ants and fails here.
        (0.07, {"ant": 7, "bee": 2, "cat": 1}),
        (0.01, {"ant": 1, "bee": 1, "cat": 1}),  # at least one row per class
        (1.0, {"ant": 100, "bee": 20, "cat": 3}),
    ],
)
def test_label_subset_keeps_the_share_of_each_class(
    store: FeatureStore, fraction: float, expected: dict[str, int]
) -> None:
    source, data = _uneven_train(store)
    part = data.label_subset(fraction, seed=3)
    assert _per_class(part.train) == expected
    assert _ids(part.train) <= _ids(data.train)
    _assert_aligned(part.train, source, dict(enumerate(source.labels.tolist())))
    # Mutation: dropping np.sort (rows in draw order) fails here.
    assert list(part.train.features[:, 0]) == sorted(part.train.features[:, 0])
    for name in ("val", "test"):  # every fraction and seed judged on the same rows
        original, kept = getattr(data, name), getattr(part, name)
        np.testing.assert_array_equal(kept.sample_ids, original.sample_ids)
        np.testing.assert_array_equal(kept.features, original.features)
    assert (part.label_fraction, part.shot_seed, part.shots) == (fraction, 3, None)
    assert (data.label_fraction, data.shot_seed, len(data.train)) == (None, None, 123)


def test_label_subset_draws_per_seed_and_fraction_one_keeps_everything(
    store: FeatureStore,
) -> None:
    _, data = _uneven_train(store)
    same = data.label_subset(0.25, seed=0).train.sample_ids
    np.testing.assert_array_equal(data.label_subset(0.25, seed=0).train.sample_ids, same)
    # Mutation: a fixed generator (default_rng(0) whatever the seed) fails here.
    assert _ids(data.label_subset(0.25, seed=1).train) != set(same.tolist())
    for seed in (0, 1, 7):
        np.testing.assert_array_equal(
            data.label_subset(1.0, seed=seed).train.sample_ids, data.train.sample_ids
        )
    with pytest.raises(TransferPipeError, match="--label-fraction"):
        data.label_subset(0.0, seed=0)


# -- errors ------------------------------------------------------------------------------


def test_unknown_task_string_explains_the_choices() -> None:
    with pytest.raises(TransferPipeError) as caught:
        parse_task("not-a-task")
    message = str(caught.value)
    assert "not-a-task" in message
    assert "source" in message and "fashion-mnist-groups" in message and "CSV" in message


def test_json_task_without_mapping_or_labels_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "empty.json"
    path.write_text(json.dumps({"name": "nothing"}))
    with pytest.raises(TransferPipeError, match="'mapping' or a 'labels'"):
        parse_task(str(path))


def test_json_task_errors(tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(TransferPipeError, match="cannot read task file"):
        parse_task(str(broken))
    with pytest.raises(TransferPipeError, match="cannot read task file"):
        parse_task(str(tmp_path / "absent.json"))
    not_lists = tmp_path / "flat.json"
    not_lists.write_text(json.dumps({"mapping": {"shoes": "Sneaker"}}))
    with pytest.raises(TransferPipeError, match="list of source classes"):
        parse_task(str(not_lists))
    twice = tmp_path / "twice.json"
    twice.write_text(json.dumps({"mapping": {"a": ["Bag"], "b": ["Bag"]}}))
    with pytest.raises(TransferPipeError, match="'Bag'"):
        parse_task(str(twice))


def test_a_task_with_one_class_is_refused(store: FeatureStore, tmp_path: Path) -> None:
    build_feature_set(store, _cyclic_labels(30, ("Bag", "Coat")), [""] * 30)
    path = tmp_path / "bags.json"
    path.write_text(json.dumps({"mapping": {"bags": ["Bag"]}}))
    with pytest.raises(TransferPipeError, match="only the class"):
        load_task(store, KEY, parse_task(str(path)), LAYER, SplitOptions())


def test_a_task_that_labels_nothing_is_refused(store: FeatureStore, tmp_path: Path) -> None:
    build_feature_set(store, _cyclic_labels(30), [""] * 30)
    path = tmp_path / "other.json"
    path.write_text(json.dumps({"mapping": {"x": ["Zebra"], "y": ["Yak"]}}))
    with pytest.raises(TransferPipeError, match="labels none"):
        load_task(store, KEY, parse_task(str(path)), LAYER, SplitOptions())


def test_a_class_too_small_to_stratify_is_refused(store: FeatureStore) -> None:
    build_feature_set(store, ["many"] * 39 + ["lonely"], [""] * 40)
    with pytest.raises(TransferPipeError, match="stratification"):
        load_task(store, KEY, Task(), LAYER, SplitOptions())


@pytest.mark.parametrize(
    ("val", "test"), [(0.0, 0.2), (0.1, 1.0), (0.5, 0.5), (-0.1, 0.2), (0.7, 0.4)]
)
def test_split_fractions_are_checked(val: float, test: float) -> None:
    with pytest.raises(TransferPipeError, match="--val-fraction"):
        SplitOptions(val_fraction=val, test_fraction=test)
