"""The sweep's probes (``steps.sweep.fit_probe``): the heads pipeline's heads, saved
without per-head pictures, reading a layer's rows once for consecutive probes on it; and
the stopwatch that says where a sweep's time went. A synthetic feature set written
through the store API: no embedding, no Prefect."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.support.task_feature_set import KEY, LAYER, uneven_store
from transfer_pipe.config import TrainConfig
from transfer_pipe.heads.card import head_url
from transfer_pipe.heads.tasks import load_task
from transfer_pipe.steps import sweep as steps
from transfer_pipe.steps import train as train_steps
from transfer_pipe.steps.train import plan as train_plan


@pytest.fixture(autouse=True)
def _one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny fits: one thread each (as in tests/unit/heads)."""
    from transfer_pipe.heads import protocol

    monkeypatch.setattr(protocol, "threads_per_task", lambda: 1)


@pytest.fixture
def store(tmp_path: Path) -> str:
    return uneven_store(tmp_path)


def _run(store: str, fraction: float = 1.0, **extra: Any) -> steps.ProbeRun:
    options: dict[str, Any] = {"label_fraction": fraction, "shot_seeds": 2} if fraction < 1 else {}
    config = TrainConfig(
        feature_set=KEY,
        store=store,
        heads=(steps.PROBE,),
        layer=LAYER,
        c_values=3,
        bootstrap=20,
        **options,
        **extra,
    )
    return steps.ProbeRun("pretrained", LAYER, 0, config, fraction)


def test_probes_on_one_layer_read_its_rows_once_and_save_no_pictures(
    store: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []

    def counting_load_task(*args: Any) -> Any:
        reads.append(args[3])  # the layer
        return load_task(*args)

    monkeypatch.setattr(train_plan, "load_task", counting_load_task)
    runs = [_run(store), _run(store, 0.25), _run(store, 0.5)]
    rows = steps.LayerRows()  # the sweep's
    summaries = [steps.fit_probe(run, rows) for run in runs]
    # Mutation seen failing here: fit_probe without its LayerRows lookup reads 3 times.
    assert reads == [LAYER]
    assert [s.heads_fitted for s in summaries] == [1, 2, 2]
    # The heads are the heads flow's own (the same ids), so a heads run reuses them.
    again = train_steps.train(runs[1].config)
    assert (again.heads_fitted, again.heads_reused) == (0, 2)
    assert again.heads[steps.PROBE].head_ids == summaries[1].heads[steps.PROBE].head_ids
    # Each head has its card, model and report, but no per-head pictures.
    # Mutation seen failing here: fit_probe calling train_head with plots=True.
    for summary in summaries:
        for identity in summary.heads[steps.PROBE].head_ids:
            files = {p.name for p in Path(head_url(store, identity)).iterdir()}
            assert {"card.json", "report.md"} <= files, files
            assert not {f for f in files if f.endswith(".png")}, files


def test_rows_of_another_split_are_read_again(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[str] = []

    def counting_load_task(*args: Any) -> Any:
        reads.append(args[3])
        return load_task(*args)

    monkeypatch.setattr(train_plan, "load_task", counting_load_task)
    rows = steps.LayerRows()  # the sweep's
    steps.fit_probe(_run(store), rows)
    steps.fit_probe(_run(store, split_seed=1), rows)
    # Mutation seen failing here: the rows' cache key without the split options.
    assert reads == [LAYER, LAYER]


def test_the_stopwatch_adds_up_each_phase() -> None:
    clock = steps.Stopwatch()
    for _ in range(2):
        with clock.phase("a"), clock.phase("b"):
            pass
    with pytest.raises(ZeroDivisionError), clock.phase("c"):
        _ = 1 / 0
    assert set(clock.seconds) == {"a", "b", "c"}  # a phase that raised is timed too
    assert all(seconds >= 0 for seconds in clock.seconds.values())
