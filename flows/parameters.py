"""Flat, typed, documented flow parameters, generated from the typed configs.

Prefect builds a deployment's "Run" form from its flow's signature. ``run_parameters``
gives a flow the signature of one run's options (``transfer_pipe.config.run_options``):
one keyword parameter per option, typed, with its default and its help as description,
so the CLI's ``--help``, the UI form and the docs read the same field.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

from pydantic import Field

from transfer_pipe.config import REQUIRED, Option, run_options

F = TypeVar("F", bound=Callable[..., Any])


def run_parameters(config_class: type, *extra: Option) -> Callable[[F], F]:
    """Give the decorated ``fn(**values)`` the keyword parameters of ``config_class``'s run
    options (then ``extra``), as Prefect and ``inspect.signature`` see it."""

    def decorate(fn: F) -> F:
        parameters = [_parameter(o) for o in (*run_options(config_class), *extra)]
        returns = inspect.signature(fn).return_annotation
        fn.__signature__ = inspect.Signature(parameters, return_annotation=returns)  # type: ignore[attr-defined]
        return fn

    return decorate


def _parameter(opt: Option) -> inspect.Parameter:
    default = (
        Field(description=opt.help)
        if opt.default is REQUIRED
        else Field(opt.default, description=opt.help)
    )
    return inspect.Parameter(
        opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=opt.type, default=default
    )
