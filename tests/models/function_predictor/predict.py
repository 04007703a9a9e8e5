"""A plain-function predictor: no class, no setup."""

from cog import Input


def predict(
    text: str = Input(default="abc", description="Text to shout"),
    times: int = 2,
) -> str:
    print(f"shouting {text!r} {times} times")
    return text.upper() * times
