"""Device descriptors and the YAML "compute description language" that declares them.

A device is described, not guessed: the operator states what a device is (kind, execution provider,
peak FLOPS per precision, memory, location, attestation) and the scheduler trusts nothing else. Parse
errors name the file and line, so a typo in a descriptor is found before a PHI request is placed.

Example file::

    devices:
      - id: gpu0
        kind: gpu
        provider: CUDAExecutionProvider
        provider_options: {device_id: 0}
        peak_flops: {fp32: 19.5 TFLOPS, fp16: 312 TFLOPS}
        memory_bandwidth: 1.5 TB/s
        memory_bytes: 40 GiB
        precisions: [fp32, fp16]
        location: on_prem
        attested: true
        confidential: true
        power_w: 400
        topology: {numa_node: 0, pci_bus: "0000:3b:00.0"}
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import yaml

from sealinfer.runtime.errors import DeviceDescriptorError

KINDS = ("cpu", "gpu", "npu")
LOCATIONS = ("on_prem", "cloud")
PRECISIONS = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")

# Physical sanity bounds: a number outside them is a typo (units confused), not a device.
_MAX_FLOPS = 1e19  # 10 exaFLOPS: beyond any single accelerator
_MAX_BANDWIDTH = 1e14  # 100 TB/s
_MAX_MEMORY = 1 << 50  # 1 PiB
_MAX_POWER_W = 1e5
_MAX_THREADS = 4096

_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")

_SUFFIX = {
    "": 1.0, "k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12, "p": 1e15, "e": 1e18,
    "ki": 2.0**10, "mi": 2.0**20, "gi": 2.0**30, "ti": 2.0**40, "pi": 2.0**50,
}
_QUANTITY_RE = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([kKmMgGtTpPeE]i?)?\s*(\S*)\s*$")
_UNITS = {
    "flops": ("flops", "flop/s"),
    "bandwidth": ("b/s", "bps"),
    "bytes": ("b", "bytes", "byte"),
}


@dataclass(frozen=True)
class DeviceDescriptor:
    """One schedulable device. Units: FLOP/s, bytes/s, bytes, watts."""

    id: str
    kind: str
    provider: str
    provider_options: dict[str, str] = field(default_factory=dict, hash=False)
    peak_flops: dict[str, float] = field(default_factory=dict, hash=False)
    memory_bandwidth: float = 0.0
    memory_bytes: int = 0
    precisions: tuple[str, ...] = ("fp32",)
    location: str = "on_prem"
    attested: bool = False
    confidential: bool = False
    power_w: float = 0.0
    topology: dict[str, Any] = field(default_factory=dict, hash=False)
    intra_op_threads: int | None = None
    # Fixed cost of one run (kernel launch, Python/ORT call overhead) added to the roofline.
    overhead_s: float = 0.0

    def flops_for(self, precision: str) -> float:
        """Peak FLOP/s at ``precision``; fp32 peak when the precision has no figure of its own."""
        return self.peak_flops.get(precision) or self.peak_flops.get("fp32") or 0.0

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else (
                dict(value) if isinstance(value, dict) else value
            )
        return out


_FIELDS = {f.name for f in fields(DeviceDescriptor)}
_REQUIRED = ("id", "kind", "provider", "peak_flops", "memory_bandwidth", "memory_bytes")


def parse_quantity(value: object, unit: str, *, where: str = "") -> float:
    """A number, or a string like ``"19.5 TFLOPS"``, ``"1.5 TB/s"``, ``"40 GiB"``."""
    if isinstance(value, bool):
        raise DeviceDescriptorError(f"{where}: expected a {unit} quantity, got a boolean.",
                                    hint="Write a number such as 1.5e12 or a string such as '1.5 T'.")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        match = _QUANTITY_RE.match(value)
        if not match:
            raise DeviceDescriptorError(f"{where}: cannot read {value!r} as a {unit} quantity.",
                                        hint="Use a number, or a number with an SI/IEC prefix, e.g. '40 GiB'.")
        number_text, prefix, unit_text = match.groups()
        if unit_text and unit_text.lower() not in _UNITS[unit]:
            raise DeviceDescriptorError(
                f"{where}: unit {unit_text!r} is not a {unit} unit.",
                hint=f"Use one of {', '.join(_UNITS[unit])} (with a prefix such as G, T, Gi).",
            )
        number = float(number_text) * _SUFFIX[(prefix or "").lower()]
    else:
        raise DeviceDescriptorError(f"{where}: expected a {unit} quantity, got {type(value).__name__}.",
                                    hint="Write a number or a string such as '40 GiB'.")
    if not math.isfinite(number) or number < 0:
        raise DeviceDescriptorError(f"{where}: {value!r} is not a finite, non-negative number.",
                                    hint="Give the device's real figure.")
    return number


class _LineLoader(yaml.SafeLoader):
    """SafeLoader that remembers the line of every mapping key and refuses duplicate keys."""


class _Lines(dict):
    line: int = 0
    key_lines: dict[str, int]


def _construct_mapping(loader: _LineLoader, node: yaml.MappingNode, deep: bool = False) -> _Lines:
    out = _Lines()
    out.line = node.start_mark.line + 1
    out.key_lines = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in out:
            raise DeviceDescriptorError(
                f"{loader.name}:{key_node.start_mark.line + 1}: key {key!r} appears twice in one mapping.",
                hint="Keep one of them.",
            )
        out[key] = loader.construct_object(value_node, deep=True)
        out.key_lines[str(key)] = key_node.start_mark.line + 1
    return out


_LineLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _where(source: str, entry: Mapping[str, Any], key: str | None = None) -> str:
    lines = getattr(entry, "key_lines", {})
    line = lines.get(key) if key else None
    return f"{source}:{line or getattr(entry, 'line', '?')}" + (f" ({key})" if key else "")


def _validate_entry(entry: Mapping[str, Any], source: str, base: DeviceDescriptor | None) -> DeviceDescriptor:
    unknown = sorted(set(map(str, entry)) - _FIELDS)
    if unknown:
        raise DeviceDescriptorError(
            f"{_where(source, entry, unknown[0])}: unknown key(s) {', '.join(unknown)}.",
            hint=f"Allowed keys: {', '.join(sorted(_FIELDS))}.",
        )
    if base is None:
        missing = [k for k in _REQUIRED if k not in entry]
        if missing:
            raise DeviceDescriptorError(
                f"{_where(source, entry)}: device {entry.get('id', '?')!r} lacks {', '.join(missing)}.",
                hint="A device that auto-discovery does not know must be described in full.",
            )
    values: dict[str, Any] = {}
    for key, raw in entry.items():
        values[key] = _check_field(str(key), raw, _where(source, entry, str(key)))
    if base is not None:
        return replace(base, **values)
    device = DeviceDescriptor(**values)
    return device


def _check_field(key: str, raw: Any, where: str) -> Any:
    def bad(what: str, hint: str) -> DeviceDescriptorError:
        return DeviceDescriptorError(f"{where}: {what}", hint=hint)

    if key in ("id", "provider"):
        if not isinstance(raw, str) or not raw.strip():
            raise bad(f"{key} must be a non-empty string.", "Quote it if YAML reads it as something else.")
        if key == "id" and not _ID_RE.match(raw):
            raise bad(f"id {raw!r} has characters outside [A-Za-z0-9_.:-] or is too long.", "Rename it.")
        return raw
    if key == "kind":
        if raw not in KINDS:
            raise bad(f"kind {raw!r} is not one of {', '.join(KINDS)}.", "Pick the closest kind.")
        return raw
    if key == "location":
        if raw not in LOCATIONS:
            raise bad(f"location {raw!r} is not one of {', '.join(LOCATIONS)}.", "Say where the device runs.")
        return raw
    if key in ("attested", "confidential"):
        if not isinstance(raw, bool):
            raise bad(f"{key} must be true or false, got {raw!r}.", "Write true or false without quotes.")
        return raw
    if key == "provider_options":
        if not isinstance(raw, Mapping):
            raise bad("provider_options must be a mapping.", "Write e.g. {device_id: 0}.")
        return {str(k): str(v) for k, v in raw.items()}
    if key == "topology":
        if not isinstance(raw, Mapping):
            raise bad("topology must be a mapping.", "Write e.g. {numa_node: 0}.")
        return dict(raw)
    if key == "precisions":
        if not isinstance(raw, list) or not raw or not all(isinstance(p, str) for p in raw):
            raise bad("precisions must be a non-empty list of names.", f"Use names from {', '.join(PRECISIONS)}.")
        unknown = [p for p in raw if p not in PRECISIONS]
        if unknown:
            raise bad(f"unknown precision(s) {', '.join(unknown)}.", f"Use names from {', '.join(PRECISIONS)}.")
        return tuple(dict.fromkeys(raw))
    if key == "peak_flops":
        if not isinstance(raw, Mapping) or not raw:
            raise bad("peak_flops must map precision to FLOP/s, e.g. {fp32: 1.2 TFLOPS}.", "Add a figure.")
        out = {}
        for precision, value in raw.items():
            if precision not in PRECISIONS:
                raise bad(f"peak_flops names unknown precision {precision!r}.",
                          f"Use names from {', '.join(PRECISIONS)}.")
            number = parse_quantity(value, "flops", where=where)
            if not 0 < number <= _MAX_FLOPS:
                raise bad(f"peak_flops[{precision}] = {value!r} is impossible (must be > 0 and <= 1e19).",
                          "Check the unit: FLOP/s, not TFLOP/s.")
            out[str(precision)] = number
        return out
    if key == "memory_bandwidth":
        number = parse_quantity(raw, "bandwidth", where=where)
        if not 0 < number <= _MAX_BANDWIDTH:
            raise bad(f"memory_bandwidth {raw!r} is impossible (must be > 0 and <= 100 TB/s).",
                      "Give bytes per second, e.g. '900 GB/s'.")
        return number
    if key == "memory_bytes":
        number = parse_quantity(raw, "bytes", where=where)
        if not 0 < number <= _MAX_MEMORY:
            raise bad(f"memory_bytes {raw!r} is impossible (must be > 0 and <= 1 PiB).", "Give e.g. '40 GiB'.")
        return int(number)
    if key == "power_w":
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= _MAX_POWER_W:
            raise bad(f"power_w {raw!r} is impossible (0 to 100000 W).", "Give the board power in watts.")
        return float(raw)
    if key == "overhead_s":
        if isinstance(raw, bool) or not isinstance(raw, int | float) or not 0 <= raw <= 10:
            raise bad(f"overhead_s {raw!r} is impossible (0 to 10 s).", "Give the per-run fixed cost in seconds.")
        return float(raw)
    if key == "intra_op_threads":
        if raw is None:
            return None
        if isinstance(raw, bool) or not isinstance(raw, int) or not 1 <= raw <= _MAX_THREADS:
            raise bad(f"intra_op_threads {raw!r} must be an integer from 1 to {_MAX_THREADS}.",
                      "Give the number of threads this device's sessions may use.")
        return raw
    raise bad(f"unknown key {key!r}.", "Remove it.")  # pragma: no cover - filtered earlier


def _check_consistency(device: DeviceDescriptor, where: str) -> None:
    missing = [p for p in device.peak_flops if p not in device.precisions]
    if missing:
        raise DeviceDescriptorError(
            f"{where}: device {device.id!r} gives peak_flops for {', '.join(missing)} "
            f"but its precisions are {', '.join(device.precisions)}.",
            hint="List every precision the device supports under precisions.",
        )
    if device.kind != "cpu" and device.provider == "CPUExecutionProvider":
        raise DeviceDescriptorError(
            f"{where}: device {device.id!r} is a {device.kind} but uses CPUExecutionProvider.",
            hint="Name the accelerator's execution provider, e.g. CUDAExecutionProvider.",
        )


def parse_devices(text: str, source: str = "<devices>",
                  base: Mapping[str, DeviceDescriptor] | None = None) -> list[DeviceDescriptor]:
    """Parse descriptor YAML. An entry whose id is in ``base`` may be partial: it overrides that device."""
    try:
        loader = _LineLoader(text)
        loader.name = source
        try:
            doc = loader.get_single_data()
        finally:
            loader.dispose()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise DeviceDescriptorError(f"{source}{line}: not valid YAML ({getattr(exc, 'problem', exc)}).",
                                    hint="Fix the YAML syntax.") from exc
    if isinstance(doc, Mapping):
        extra = sorted(set(map(str, doc)) - {"devices"})
        if extra:
            raise DeviceDescriptorError(f"{_where(source, doc, extra[0])}: unknown top-level key(s) "
                                        f"{', '.join(extra)}.", hint="The file holds one key: devices.")
        entries = doc.get("devices")
    else:
        entries = doc
    if not isinstance(entries, list) or not entries:
        raise DeviceDescriptorError(f"{source}: expected a non-empty list under 'devices'.",
                                    hint="Write 'devices:' followed by '- id: ...' entries.")
    base = base or {}
    devices: list[DeviceDescriptor] = []
    seen: dict[str, str] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise DeviceDescriptorError(f"{source}: every device entry must be a mapping, got {entry!r}.",
                                        hint="Start each entry with '- id: ...'.")
        if "id" not in entry:
            raise DeviceDescriptorError(f"{_where(source, entry)}: device entry has no id.", hint="Add an id.")
        where = _where(source, entry)
        device_id = _check_field("id", entry["id"], _where(source, entry, "id"))
        if device_id in seen:
            raise DeviceDescriptorError(f"{where}: duplicate device id {device_id!r} (first at {seen[device_id]}).",
                                        hint="Give every device its own id.")
        seen[device_id] = where
        device = _validate_entry(entry, source, base.get(device_id))
        _check_consistency(device, where)
        devices.append(device)
    return devices


def load_devices(path: str | Path, base: Mapping[str, DeviceDescriptor] | None = None) -> list[DeviceDescriptor]:
    """Read a descriptor file (see module docstring). Errors name the file and line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DeviceDescriptorError(f"device file {path} does not exist.",
                                    hint="Check the --devices path.") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceDescriptorError(f"cannot read device file {path}: {exc}.",
                                    hint="Give a readable UTF-8 YAML file.") from exc
    return parse_devices(text, str(path), base)


def merge_devices(discovered: Iterable[DeviceDescriptor], extra: Iterable[DeviceDescriptor]) -> list[DeviceDescriptor]:
    """Merge by id: the operator's descriptors replace discovered ones; order is discovered, then new."""
    merged = {d.id: d for d in discovered}
    for device in extra:
        merged[device.id] = device
    return list(merged.values())
