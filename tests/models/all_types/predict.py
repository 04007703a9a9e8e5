"""Every input type the Cog SDK offers, and an output object with every field type.

`tests/test_schema.py` compares this model's /openapi.json with
`tests/test_schema_all_types.json`. String annotations (`from __future__ import
annotations`) are on purpose: the schema must come from resolved type hints.
"""

from __future__ import annotations

from typing import Annotated, Any, Optional, Union

from cog import BaseModel, BaseRunner, File, Input, Opaque, Path, Secret


class Detail(BaseModel):
    label: str
    weight: float


class Output(BaseModel):
    text: str
    count: int
    score: float
    flag: bool
    file: Path
    tags: list[str]
    extra: dict
    detail: Detail
    note: Optional[str] = None
    maybe: int | None = None


class Runner(BaseRunner):
    def setup(self) -> None:
        print("all_types: setup")

    def run(
        self,
        prompt: str = Input(description="What to write about", min_length=1, max_length=50),
        image: Path = Input(description="An image"),
        api_key: Secret = Input(description="A key that must never be logged"),
        steps: int = Input(default=10, ge=1, le=100, description="How many steps"),
        guidance: float = Input(default=7, ge=0, le=20.5),
        flag: bool = False,
        document: File = Input(default=None, description="A file (deprecated type)"),
        scheduler: str = Input(default="ddim", choices=["ddim", "euler", "heun"]),
        size: int = Input(default=512, choices=[256, 512, 1024]),
        code: str = Input(default="ab12", regex=r"^[a-z]+[0-9]+$"),
        seed: Optional[int] = Input(default=None, description="Random seed"),
        mask: Path | None = None,
        tags: list[str] = Input(default=["a", "b"], description="Tags"),
        weights: list[float] = Input(default=[0.5], ge=0, le=1),
        images: list[Path] = Input(default=[], description="More images"),
        number_or_text: Union[int, str] = 1,
        flag_or_number: bool | int | float = Input(default=True),
        maybe_union: Union[str, list[str], None] = None,
        options: dict = Input(default={}, description="Free-form options"),
        payload: Annotated[dict, Opaque] = None,
        anything: Any = None,
        old: str = Input(default="x", deprecated=True),
        mime: Path = Input(default=None, accept="image/*"),
    ) -> Output:
        return Output(
            text=prompt,
            count=steps,
            score=guidance,
            flag=flag,
            file=image,
            tags=tags,
            extra=options,
            detail=Detail(label=scheduler, weight=0.5),
            note=None,
            maybe=seed,
        )
