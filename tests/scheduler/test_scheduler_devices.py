"""Device descriptor YAML: parsing with units, file+line errors, overrides, and real discovery."""

from __future__ import annotations

import os

import pytest

from sealinfer.runtime.errors import DeviceDescriptorError
from sealinfer.runtime.scheduler.devices import load_devices, merge_devices, parse_devices
from sealinfer.runtime.scheduler.discovery import cpu_info, discover_devices

GOOD = """\
devices:
  - id: gpu0
    kind: gpu
    provider: CUDAExecutionProvider
    peak_flops: {fp32: 19.5 TFLOPS, fp16: 312e12}
    memory_bandwidth: 1.5 TB/s
    memory_bytes: 40 GiB
    precisions: [fp32, fp16]
"""


def test_units_and_defaults_are_read(devices_file):
    (gpu,) = parse_devices(GOOD)
    assert gpu.peak_flops == {"fp32": 19.5e12, "fp16": 312e12}
    assert gpu.memory_bandwidth == 1.5e12
    assert gpu.memory_bytes == 40 * 2**30
    # Unstated security properties default to the fail-closed values.
    assert (gpu.attested, gpu.confidential, gpu.location) == (False, False, "on_prem")
    devices = load_devices(devices_file)
    assert [d.id for d in devices] == ["gpu0", "npu0", "cloud-gpu", "cpu-1t", "cpu-2t"]
    assert {d.id: d.intra_op_threads for d in devices}["cpu-2t"] == 2


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        (GOOD + "    colour: red\n", ":9 (colour): unknown key(s) colour"),
        (GOOD.replace("1.5 TB/s", "-3"), "not a finite, non-negative"),
        (GOOD.replace("40 GiB", "0"), "memory_bytes 0 is impossible"),
        (GOOD.replace("19.5 TFLOPS", "1e30"), "is impossible"),
        (GOOD.replace("1.5 TB/s", "1.5 TFLOPS"), "is not a bandwidth unit"),
        (GOOD.replace("kind: gpu", "kind: quantum"), ":3 (kind): kind 'quantum' is not one of"),
        (GOOD.replace("[fp32, fp16]", "[fp32, fp128]"), "unknown precision(s) fp128"),
        (GOOD.replace("[fp32, fp16]", "[fp32]"), "gives peak_flops for fp16"),
        (GOOD + GOOD.replace("devices:\n", ""), "duplicate device id 'gpu0'"),
        (GOOD.replace("    precisions", "    kind: npu\n    precisions"), ":8: key 'kind' appears twice"),
        (GOOD.replace("    memory_bytes: 40 GiB\n", ""), "lacks memory_bytes"),
        ("devices: [\n", "not valid YAML"),
        ("devices: []\n", "non-empty list"),
        (GOOD.replace("CUDAExecutionProvider", "CPUExecutionProvider"), "uses CPUExecutionProvider"),
        (GOOD + "    attested: 'yes'\n", "attested must be true or false"),
        (GOOD + "    intra_op_threads: 0\n", "intra_op_threads 0 must be an integer"),
        ("hosts: []\ndevices: []\n", "unknown top-level key(s) hosts"),
    ],
)
def test_bad_descriptors_name_the_problem_and_line(text, fragment):
    with pytest.raises(DeviceDescriptorError) as info:
        parse_devices(text, "ops.yaml")
    assert fragment in str(info.value)
    assert str(info.value).startswith("ops.yaml")
    assert info.value.hint


def test_missing_file_is_a_typed_error(tmp_path):
    with pytest.raises(DeviceDescriptorError, match="does not exist"):
        load_devices(tmp_path / "nope.yaml")


def test_discovery_describes_this_host_and_never_claims_attestation():
    devices = discover_devices()
    cpu = next(d for d in devices if d.kind == "cpu")
    info = cpu_info()
    assert cpu.provider == "CPUExecutionProvider"
    assert cpu.intra_op_threads == info["cores"] == len(os.sched_getaffinity(0))
    assert cpu.memory_bytes > 2**28 and cpu.flops_for("fp32") > 1e9
    assert cpu.attested is False
    assert {d.id for d in devices} == {d.id for d in discover_devices()}


def test_operator_yaml_overrides_discovered_values_by_id(tmp_path):
    discovered = discover_devices()
    cpu_id = discovered[0].id
    path = tmp_path / "ops.yaml"
    override = f"devices:\n  - id: {cpu_id}\n    attested: true\n    power_w: 65\n"
    path.write_text(override + GOOD.replace("devices:\n", ""))
    operator = load_devices(path, base={d.id: d for d in discovered})
    merged = discover_devices(extra=operator)
    by_id = {d.id: d for d in merged}
    assert by_id[cpu_id].attested is True and by_id[cpu_id].power_w == 65
    # Fields the operator did not restate keep the discovered values.
    assert by_id[cpu_id].memory_bytes == discovered[0].memory_bytes
    assert "gpu0" in by_id and len(merged) == len(discovered) + 1
    # Without a base, a partial entry is a complete descriptor that is missing fields.
    with pytest.raises(DeviceDescriptorError, match="lacks"):
        load_devices(path)
    assert [d.id for d in merge_devices(operator, operator)] == [d.id for d in operator]
