"""Policy profiles: the shipped ones load with the promised rules; bad files are located precisely."""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import yaml

from sealinfer.runtime.errors import PolicyError
from sealinfer.runtime.policy.profile import (
    SHIPPED_PROFILES,
    ProfileValidationError,
    load_profile,
    parse_profile,
)


def shipped_text(name: str) -> str:
    return resources.files("sealinfer.policies").joinpath(f"{name}.yaml").read_text("utf-8")


def write(tmp_path: Path, text: str, name: str = "profile.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def line_of(text: str, needle: str) -> int:
    for number, line in enumerate(text.splitlines(), start=1):
        if needle in line:
            return number
    raise AssertionError(f"{needle!r} not in text")


@pytest.mark.parametrize("name", SHIPPED_PROFILES)
def test_each_shipped_profile_loads_and_validates(name):
    profile = load_profile(name)
    assert profile.id == name
    assert profile.version
    assert len(profile.digest) == 64
    assert profile.raw == yaml.safe_load(shipped_text(name))
    # every typed view reads its section
    assert profile.inputs.max_tensor_bytes == profile.raw["inputs"]["max_tensor_bytes"]
    assert set(profile.priority_classes) == set(profile.raw["priority_classes"])
    assert "default" in profile.tenants
    assert profile.audit.durability in {"process", "power"}
    assert profile.cedar_policies_text().strip()


def test_hipaa_profile_demands_what_hipaa_needs():
    p = load_profile("hipaa")
    assert p.signing.require_signature
    assert p.privacy.max_epsilon is not None and p.privacy.max_epsilon <= 8.0
    assert p.privacy.require_certificate
    assert p.watermark.required and p.watermark.verify_on_load
    assert p.placement.phi.require_attested and p.placement.phi.require_on_prem
    assert p.outputs.round_decimals == 4
    assert p.outputs.max_queries_per_minute is not None
    assert p.inputs.allow_nonfinite is False
    assert p.audit.durability == "process"
    assert p.audit.retention_days == 2190  # six years


def test_dev_profile_is_permissive_but_research_is_not():
    dev, research = load_profile("dev"), load_profile("research")
    assert not dev.signing.require_signature and not dev.watermark.required
    assert dev.privacy.max_epsilon is None and not dev.outputs.active
    assert research.signing.require_signature and research.outputs.top_k is not None
    assert research.privacy.max_epsilon is not None and research.privacy.max_epsilon < 8.0


def test_profile_loads_from_a_path_and_digest_is_canonical(tmp_path):
    text = shipped_text("hipaa")
    from_path = load_profile(write(tmp_path, text))
    assert from_path.digest == load_profile("hipaa").digest
    # same content, different formatting and key order -> same digest
    reordered = yaml.safe_dump(dict(reversed(list(yaml.safe_load(text).items()))), sort_keys=False)
    assert load_profile(write(tmp_path, reordered, "b.yaml")).digest == from_path.digest
    changed = text.replace("retention_days: 2190", "retention_days: 2191")
    assert load_profile(write(tmp_path, changed, "c.yaml")).digest != from_path.digest


def test_profile_is_frozen():
    p = load_profile("dev")
    with pytest.raises(AttributeError):
        p.id = "other"  # type: ignore[misc]


def test_unknown_key_names_file_line_field_and_suggests(tmp_path):
    text = shipped_text("hipaa").replace("  require_signature: true", "  require_signatur: true")
    path = write(tmp_path, text)
    with pytest.raises(ProfileValidationError) as info:
        load_profile(path)
    err = info.value
    issue = next(i for i in err.issues if i.field == "signing.require_signatur")
    assert issue.file == str(path)
    assert issue.line == line_of(text, "require_signatur:")
    assert issue.suggestion == "require_signature"
    assert "unknown key" in issue.message
    assert f"{path}:{issue.line}: signing.require_signatur" in str(err)
    assert "did you mean 'require_signature'" in str(err)
    assert isinstance(err, PolicyError)


def test_unknown_top_level_section_is_an_error(tmp_path):
    text = shipped_text("dev") + "outptus:\n  top_k: 3\n"
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, text))
    (issue,) = info.value.issues
    assert (issue.field, issue.suggestion, issue.line) == ("outptus", "outputs", line_of(text, "outptus:"))


def test_wrong_type_and_enum_typo_are_located(tmp_path):
    text = (
        shipped_text("hipaa")
        .replace("durability: process", "durability: proces")
        .replace("max_batch: 4096", "max_batch: lots")
    )
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, text))
    by_field = {i.field: i for i in info.value.issues}
    assert by_field["audit.durability"].line == line_of(text, "durability: proces")
    assert by_field["audit.durability"].suggestion == "process"
    assert by_field["inputs.max_batch"].line == line_of(text, "max_batch: lots")
    assert "expected integer" in by_field["inputs.max_batch"].message
    # issues come in file order
    assert [i.line for i in info.value.issues] == sorted(i.line for i in info.value.issues)


def test_unquoted_version_gets_a_quote_hint(tmp_path):
    text = shipped_text("dev").replace('version: "2026.11.1"', "version: 2026.11")
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, text))
    (issue,) = info.value.issues
    assert issue.field == "version" and "quote it" in issue.message
    assert issue.line == line_of(text, "version: 2026.11")


def test_missing_key_and_missing_section_are_reported(tmp_path):
    text = shipped_text("hipaa").replace("  max_batch: 4096\n", "")
    text = text[: text.index("audit:")]  # drop the audit section (and what follows)
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, text))
    fields = {i.field for i in info.value.issues}
    assert {"inputs.max_batch", "audit"} <= fields
    assert all("missing required key" in i.message for i in info.value.issues)
    inputs_issue = next(i for i in info.value.issues if i.field == "inputs.max_batch")
    assert inputs_issue.line == line_of(text, "inputs:")


def test_out_of_range_values_are_rejected(tmp_path):
    text = (
        shipped_text("hipaa")
        .replace("max_epsilon: 8.0", "max_epsilon: -1")
        .replace("round_decimals: 4", "round_decimals: 99")
    )
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, text))
    assert {i.field for i in info.value.issues} == {"privacy.max_epsilon", "outputs.round_decimals"}


def test_duplicate_keys_are_rejected(tmp_path):
    text = shipped_text("hipaa").replace("  max_epsilon: 8.0\n", "  max_epsilon: 8.0\n  max_epsilon: 80.0\n")
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, text))
    (issue,) = info.value.issues
    assert issue.field == "privacy.max_epsilon" and issue.message == "duplicate key"
    assert issue.line == line_of(text, "max_epsilon: 80.0")


def test_burst_below_rate_is_rejected(tmp_path):
    text = shipped_text("hipaa").replace("{rate_per_s: 200, burst: 400}", "{rate_per_s: 200, burst: 10}")
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, text))
    (issue,) = info.value.issues
    assert issue.field == "tenants.default.burst"


def test_yaml_syntax_error_names_the_line(tmp_path):
    text = shipped_text("dev").replace("allowed_devices: []", "allowed_devices: [")
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, text))
    (issue,) = info.value.issues
    assert "YAML syntax error" in issue.message and issue.line > 0


@pytest.mark.parametrize("text", ["", "- just\n- a list\n", "42\n"])
def test_empty_or_non_mapping_documents_are_rejected(text):
    with pytest.raises(ProfileValidationError):
        parse_profile(text, source="x.yaml")


def test_unknown_profile_name_suggests_the_closest(tmp_path):
    with pytest.raises(PolicyError, match="Did you mean 'hipaa'"):
        load_profile("hipa")
    with pytest.raises(PolicyError, match="does not exist"):
        load_profile(tmp_path / "missing.yaml")
    with pytest.raises(PolicyError, match="directory"):
        load_profile(tmp_path)


def test_authorization_policies_resolve_beside_the_profile(tmp_path):
    cedar = resources.files("sealinfer.policies").joinpath("authz.cedar").read_text("utf-8")
    (tmp_path / "site.cedar").write_text(cedar + "\n// site copy\n", encoding="utf-8")
    text = shipped_text("hipaa").replace("policies: authz.cedar", "policies: site.cedar")
    profile = load_profile(write(tmp_path, text))
    assert profile.cedar_policies_text().endswith("// site copy\n")
    missing = shipped_text("hipaa").replace("policies: authz.cedar", "policies: nowhere.cedar")
    with pytest.raises(ProfileValidationError) as info:
        load_profile(write(tmp_path, missing, "m.yaml"))
    (issue,) = info.value.issues
    assert issue.field == "authorization.policies" and issue.line == line_of(missing, "nowhere.cedar")


def test_schema_rejects_unknown_keys_everywhere():
    schema = json.loads(resources.files("sealinfer.policies").joinpath("profile.schema.json").read_text())

    def objects(node):
        if isinstance(node, dict):
            if node.get("type") == "object":
                yield node
            for value in node.values():
                yield from objects(value)

    for obj in objects(schema):
        closed = obj.get("additionalProperties") is False
        mapping = isinstance(obj.get("additionalProperties"), dict) and "propertyNames" in obj
        assert closed or mapping, obj
