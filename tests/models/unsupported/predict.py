"""Run functions whose signature cogd cannot express: setup must fail, naming the parameter."""

from typing import Union

from cog import Path

SETUP_RAN = []


class Thing:
    """Not a type any Cog client can send."""


def custom_type(name: str, thing: Thing) -> str:
    return name


def union_with_path(source: Union[str, Path]) -> str:
    return str(source)


def var_kwargs(prompt: str, **extra: str) -> str:
    return prompt


def unannotated(prompt) -> str:
    return prompt
