"""Flat, typed, documented flow parameters, generated from the typed configs.

Prefect builds a deployment's "Run" form from its flow's signature. ``run_parameters``
gives a flow the signature of one run's options (``transfer_pipe.config.run_options``):
one keyword parameter per option, typed, with its default, its bounds and its help as
description, so the CLI's ``--help``, the UI form and the docs read the same field.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import Field

from transfer_pipe.config import REQUIRED, Option, run_options

F = TypeVar("F", bound=Callable[..., Any])
_ANNOTATED: Any = Annotated  # a type built at run time, from an option's metadata


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
        opt.name, inspect.Parameter.KEYWORD_ONLY, annotation=_bounded(opt), default=default
    )


def _bounded(opt: Option) -> Any:
    """The option's type with its bounds, so the form shows them and Prefect refuses a run
    outside them before it starts. On the type, not the default's ``Field``: Prefect builds
    its form and its validation from the annotation and keeps only a Field's default and
    description. (Allowed values are the type already: a ``Literal``.)"""
    if opt.minimum is None and opt.maximum is None and opt.above is None:
        return opt.type
    bounded = _ANNOTATED[opt.base_type, Field(ge=opt.minimum, le=opt.maximum, gt=opt.above)]
    return bounded | None if opt.optional else bounded
