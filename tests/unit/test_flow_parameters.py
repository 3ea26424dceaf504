"""A flow's parameters (``flows.parameters.run_parameters``): the deployment's "Run" form
offers an option's bounds, and Prefect refuses a run outside them before it starts."""

from __future__ import annotations

from typing import Any

import pytest
from prefect.exceptions import ParameterTypeError
from prefect.utilities.callables import parameter_schema

from flows.embed import embed_flow
from flows.finetune import finetune_flow


def _integer(schema: dict[str, Any]) -> dict[str, Any]:
    """The integer branch of a property (``int | None`` is ``anyOf`` integer, null)."""
    branches = schema.get("anyOf", [schema])
    (integer,) = (b for b in branches if b.get("type") == "integer")
    return integer


def test_the_run_form_carries_each_options_bounds() -> None:
    # Mutations seen failing: _bounded returning opt.type (no bounds on the parameter); its
    # Field without ge (batch_size and a too small image_size then pass).
    embed = parameter_schema(embed_flow).model_dump()["properties"]
    assert _integer(embed["batch_size"])["minimum"] == 1
    assert _integer(embed["image_size"])["minimum"] == 8
    assert _integer(embed["image_size"])["maximum"] == 4096
    assert embed["image_size"]["default"] is None  # optional: None stays allowed
    finetune = parameter_schema(finetune_flow).model_dump()["properties"]
    assert finetune["lr"]["exclusiveMinimum"] == 0  # ``above``: the bound itself is out
    assert finetune["lr_decay"]["maximum"] == 1


@pytest.mark.parametrize(
    ("name", "value"), [("batch_size", 0), ("image_size", 4097), ("image_size", 7)]
)
def test_a_run_outside_the_bounds_is_refused_by_prefect(name: str, value: int) -> None:
    with pytest.raises(ParameterTypeError, match=name):
        embed_flow.validate_parameters({"source": "fashion-mnist", name: value})


def test_a_run_within_the_bounds_is_accepted() -> None:
    accepted = embed_flow.validate_parameters(
        {"source": "fashion-mnist", "batch_size": 1, "image_size": None, "limit": 10}
    )
    assert (accepted["batch_size"], accepted["image_size"], accepted["limit"]) == (1, None, 10)
