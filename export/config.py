"""ExportConfig: what one ``python -m export`` run builds (its CLI flags map 1:1 onto the fields)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from export.formats import ARTIFACTS, PRECISIONS, ArtifactSpec
from runtime.errors import RoiedgeError
from runtime.limits import bad_number
from runtime.manifest import FORMATS, MODELS

SCHEMA_VERSION = 1
DEFAULT_CALIBRATION_IMAGES = 300
DEFAULT_GOLDEN_SAMPLES = 4
#: Seed and split of the procedural calibration images (split 2: neither train (0) nor eval (1)).
CALIBRATION_SEED = 20261126
CALIBRATION_SPLIT = 2
#: Golden images: another split, so goldens are never calibration images.
GOLDEN_SPLIT = 3


def comma_names(text: str) -> tuple[str, ...]:
    """A CLI list flag's value: ``"a, b,,c"`` -> ``("a", "b", "c")``."""
    return tuple(v.strip() for v in text.split(",") if v.strip())


def add_output_arguments(parser: Any, precisions: Sequence[str], formats: Sequence[str]) -> None:
    """The flags every ``python -m export`` path shares: --out, --formats, --precisions and
    --no-progress (``parser`` an argparse parser; ``precisions``/``formats`` the path's choices)."""
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="artifacts directory to write; an existing one is replaced only when the export "
        "succeeds",
    )
    parser.add_argument(
        "--formats",
        type=comma_names,
        default=None,
        help=f"comma-separated file formats, of {','.join(formats)} (default: all)",
    )
    parser.add_argument(
        "--precisions",
        type=comma_names,
        default=None,
        help=f"comma-separated precisions, of {','.join(precisions)} (default: all; int8 is "
        "full-integer with float input/output"
        + (", int8_io int8 in and out for the Edge TPU)" if "int8_io" in precisions else ")"),
    )
    parser.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bars"
    )


class ExportInputError(RoiedgeError):
    """A bad export option or input file (exit 2)."""


class ExportCheckError(Exception):
    """An artifact failed a check (builtin ops, loop-free ONNX, golden accuracy): exit 1."""


def _default_model() -> Path:
    return Path(__file__).resolve().parent.parent / "models" / "shipped" / "detector.keras"


@dataclasses.dataclass(frozen=True)
class ExportConfig:
    """One export run.

    ``calibration`` None means procedural images from ``models.data`` at the detector's size;
    otherwise a folder of .jpg/.png images or a COCO instances JSON, of which ``golden_samples``
    images are held back as golden samples. ``calibration_images`` None means
    DEFAULT_CALIBRATION_IMAGES procedural images, or every remaining image of the user's; fewer
    images than asked is refused. ``models``/``formats``/``precisions`` select rows of
    :data:`export.formats.ARTIFACTS` (None = all); every value named explicitly must select at
    least one row, so a request is refused rather than silently dropped.
    """

    out: Path
    model: Path = dataclasses.field(default_factory=_default_model)
    calibration: Path | None = None
    calibration_images: int | None = None
    golden_samples: int = DEFAULT_GOLDEN_SAMPLES
    models: tuple[str, ...] | None = None
    formats: tuple[str, ...] | None = None
    precisions: tuple[str, ...] | None = None
    target_drop: float = 0.5
    val_images: int = 200
    progress: bool = True
    schema_version: int = SCHEMA_VERSION

    def __post_init__(self) -> None:
        for field, allowed in (
            ("models", MODELS),
            ("formats", FORMATS),
            ("precisions", PRECISIONS),
        ):
            values = getattr(self, field)
            if values is None:
                continue
            if not values:
                raise ExportInputError(f"--{field} is empty; expected some of {', '.join(allowed)}")
            unknown = [v for v in values if v not in allowed]
            if unknown:
                raise ExportInputError(
                    f"--{field} has unknown value(s) {', '.join(unknown)}; "
                    f"expected some of {', '.join(allowed)}"
                )
        for flag, value, low, high, low_open, limit_name in (
            ("--calibration-images", self.calibration_images, 1, None, False, "flag_images"),
            ("--golden-samples", self.golden_samples, 1, None, False, "flag_images"),
            ("--val-images", self.val_images, 1, None, False, "flag_images"),
            ("--target-drop", self.target_drop, 0, 100, True, None),  # mAP@.5:.95 points
        ):
            bad = value is not None and bad_number(
                flag, value, low, high, low_open=low_open, limit_name=limit_name
            )
            if bad:
                raise ExportInputError(bad)

    def selected(self) -> tuple[ArtifactSpec, ...]:
        """The table rows this run builds; refuses a requested value that selects nothing."""
        models = self.models or MODELS
        formats = self.formats or FORMATS
        precisions = self.precisions or PRECISIONS
        rows = tuple(
            a
            for a in ARTIFACTS
            if a.model in models and a.format in formats and a.precision in precisions
        )
        for field, attr in (
            ("models", "model"),
            ("formats", "format"),
            ("precisions", "precision"),
        ):
            for value in getattr(self, field) or ():
                if not any(getattr(a, attr) == value for a in rows):
                    available = sorted(a.name for a in ARTIFACTS if getattr(a, attr) == value)
                    raise ExportInputError(
                        f"--{field} {value} selects no artifact together with the other options "
                        f"(models={','.join(models)} formats={','.join(formats)} "
                        f"precisions={','.join(precisions)}); {value} exists only as: "
                        f"{', '.join(available)}"
                    )
        return rows
