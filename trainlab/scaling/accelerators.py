"""Peak dense FLOP/s of common accelerators, with their sources: the budgets of `trainlab plan` and the
denominator of the loop's model FLOPs utilization (MFU) on a known GPU."""

from __future__ import annotations

import re
from dataclasses import dataclass

from trainlab.errors import UserError


@dataclass(frozen=True)
class Accelerator:
    name: str
    flops: float  # peak FLOP/s of one chip at `precision`, dense: the vendors' 2:4-sparsity figures are twice this
    precision: str
    source: str


# Peak dense FLOP/s per chip, from the vendors' datasheets. Where a sheet prints only the sparse figure
# (marked with an asterisk "with sparsity"), the dense one is half of it, and the precision says so.
ACCELERATORS = {a.name: a for a in (
    Accelerator("v100", 125e12, "fp16 tensor core, SXM2", "NVIDIA Tesla V100 datasheet"),
    Accelerator("t4", 65e12, "fp16 tensor core (mixed precision)", "NVIDIA T4 datasheet"),
    Accelerator("a10", 125e12, "bf16 tensor core (250 with sparsity)", "NVIDIA A10 datasheet"),
    Accelerator("a100", 312e12, "bf16 tensor core (624 with sparsity)", "NVIDIA A100 datasheet"),
    Accelerator("l4", 121e12, "bf16 tensor core (242 with sparsity)", "NVIDIA L4 datasheet"),
    Accelerator("rtx-4090", 165.2e12, "bf16 tensor core, fp32 accumulate (330.4 with sparsity)",
                "NVIDIA Ada Lovelace architecture whitepaper"),
    Accelerator("h100", 989e12, "bf16 tensor core, SXM (1979 with sparsity)", "NVIDIA H100 datasheet"),
    Accelerator("h100-pcie", 756e12, "bf16 tensor core, PCIe (1513 with sparsity)", "NVIDIA H100 datasheet"),
    Accelerator("l40s", 362e12, "bf16 tensor core (733 with sparsity)", "NVIDIA L40S datasheet"),
    Accelerator("h200", 989e12, "bf16 tensor core, SXM (1979 with sparsity)", "NVIDIA H200 datasheet"),
    Accelerator("mi250x", 383e12, "bf16 matrix", "AMD Instinct MI250X datasheet"),
    Accelerator("mi300x", 1307e12, "bf16 matrix (2615 with sparsity)", "AMD Instinct MI300X datasheet"),
    Accelerator("tpu-v4", 275e12, "bf16, per chip", "Google Cloud TPU v4 documentation"),
    Accelerator("tpu-v5e", 197e12, "bf16, per chip", "Google Cloud TPU v5e documentation"),
    Accelerator("tpu-v5p", 459e12, "bf16, per chip", "Google Cloud TPU v5p documentation"),
)}


def _key(name: str) -> str:
    """'RTX 4090', 'rtx4090' and 'rtx-4090' are one accelerator."""
    return re.sub(r"[^a-z0-9]", "", name.lower())


def accelerator(name: str) -> Accelerator:
    found = {_key(a.name): a for a in ACCELERATORS.values()}.get(_key(name))
    if found is None:
        raise UserError(f"--gpu expects one of {', '.join(ACCELERATORS)}; got {name!r}",
                        "for another accelerator give its dense peak FLOP/s at your precision: --peak-flops 300e12")
    return found




def for_device(device_name: str) -> Accelerator | None:
    """The accelerator a CUDA device name ("NVIDIA H100 80GB HBM3", "NVIDIA L40S", "Tesla V100-SXM2-16GB") is,
    or None. A name matches where it stands as a whole word ("A10G" is not an A10); the longest match wins
    ("H100 PCIe" over "H100")."""
    name = device_name.lower()
    found = [a for a in ACCELERATORS.values()
             if re.search(r"(?<![a-z0-9])" + re.escape(a.name).replace(r"\-", "[ -]?") + r"(?![a-z0-9])", name)]
    return max(found, key=lambda a: len(a.name), default=None)
