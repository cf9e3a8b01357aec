"""The int8 quantisation recipes the export can try, and the rule that picks one by measurement.

An :class:`Int8Setting` names one onnxruntime ``quantize_static`` recipe (format, per-channel or
per-tensor weights, activation type, weight range, calibration method); :data:`INT8_SETTINGS` holds
the named ones ``export.int8_settings`` may list. The export quantises the model with each listed
setting, measures each (accuracy on the calibration split, images/s interleaved with fp32) and
:func:`choose_int8_setting` keeps the fastest one that loses at most ``max_miou_loss`` of mIoU, or,
when none does, the most accurate — a rule applied to what was measured on the user's data, not a
constant tuned for one dataset.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Int8Setting:
    """One onnxruntime static-quantisation recipe."""

    name: str
    quant_format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    activations: Literal["uint8", "int8"] = "uint8"  # int8: symmetric int8 activations (S8S8)
    reduce_range: bool = False  # 7-bit weights (for CPUs without VNNI)
    calibration: Literal["minmax", "percentile", "entropy"] = "minmax"

    def describe(self) -> str:
        """The recipe in words, for the parity report."""
        weights = "per-channel" if self.per_channel else "per-tensor"
        bits = "7-bit (reduce_range) " if self.reduce_range else ""
        acts = "uint8 activations" if self.activations == "uint8" else "symmetric int8 activations"
        return (f"onnxruntime quantize_static: {self.quant_format.upper()}, {weights} {bits}int8 weights, {acts}, "
                f"{'MinMax' if self.calibration == 'minmax' else self.calibration.capitalize()} calibration")

    def quantize_static_options(self) -> dict[str, Any]:
        """The keyword arguments of ``onnxruntime.quantization.quantize_static`` for this recipe."""
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType

        options: dict[str, Any] = {
            "quant_format": QuantFormat.QDQ if self.quant_format == "qdq" else QuantFormat.QOperator,
            "per_channel": self.per_channel, "reduce_range": self.reduce_range, "weight_type": QuantType.QInt8,
            "activation_type": QuantType.QUInt8 if self.activations == "uint8" else QuantType.QInt8,
            "calibrate_method": {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
                                 "entropy": CalibrationMethod.Entropy}[self.calibration],
        }
        if self.activations == "int8":
            options["extra_options"] = {"ActivationSymmetric": True}
        return options


INT8_SETTINGS: dict[str, Int8Setting] = {setting.name: setting for setting in (
    Int8Setting("per_channel"),
    Int8Setting("per_tensor", per_channel=False),
    Int8Setting("reduce_range", reduce_range=True),
    Int8Setting("qoperator", quant_format="qoperator"),
    Int8Setting("s8s8", activations="int8"),
    Int8Setting("percentile", calibration="percentile"),
    Int8Setting("entropy", calibration="entropy"),
)}
DEFAULT_INT8_SETTINGS = ("per_channel", "per_tensor")


def resolve_int8_settings(names: Sequence[str]) -> list[Int8Setting]:
    """The settings ``names`` (``export.int8_settings``) name; an unknown or repeated name is refused."""
    if not names:
        raise ValueError(f"export.int8_settings is empty: name at least one of {', '.join(INT8_SETTINGS)}")
    unknown = [name for name in names if name not in INT8_SETTINGS]
    if unknown:
        raise ValueError(f"export.int8_settings: unknown setting(s) {', '.join(map(repr, unknown))}; "
                         f"choose from {', '.join(INT8_SETTINGS)}")
    if len(set(names)) != len(names):
        raise ValueError(f"export.int8_settings lists a setting twice: {list(names)}")
    return [INT8_SETTINGS[name] for name in names]


def choose_int8_setting(measured: Mapping[str, Mapping[str, float]], *, max_miou_loss: float) -> tuple[str, str]:
    """The setting to keep among ``measured`` (name → ``{"speedup", "miou_loss"}``) and why, in words.

    The fastest setting whose mIoU loss (fp32 minus int8, a fraction) is at most ``max_miou_loss``;
    when none is, the one that loses least (ties: the faster).
    """
    if not measured:
        raise ValueError("no int8 setting was measured")
    within = {name: m for name, m in measured.items() if m["miou_loss"] <= max_miou_loss}
    if within:
        name = max(within, key=lambda n: (within[n]["speedup"], -within[n]["miou_loss"]))
        return name, (f"the fastest of the settings that lose <= {100 * max_miou_loss:g} point(s) of mIoU "
                      f"({', '.join(within)})")
    name = min(measured, key=lambda n: (measured[n]["miou_loss"], -measured[n]["speedup"]))
    return name, (f"no setting loses <= {100 * max_miou_loss:g} point(s) of mIoU; the most accurate of "
                  f"{', '.join(measured)}")
