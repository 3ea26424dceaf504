"""A kNN head references its training rows in its feature set instead of keeping a copy
(issue 21, part 6): what is saved is the model without them plus their sample ids, and
loading reads the very same values back, so it predicts exactly as the fitted head did.

Each test names, in a comment, the mutation of the code it was seen failing on.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.support.task_feature_set import KEY, uneven_store
from transfer_pipe.config import TrainConfig
from transfer_pipe.errors import TransferPipeError
from transfer_pipe.heads.options import ProtocolOptions
from transfer_pipe.heads.persist import load_head, save_head
from transfer_pipe.heads.protocol import class_probabilities, fit_head
from transfer_pipe.steps.train import prepare_training, train
from transfer_pipe.store import open_store


def _fit(tmp_path: Path) -> tuple[str, str, TrainConfig]:
    store = uneven_store(tmp_path)
    config = TrainConfig(feature_set=KEY, store=store, heads=("knn",), c_values=3, bootstrap=20)
    (head_id,) = train(config).heads["knn"].head_ids
    return store, head_id, config


def test_the_saved_knn_head_names_its_rows_and_holds_none_of_them(tmp_path: Path) -> None:
    # Mutation seen failing: save_head ignoring fit_ids (_reference_training_rows
    # returning None): no fit_rows.parquet, and the model file holds every row.
    store, head_id, config = _fit(tmp_path)
    folder = Path(store) / "heads" / head_id
    ids = pd.read_parquet(folder / "fit_rows.parquet")["sample_id"]
    plan = prepare_training(config, KEY)
    fitted = fit_head("knn", plan.data, ProtocolOptions.from_config(config))
    assert ids.tolist() == fitted.fit_ids.tolist()  # train + validation, in fit order
    _, card = load_head(store, head_id)
    assert card.fit_rows_file == "fit_rows.parquet"
    # Saved the old way (no fit_ids), the model file holds the copy: every training row
    # of every feature, as float64.
    whole = save_head(str(tmp_path / "other"), card, fitted.model)
    copy_bytes = fitted.model.named_steps["head"]._fit_X.nbytes
    saved = (folder / card.model_file).stat().st_size
    assert (Path(whole) / card.model_file).stat().st_size - saved >= copy_bytes * 0.9


def test_a_loaded_knn_head_predicts_exactly_as_the_fitted_one(tmp_path: Path) -> None:
    # Mutation seen failing: _restore_training_rows not scaling the rows it reads
    # (predictions differ) / reading them in another order (neighbours' labels differ).
    store, head_id, config = _fit(tmp_path)
    plan = prepare_training(config, KEY)
    fitted = fit_head("knn", plan.data, ProtocolOptions.from_config(config))
    model, _ = load_head(store, head_id)
    np.testing.assert_array_equal(
        model.named_steps["head"]._fit_X, fitted.model.named_steps["head"]._fit_X
    )
    probe = np.random.default_rng(3).normal(size=(25, plan.data.test.features.shape[1]))
    for rows in (plan.data.test.features, probe.astype(np.float32)):
        np.testing.assert_array_equal(
            class_probabilities(model, rows, plan.data.classes),
            class_probabilities(fitted.model, rows, plan.data.classes),
        )


def test_a_knn_head_whose_rows_were_removed_says_how_to_fix_it(tmp_path: Path) -> None:
    # Mutation seen failing: the missing feature set surfacing as a bare KeyError.
    store, head_id, _ = _fit(tmp_path)
    open_store(store).drop_version(KEY)  # as `gc --force` does
    with pytest.raises(TransferPipeError, match="fit it again with `transfer-pipe train`"):
        load_head(store, head_id)
