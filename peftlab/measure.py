"""Measurements: parameter counts, peak memory, and the environment a run happened in."""

from __future__ import annotations

import math
import os
import platform
import resource
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("peftlab", "torch", "transformers", "peft", "bitsandbytes", "datasets", "evaluate", "accelerate", "rich")


def real_numel(param) -> int:
    """Logical parameter count; bitsandbytes 4-bit params store two values per byte in a flat tensor."""
    quant_state = getattr(param, "quant_state", None)
    if quant_state is not None and getattr(quant_state, "shape", None) is not None:
        return math.prod(quant_state.shape)
    return param.numel()


def count_parameters(model) -> dict:
    trainable = total = 0
    for param in model.parameters():
        n = real_numel(param)
        total += n
        trainable += n if param.requires_grad else 0
    return {"trainable_params": trainable, "total_params": total,
            "trainable_percent": 100.0 * trainable / max(total, 1)}


def stored_tensors(param):
    """The tensors a parameter is stored in: itself, and for a bitsandbytes weight its scales. The lookup codes
    (16 NF4/FP4 levels, 256 levels for double quantization) are constants of the format, left out as in the
    QLoRA paper's 4.127 bits/param."""
    yield param.data
    state = getattr(param, "quant_state", None)
    if state is not None:  # 4-bit: absmax per block of 64 (itself 8-bit with double quantization)
        yield state.absmax
        if state.nested:
            yield from (state.offset, state.state2.absmax)
    scb = getattr(param, "SCB", None)
    if scb is not None:  # 8-bit: one float scale per output row
        yield scb


def quantized_storage(model) -> dict | None:
    """Real storage of the quantized linear weights, in bits per logical parameter."""
    seen, n_params, n_bytes = set(), 0, 0
    for param in model.parameters():
        if param.dtype not in (torch.uint8, torch.int8):
            continue
        n_params += real_numel(param)
        for tensor in stored_tensors(param):
            if tensor.data_ptr() not in seen:  # count a shared tensor once
                seen.add(tensor.data_ptr())
                n_bytes += tensor.numel() * tensor.element_size()
    if not n_params:
        return None
    return {"quantized_params": n_params, "quantized_bytes": n_bytes, "bits_per_param": 8 * n_bytes / n_params}


def peak_memory(rss_bytes: int | None = None) -> dict:
    """Peak resident memory of this process (whole run), and peak CUDA allocation when on a GPU. `rss_bytes`: that
    peak as memory.PeakRSS kept it, in a process whose phases reset the kernel's peak (getrusage's then starts at
    the last reset)."""
    out = {"peak_rss_bytes": rss_bytes or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}  # Linux: KiB
    if torch.cuda.is_available():
        out["cuda_peak_allocated_bytes"] = torch.cuda.max_memory_allocated()
    return out


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        root = Path(__file__).resolve().parent.parent
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        # generated reports are outputs, not code: a comparison rewriting reports of an earlier run is not "dirty"
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                ":(exclude)reports"], capture_output=True, text=True, timeout=5).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict:
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        # other work on the machine slows every time figure: the 1-minute load average, here and at the run's end
        "load_average_at_start": os.getloadavg()[0],
        "gpu": gpu,
        "memory_total_bytes": os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"),
        "versions": versions,
        "peftlab_commit": _git_commit(),
    }


def disk_bytes(path: Path) -> int:
    """Size on disk of every file below a folder."""
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file())


def human_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1024
    return f"{n:.2f} GiB"
