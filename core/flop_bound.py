"""The bench's limit: the time an epoch would take if the device ran the model's GEMMs at its
peak rate for the row's mode, and the share of that bound a row reaches.

FLOP of one epoch. Per sample the step does five GEMMs (ParamLayout.gemm_shapes), each 2 FLOP
(multiply and add) per product term:
    forward   z1 = W1 x      2 * H * 784
              z2 = W2 a1     2 * 10 * H
    backward  dW2 = diff a1^T  2 * 10 * H
              da1 = W2^T diff  2 * 10 * H
              dW1 = dz1 x^T    2 * H * 784
    total     2H (784 * 2 + 10 * 3) = 2H * 1598 = H * 3196
The element-wise work is negligible and left out: the biases, sigmoid, sigmoid' and bias
gradients are about 9H FLOP a sample, the 10-wide output layer about 80, and the regularised SGD
update 4 FLOP a parameter a batch (4 * 794H / B a sample): under 0.5% of the GEMMs' count at
B = 800 and H >= 256, 1.3% at B = 100.

Peaks are dense rates from the vendor's data sheets, keyed by device name (PEAK_TABLE); for a GPU
not in the table the FP32 FMA rate is computed from SM count x clock x FP32 lanes per SM (CuPy's
device attributes) and the other rates are unknown (no percentage printed).
"""

from __future__ import annotations

from dataclasses import dataclass

from core.model import ParamLayout


def epoch_flop(samples: int, hidden: int) -> int:
    """The GEMM FLOP of one epoch of ``samples`` samples at ``hidden`` hidden units: 2 M N K of
    each of the step's GEMMs (ParamLayout.gemm_shapes) over all the samples."""
    return sum(2 * g.m * g.n * g.k for g in ParamLayout(hidden).gemm_shapes(samples))


#: FLOP per sample per hidden unit of one training step: 2 * (2 * INPUTS + 3 * CLASSES) = 3196
FLOP_PER_SAMPLE_PER_HIDDEN = epoch_flop(1, 1)


@dataclass(frozen=True)
class DevicePeaks:
    """Peak rates of one device, FLOP/s (None: unknown)."""

    device: str
    fp32: float | None  # FP32 FMA on the CUDA cores (SIMT)
    fp64: float | None  # FP64, on the tensor cores where the chip has them (DGEMM uses them)
    tf32: float | None  # TF32 tensor cores, dense
    source: str  # "table" or "computed from SMs x clock x lanes"

    def as_json(self) -> dict:
        return {"device": self.device, "source": self.source,
                **{f"{k}_tflops": (None if v is None else v / 1e12)
                   for k, v in (("fp32", self.fp32), ("fp64", self.fp64), ("tf32", self.tf32))}}


#: (substrings that must all be in the device name, case-insensitive; FP32 FMA, FP64 tensor,
#: TF32 tensor dense, TFLOP/s). First match wins: the specific H100 variants before SXM/HBM3.
PEAK_TABLE = (
    (("H100", "PCIe"), 51.2, 51.2, 378.0),
    (("H100", "NVL"), 60.0, 60.0, 418.0),
    (("H100", "HBM3"), 67.0, 67.0, 495.0),  # H100 SXM5 ("NVIDIA H100 80GB HBM3")
    (("H100", "SXM"), 67.0, 67.0, 495.0),
    (("H200",), 67.0, 67.0, 495.0),  # the H100 SXM chip with HBM3e: same rates
    (("A100",), 19.5, 19.5, 156.0),
)

#: FP32 FMA lanes per SM by compute capability, for GPUs not in PEAK_TABLE
FP32_LANES_PER_SM = {(7, 0): 64, (7, 5): 64, (8, 0): 64, (8, 6): 128, (8, 7): 128, (8, 9): 128,
                     (9, 0): 128, (10, 0): 128, (10, 3): 128, (12, 0): 128, (12, 1): 128}


def peaks_for(name: str, sms: int | None = None, clock_khz: int | None = None,
              capability: tuple[int, int] | None = None) -> DevicePeaks:
    """The table's peaks for device ``name``, else the FP32 rate computed from its SM count,
    clock (kHz) and compute capability where all are known, else every rate unknown."""
    lowered = name.lower()
    for keys, fp32, fp64, tf32 in PEAK_TABLE:
        if all(k.lower() in lowered for k in keys):
            return DevicePeaks(name, fp32 * 1e12, fp64 * 1e12, tf32 * 1e12, "table")
    lanes = FP32_LANES_PER_SM.get(capability) if capability else None
    if sms and clock_khz and lanes:
        return DevicePeaks(name, 2.0 * sms * clock_khz * 1e3 * lanes, None, None,
                           "computed from SMs x clock x lanes")
    return DevicePeaks(name, None, None, None, "unknown")


def device_peaks() -> DevicePeaks | None:
    """The peaks of GPU 0, found through CuPy (else PyTorch for the name alone); None without a
    GPU or either library."""
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"].decode()
        device = cupy.cuda.Device(0)
        attributes = device.attributes
        capability = device.compute_capability  # e.g. "90"
        return peaks_for(name, attributes.get("MultiProcessorCount"),
                         attributes.get("ClockRate"), (int(capability[:-1]), int(capability[-1])))
    except Exception:  # noqa: BLE001 - no CuPy, no GPU or no driver: try PyTorch, then give up
        pass
    try:
        import torch

        if torch.cuda.is_available():
            return peaks_for(torch.cuda.get_device_name(0))
    except Exception:  # noqa: BLE001 - no PyTorch or a broken CUDA: no GPU to bound
        pass
    return None


def bound_fields(mode: str, gemm: str | None, on_host: bool, samples: int, hidden: int,
                 ranks: int, epoch_s: float, peaks: DevicePeaks | None) -> dict:
    """The row's FLOP, bound and percentage (JSON fields). The bound of a P-rank row is the
    epoch's FLOP over P devices' peak. float32 (simt or tf32x3): the FP32 FMA rate; tf32x3 also
    the TF32x3 bound, 3 TF32 products per product; float64 and exact: the FP64 rate (exact's
    products cost more: this is the model's FLOP at the FP64 rate, a floor); host rows: none."""
    flop = epoch_flop(samples, hidden)
    fields = {"flop": flop, "peak": None, "bound_ms": None, "bound_pct": None}
    if on_host or peaks is None:
        return fields
    label, rate = ("FP32 FMA", peaks.fp32) if mode == "float32" else ("FP64", peaks.fp64)
    fields.update(_bound(label, rate, flop, ranks, epoch_s, ""))
    if gemm == "tf32x3":
        fields.update(_bound("3 x TF32", peaks.tf32, 3 * flop, ranks, epoch_s, "tf32x3_"))
    return fields


def _bound(label, rate, flop, ranks, epoch_s, prefix) -> dict:
    if rate is None:
        return {f"{prefix}peak": f"{label} unknown", f"{prefix}bound_ms": None,
                f"{prefix}bound_pct": None}
    bound_s = flop / (ranks * rate)
    return {f"{prefix}peak": f"{label} {rate / 1e12:g} TFLOP/s", f"{prefix}bound_ms": 1e3 * bound_s,
            f"{prefix}bound_pct": 100.0 * bound_s / epoch_s}


def fmt_bound(row: dict) -> str:
    """'  bound 0.61 ms  12.3% (FP32 FMA 67 TFLOP/s)', the TF32x3 bound after it for a tf32x3
    row, 'bound unknown (...)' where the peak is unknown, 'bound -' where no bound applies."""
    if not row.get("peak"):
        return "  bound -"
    text = "  bound " + _fmt_one(row, "")
    if row.get("tf32x3_peak"):
        text += ", TF32x3 " + _fmt_one(row, "tf32x3_")
    return text


def _fmt_one(row, prefix) -> str:
    if row.get(f"{prefix}bound_ms") is None:
        return f"unknown ({row[f'{prefix}peak']})"
    return (f"{row[f'{prefix}bound_ms']:.2f} ms {row[f'{prefix}bound_pct']:5.1f}% "
            f"({row[f'{prefix}peak']})")
