"""The training settings (:class:`TrainConfig`), apart from the trainer so the data module can name them."""

from __future__ import annotations

import dataclasses

from runtime.config import DEFAULT_BACKBONE


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
    #: Detector config fields (None: DetectorConfig's default); recorded in the saved model's
    #: config, so in its sidecar and the export manifest.
    num_proposals: int | None = None
    pool_size: tuple[int, int] | None = None
    max_detections: int | None = None
    score_threshold: float | None = None
    #: The feature extractor (models.backbones.BACKBONES) and a local weights file for it.
    backbone: str = DEFAULT_BACKBONE
    backbone_weights: str | None = None
    #: Anchor sizes (px at the model size) and aspect ratios (h/w); sizes None = chosen from the
    #: --data training boxes (models.anchor_coverage), ratios None = DetectorConfig's.
    anchor_sizes: tuple[float, ...] | None = None
    anchor_ratios: tuple[float, ...] | None = None

    @property
    def steps(self) -> int:
        return self.epochs * self.steps_per_epoch
