"""Twenty inputs of every common kind, each with constraints, and a trivial run.

Set against bench/models/trivial, it shows what validating (in the server) and
coercing (in the worker) a realistic input costs per prediction.
"""

from typing import Optional

from cog import BasePredictor, Input, Path, Secret


class Predictor(BasePredictor):
    def predict(
        self,
        prompt: str = Input(description="Prompt", min_length=1, max_length=2000),
        negative_prompt: str = Input(default="", max_length=2000),
        width: int = Input(default=1024, ge=64, le=2048),
        height: int = Input(default=1024, ge=64, le=2048),
        num_outputs: int = Input(default=1, ge=1, le=4),
        steps: int = Input(default=30, ge=1, le=500),
        guidance: float = Input(default=7.5, ge=0, le=50),
        strength: float = Input(default=0.8, ge=0, le=1),
        seed: Optional[int] = Input(default=None),
        scheduler: str = Input(default="K_EULER", choices=["DDIM", "K_EULER", "DPMSolver"]),
        refine: str = Input(default="none", choices=["none", "expert", "base"]),
        lora_scale: float = Input(default=0.6, ge=0, le=1),
        apply_watermark: bool = True,
        disable_safety_checker: bool = False,
        image: Optional[Path] = Input(default=None),
        mask: Optional[Path] = Input(default=None),
        high_noise_frac: float = Input(default=0.8, ge=0, le=1),
        output_format: str = Input(default="webp", choices=["webp", "png", "jpg"]),
        output_quality: int = Input(default=80, ge=0, le=100),
        api_token: Secret = Input(default=None),
    ) -> str:
        return "ok"
