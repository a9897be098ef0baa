"""Auto-discovery of the devices this process can reach, merged with the operator's descriptors.

Discovery only ever says what it can observe. It never claims a device is attested: attestation is
an operator's statement (made in the descriptor YAML after verifying the platform), so a discovered
device is ``attested: false`` until someone vouches for it — the fail-closed default for PHI.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from sealinfer.runtime.scheduler.devices import DeviceDescriptor, merge_devices

# Execution providers that are not compute devices of their own.
_NOT_DEVICES = {"AzureExecutionProvider"}
_PROVIDER_KIND = {
    "CPUExecutionProvider": "cpu",
    "DnnlExecutionProvider": "cpu",
    "XnnpackExecutionProvider": "cpu",
    "CUDAExecutionProvider": "gpu",
    "TensorrtExecutionProvider": "gpu",
    "NvTensorRTRTXExecutionProvider": "gpu",
    "ROCMExecutionProvider": "gpu",
    "MIGraphXExecutionProvider": "gpu",
    "DmlExecutionProvider": "gpu",
    "WebGpuExecutionProvider": "gpu",
    "OpenVINOExecutionProvider": "cpu",
    "QNNExecutionProvider": "npu",
    "VitisAIExecutionProvider": "npu",
    "CoreMLExecutionProvider": "npu",
}
_CONFIDENTIAL_FLAGS = {"sev", "sev_es", "sev_snp", "tdx_guest"}
_CONFIDENTIAL_DEVICES = ("/dev/sev-guest", "/dev/tdx_guest", "/dev/tdx-guest")


def available_providers() -> set[str]:
    import onnxruntime as ort

    return set(ort.get_available_providers())


def cpu_info(cpuinfo_path: str = "/proc/cpuinfo") -> dict[str, Any]:
    """CPU model, logical cores and instruction-set flags from the OS."""
    model, flags, mhz = "unknown", set(), 0.0
    try:
        text = Path(cpuinfo_path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model == "unknown":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
        elif key == "cpu MHz" and not mhz:
            try:
                mhz = float(value)
            except ValueError:
                pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return {"model": model, "cores": cores, "flags": flags, "mhz": mhz or 2000.0}


def _cpu_flops_per_cycle(flags: set[str]) -> int:
    """fp32 FLOPs per core per cycle: vector lanes x 2 (FMA) x 2 FMA units, a nominal peak."""
    if "avx512f" in flags:
        return 64
    if "avx2" in flags and "fma" in flags:
        return 32
    if "avx" in flags:
        return 16
    return 8


def _memory_bytes() -> int:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or unsupported platform: fall back to sysconf
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def _cpu_descriptor(info: dict[str, Any]) -> DeviceDescriptor:
    flags = info["flags"]
    peak = info["cores"] * info["mhz"] * 1e6 * _cpu_flops_per_cycle(flags)
    precisions = ["fp32", "fp64", "int8"]
    if "f16c" in flags or "avx512_fp16" in flags:
        precisions.append("fp16")
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        precisions.append("bf16")
    confidential = bool(flags & _CONFIDENTIAL_FLAGS) or any(os.path.exists(p) for p in _CONFIDENTIAL_DEVICES)
    return DeviceDescriptor(
        id="cpu0",
        kind="cpu",
        provider="CPUExecutionProvider",
        peak_flops={"fp32": peak, "fp64": peak / 2, "int8": peak * 2, **({"fp16": peak} if "fp16" in precisions
                                                                         else {})},
        memory_bandwidth=2e10,  # nominal DDR figure; calibration corrects it per model
        memory_bytes=_memory_bytes(),
        precisions=tuple(precisions),
        location="on_prem",
        attested=False,
        confidential=confidential,
        power_w=15.0 * info["cores"],
        topology={"model": info["model"], "cores": info["cores"], "source": "discovered"},
        intra_op_threads=info["cores"],
        overhead_s=2e-5,
    )


def _nvml_devices() -> list[DeviceDescriptor]:
    """NVIDIA GPUs via NVML, only when nvidia-ml-py is installed and finds a GPU."""
    try:
        import pynvml  # type: ignore[import-not-found]
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver: NVML present but no GPU to describe
        return []
    out = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle).total
            try:
                power = pynvml.nvmlDeviceGetPowerManagementLimit(handle) / 1000.0
            except Exception:
                power = 300.0
            out.append(DeviceDescriptor(
                id=f"gpu{index}", kind="gpu", provider="CUDAExecutionProvider",
                provider_options={"device_id": str(index)},
                peak_flops={"fp32": 1e13, "fp16": 5e13}, memory_bandwidth=5e11, memory_bytes=int(memory),
                precisions=("fp32", "fp16"), location="on_prem", attested=False, confidential=False,
                power_w=power, topology={"name": str(name), "index": index, "source": "nvml"}, overhead_s=5e-5,
            ))
    finally:
        pynvml.nvmlShutdown()
    return out


def _ep_devices() -> list[DeviceDescriptor]:
    """Accelerators onnxruntime itself reports (``get_ep_devices``) or, on older builds, its providers."""
    import onnxruntime as ort

    out: list[DeviceDescriptor] = []
    if hasattr(ort, "get_ep_devices"):
        counts: dict[str, int] = {}
        for ep_device in ort.get_ep_devices():
            name = ep_device.ep_name
            if name in _NOT_DEVICES or name == "CPUExecutionProvider":
                continue
            kind = str(ep_device.device.type.name).lower()
            kind = kind if kind in ("gpu", "npu") else _PROVIDER_KIND.get(name, "cpu")
            index = counts.get(kind, 0)
            counts[kind] = index + 1
            out.append(_accelerator(f"{kind}{index}-{name.removesuffix('ExecutionProvider').lower()}", kind, name,
                                    {"vendor": ep_device.device.vendor, "source": "ort.get_ep_devices"}))
    else:  # pragma: no cover - onnxruntime < 1.22
        for name in ort.get_available_providers():
            if name in _NOT_DEVICES or _PROVIDER_KIND.get(name, "cpu") == "cpu":
                continue
            kind = _PROVIDER_KIND[name]
            out.append(_accelerator(f"{kind}-{name.removesuffix('ExecutionProvider').lower()}", kind, name,
                                    {"source": "ort.get_available_providers"}))
    return out


def _accelerator(device_id: str, kind: str, provider: str, topology: dict[str, Any]) -> DeviceDescriptor:
    # Nominal figures: the operator's YAML states real ones, and calibration corrects both.
    return DeviceDescriptor(
        id=device_id, kind=kind, provider=provider, peak_flops={"fp32": 1e13, "fp16": 2e13},
        memory_bandwidth=3e11, memory_bytes=8 << 30, precisions=("fp32", "fp16"), location="on_prem",
        attested=False, confidential=False, power_w=150.0, topology=topology, overhead_s=5e-5,
    )


def discover_devices(extra: Iterable[DeviceDescriptor] | None = None) -> list[DeviceDescriptor]:
    """Devices found on this host, merged by id with ``extra`` (the operator's descriptors win)."""
    discovered = [_cpu_descriptor(cpu_info()), *_ep_devices()]
    known = {d.provider for d in discovered}
    discovered += [d for d in _nvml_devices() if d.provider not in known]
    return merge_devices(discovered, extra or [])
