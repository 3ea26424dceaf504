"""Where a run's tasks go, decided without starting a cluster: the scheduler address, and
the resources a device task asks of it (the cluster itself: tests/e2e/test_dask_workers.py
and tests/e2e/test_cluster_faults.py)."""

from __future__ import annotations

import pytest

from transfer_pipe.cluster import GPU, check_resources, plan_cluster, task_resources
from transfer_pipe.errors import TransferPipeError

ADDRESS = "tcp://dask-host:8786"


@pytest.mark.parametrize(
    ("device", "offered", "asked"),
    [
        ("cuda", (), {GPU: 1}),
        ("cuda:1", ("other",), {GPU: 1}),
        ("auto", (GPU,), {GPU: 1}),  # a GPU worker exists: auto means CUDA there
        ("auto", (), {}),
        ("cpu", (GPU,), {}),
    ],
)
def test_a_cuda_task_asks_for_one_gpu_and_a_cpu_task_for_nothing(
    device: str, offered: tuple[str, ...], asked: dict[str, float]
) -> None:
    # Mutation seen failing: task_resources ignoring "cuda:1" (comparing the whole
    # device name with "cuda").
    assert task_resources(device, offered) == asked


def test_a_resource_no_worker_offers_is_an_error_naming_the_fix() -> None:
    # Mutation seen failing: check_resources inverted (refusing a GPU that is offered).
    check_resources({GPU: 1}, {GPU: 1.0, "memory": 4.0}, ADDRESS)
    check_resources({}, {}, ADDRESS)
    with pytest.raises(TransferPipeError) as error:
        check_resources({GPU: 1}, {"memory": 4.0}, ADDRESS)
    message = str(error.value)
    assert f"no worker of the Dask cluster at {ADDRESS} offers the GPU resource" in message
    assert f"dask worker {ADDRESS} --resources GPU=1" in message
    assert "--device cpu" in message


def test_the_scheduler_address_comes_from_the_option_else_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Mutation seen failing: plan_cluster ignoring DASK_SCHEDULER_ADDRESS.
    monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", ADDRESS)
    assert plan_cluster(None, None).address == ADDRESS
    assert plan_cluster("tcp://other:8786", None).address == "tcp://other:8786"
    monkeypatch.delenv("DASK_SCHEDULER_ADDRESS")
    local = plan_cluster(None, 2)
    assert local.address is None and local.workers == 2
