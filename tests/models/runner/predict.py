"""The current SDK shape: a BaseRunner with setup() and run()."""

from cog import BaseRunner, Input


class Runner(BaseRunner):
    def setup(self) -> None:
        self.prefix = "runner"

    def run(self, name: str = Input(default="default-name", description="A name")) -> str:
        print(f"running for {name}")
        return f"{self.prefix}:{name}"
