"""The training settings (:class:`TrainConfig`), apart from the trainer so the data module can name them."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Every training setting; the CLI flags map 1:1 onto these fields."""

    seed: int = 0
    epochs: int = 18
    steps_per_epoch: int = 200
    batch_size: int = 8
    learning_rate: float = 2e-3
    warmup_steps: int = 150
    weight_decay: float = 1e-4
    clip_norm: float = 10.0
    rpn_batch: int = 256
    rpn_positive_fraction: float = 0.5
    rpn_positive_iou: float = 0.6
    rpn_negative_iou: float = 0.3
    train_proposals: int = 48
    jitter_per_gt: int = 2
    head_positive_iou: float = 0.5
    threads: int = 2
    out: str = "models/shipped/detector.keras"
    quiet: bool = False
    data: str | None = None
    val: str | None = None
    images: str | None = None
    image_size: tuple[int, int] | None = None

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch
