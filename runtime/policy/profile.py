"""Policy profiles: the YAML file that says what a deployment demands.

A profile is validated against ``sealinfer/policies/profile.schema.json`` (JSON Schema 2020-12,
unknown keys rejected everywhere). Errors name the file, the line and the field, because the person
reading them is editing a YAML file, not a Python dict: we compose the YAML node tree alongside the
data and map each JSON-Schema error path back to the node's mark. Typos get a difflib suggestion.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from sealinfer.runtime.errors import PolicyError

SHIPPED_PROFILES = ("hipaa", "research", "dev")
DEFAULT_CEDAR = "authz.cedar"
_PACKAGE = "sealinfer.policies"


# --- errors ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ProfileIssue:
    """One problem in a profile file, located for a human editing YAML."""

    file: str
    line: int  # 1-based; 0 when the problem has no position (e.g. an empty file)
    field: str  # dotted path, "" for the document itself
    message: str
    suggestion: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        what = f"{self.field}: {self.message}" if self.field else self.message
        if self.suggestion is not None:
            what += f" (did you mean {self.suggestion!r}?)"
        return f"{where}: {what}"


class ProfileValidationError(PolicyError):
    """A policy profile failed validation; ``issues`` lists every problem found, each located."""

    code = "policy_profile_invalid"

    def __init__(self, source: str, issues: list[ProfileIssue]) -> None:
        self.source = source
        self.issues = list(issues)
        n = len(self.issues)
        listing = "\n  ".join(str(i) for i in self.issues)
        super().__init__(
            f"Policy profile {source} is invalid ({n} problem{'s' if n != 1 else ''}):\n  {listing}\n",
            hint=f"Fix the fields above, then re-check with `sealinfer policy check {source}`.",
        )


# --- typed views of the sections ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SigningPolicy:
    require_signature: bool
    trusted_signers: tuple[str, ...]  # () = the keyring's own signers


@dataclass(frozen=True, slots=True)
class PrivacyPolicy:
    max_epsilon: float | None  # None = no DP requirement
    require_certificate: bool


@dataclass(frozen=True, slots=True)
class WatermarkPolicy:
    required: bool
    verify_on_load: bool


@dataclass(frozen=True, slots=True)
class PhiPlacement:
    require_attested: bool
    require_on_prem: bool
    allowed_precisions: tuple[str, ...]
    allowed_kinds: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class PlacementPolicy:
    objective: str  # latency | energy
    allowed_devices: tuple[str, ...]  # () = any
    phi: PhiPlacement


@dataclass(frozen=True, slots=True)
class PriorityClass:
    name: str
    deadline_ms: int


@dataclass(frozen=True, slots=True)
class TenantQuota:
    name: str
    rate_per_s: float
    burst: int


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_tensor_bytes: int = 64 * 1024 * 1024
    max_batch: int = 4096
    allow_nonfinite: bool = False


@dataclass(frozen=True, slots=True)
class OutputGuards:
    top_k: int | None = None
    round_decimals: int | None = None
    max_queries_per_minute: int | None = None

    @property
    def active(self) -> bool:
        return self.top_k is not None or self.round_decimals is not None or self.max_queries_per_minute is not None


@dataclass(frozen=True, slots=True)
class AuditPolicy:
    durability: str  # process | power
    retention_days: int
    checkpoint_every: int
    checkpoint_seconds: float


@dataclass(frozen=True, eq=False)
class PolicyProfile:
    """A validated profile. ``raw`` is the validated dict (read-only by convention); ``digest`` is the
    SHA-256 of its canonical JSON, so two deployments can prove they ran the same rules."""

    id: str
    version: str
    raw: dict[str, Any] = field(repr=False)
    digest: str
    source: str = ""
    base_dir: Path | None = field(default=None, repr=False)  # for relative Cedar paths; None = shipped

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicyProfile) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @property
    def description(self) -> str:
        return str(self.raw.get("description", ""))

    @cached_property
    def signing(self) -> SigningPolicy:
        s = self.raw["signing"]
        return SigningPolicy(bool(s["require_signature"]), tuple(s["trusted_signers"]))

    @cached_property
    def privacy(self) -> PrivacyPolicy:
        p = self.raw["privacy"]
        eps = p["max_epsilon"]
        return PrivacyPolicy(None if eps is None else float(eps), bool(p["require_certificate"]))

    @cached_property
    def watermark(self) -> WatermarkPolicy:
        w = self.raw["watermark"]
        return WatermarkPolicy(bool(w["required"]), bool(w["verify_on_load"]))

    @cached_property
    def placement(self) -> PlacementPolicy:
        p = self.raw["placement"]
        phi = p["phi"]
        return PlacementPolicy(
            objective=p["objective"],
            allowed_devices=tuple(p["allowed_devices"]),
            phi=PhiPlacement(
                bool(phi["require_attested"]),
                bool(phi["require_on_prem"]),
                tuple(phi["allowed_precisions"]),
                tuple(phi["allowed_kinds"]),
            ),
        )

    @cached_property
    def priority_classes(self) -> dict[str, PriorityClass]:
        return {n: PriorityClass(n, int(c["deadline_ms"])) for n, c in self.raw["priority_classes"].items()}

    @cached_property
    def tenants(self) -> dict[str, TenantQuota]:
        return {
            n: TenantQuota(n, float(t["rate_per_s"]), int(t["burst"])) for n, t in self.raw["tenants"].items()
        }

    @cached_property
    def inputs(self) -> InputLimits:
        i = self.raw["inputs"]
        return InputLimits(int(i["max_tensor_bytes"]), int(i["max_batch"]), bool(i["allow_nonfinite"]))

    @cached_property
    def outputs(self) -> OutputGuards:
        o = self.raw["outputs"]
        return OutputGuards(o["top_k"], o["round_decimals"], o["max_queries_per_minute"])

    @cached_property
    def audit(self) -> AuditPolicy:
        a = self.raw["audit"]
        return AuditPolicy(
            a["durability"], int(a["retention_days"]), int(a["checkpoint_every"]), float(a["checkpoint_seconds"])
        )

    @property
    def cedar_policies_name(self) -> str:
        return str(self.raw.get("authorization", {}).get("policies", DEFAULT_CEDAR))

    def cedar_policies_text(self) -> str:
        """The Cedar policies this profile authorizes with (shipped name or path beside the profile)."""
        return read_cedar_policies(self.cedar_policies_name, self.base_dir)


# --- loading -----------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def profile_schema() -> dict[str, Any]:
    """The JSON Schema every profile must satisfy."""
    return json.loads(resources.files(_PACKAGE).joinpath("profile.schema.json").read_text("utf-8"))


@lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema  # deferred: only profile loading needs it

    schema = profile_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def shipped_resource_text(filename: str) -> str:
    """Text of a file shipped in ``sealinfer.policies``."""
    res = resources.files(_PACKAGE).joinpath(filename)
    if not res.is_file():
        raise PolicyError(f"No shipped policy file named {filename!r}.", hint="Check the name in the profile.")
    return res.read_text("utf-8")


def read_cedar_policies(name: str, base_dir: Path | None = None) -> str:
    """Cedar policy text: a path (absolute, or relative to ``base_dir``) or a shipped file name."""
    if base_dir is not None:
        candidate = (base_dir / name) if not Path(name).is_absolute() else Path(name)
        if candidate.is_file():
            return candidate.read_text("utf-8")
    if Path(name).is_absolute():
        raise PolicyError(f"Cedar policy file {name} does not exist.", hint="Fix authorization.policies.")
    res = resources.files(_PACKAGE).joinpath(name)
    if "/" not in name and res.is_file():
        return res.read_text("utf-8")
    raise PolicyError(
        f"Cedar policy file {name!r} was found neither beside the profile nor among the shipped policies.",
        hint="Set authorization.policies to a path relative to the profile, or to 'authz.cedar'.",
    )


def _resolve(name_or_path: str | Path) -> tuple[str, str, Path | None]:
    """(text, source label for messages, base dir or None when shipped)."""
    if isinstance(name_or_path, str) and name_or_path in SHIPPED_PROFILES:
        return shipped_resource_text(f"{name_or_path}.yaml"), f"{name_or_path}.yaml", None
    path = Path(name_or_path)
    if path.is_file():
        try:
            return path.read_text("utf-8"), str(path), path.resolve().parent
        except (OSError, UnicodeDecodeError) as exc:
            raise PolicyError(f"Cannot read policy profile {path}: {exc}.", hint="Check the file.") from exc
    if path.is_dir():
        raise PolicyError(f"{path} is a directory, not a policy profile.", hint="Pass a .yaml file.")
    text = str(name_or_path)
    if "/" not in text and "\\" not in text and not text.endswith((".yaml", ".yml")):
        close = difflib.get_close_matches(text, SHIPPED_PROFILES, n=1)
        hint = f"Did you mean {close[0]!r}? " if close else ""
        raise PolicyError(
            f"Unknown policy profile {text!r}.",
            hint=f"{hint}Use one of {', '.join(SHIPPED_PROFILES)} or the path to a YAML file.",
        )
    raise PolicyError(f"Policy profile file {path} does not exist.", hint="Check the path.")


def load_profile(name_or_path: str | Path) -> PolicyProfile:
    """Load and validate a shipped profile ("hipaa", "research", "dev") or a YAML file.

    Raises ``ProfileValidationError`` (a ``PolicyError``) listing every problem with file:line: field.
    """
    text, source, base_dir = _resolve(name_or_path)
    return parse_profile(text, source=source, base_dir=base_dir)


def parse_profile(text: str, *, source: str = "<profile>", base_dir: Path | None = None) -> PolicyProfile:
    """Validate profile YAML ``text``; ``source`` names it in error messages."""
    root, data = _parse_yaml(text, source)
    issues = [*_duplicate_keys(root, source), *_schema_issues(data, root, source)]
    if not issues:
        issues = _semantic_issues(data, root, source, base_dir)
    if issues:
        raise ProfileValidationError(source, sorted(issues, key=lambda i: (i.line, i.field)))
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return PolicyProfile(
        id=data["id"],
        version=data["version"],
        raw=data,
        digest=hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
        source=source,
        base_dir=base_dir,
    )


def _parse_yaml(text: str, source: str) -> tuple[yaml.Node | None, Any]:
    loader_cls = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        root = yaml.compose(text, Loader=loader_cls)
        data = yaml.load(text, Loader=loader_cls)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 0
        problem = exc.problem or str(exc)
        raise ProfileValidationError(source, [ProfileIssue(source, line, "", f"YAML syntax error: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ProfileValidationError(source, [ProfileIssue(source, 0, "", f"YAML error: {exc}")]) from exc
    if data is None:
        raise ProfileValidationError(source, [ProfileIssue(source, 0, "", "the file is empty")])
    if not isinstance(data, dict):
        raise ProfileValidationError(
            source, [ProfileIssue(source, _line(root), "", "the top level must be a mapping of sections")]
        )
    return root, data


# --- locating and explaining problems ----------------------------------------------------------


def _line(node: yaml.Node | None) -> int:
    return node.start_mark.line + 1 if node is not None else 0


def _node_at(root: yaml.Node | None, path: tuple[Any, ...], *, key: bool = False) -> yaml.Node | None:
    """The YAML node at a JSON-pointer-like ``path`` (the key node of the last step if ``key``)."""
    node = root
    for i, part in enumerate(path):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == str(part):
                    node = k if (key and i == len(path) - 1) else v
                    break
            else:
                return node
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _dotted(path: tuple[Any, ...] | list[Any]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _duplicate_keys(node: yaml.Node | None, source: str, path: tuple[Any, ...] = ()) -> list[ProfileIssue]:
    # yaml silently keeps the last duplicate; in a security policy that hides an edit, so reject it.
    issues: list[ProfileIssue] = []
    if isinstance(node, yaml.MappingNode):
        seen: set[str] = set()
        for k, v in node.value:
            if k.value in seen:
                issues.append(ProfileIssue(source, _line(k), _dotted((*path, k.value)), "duplicate key"))
            seen.add(k.value)
            issues.extend(_duplicate_keys(v, source, (*path, k.value)))
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            issues.extend(_duplicate_keys(v, source, (*path, i)))
    return issues


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str | None:
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return close[0] if close else None


_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "list", dict: "mapping"}


def _schema_issues(data: dict[str, Any], root: yaml.Node | None, source: str) -> list[ProfileIssue]:
    issues: list[ProfileIssue] = []
    errors = sorted(_validator().iter_errors(data), key=lambda e: [str(p) for p in e.absolute_path])
    for err in errors:
        path = tuple(err.absolute_path)
        kind = err.validator
        if kind == "additionalProperties" and isinstance(err.instance, dict):
            known = list(err.schema.get("properties", {}))
            for extra in sorted(k for k in err.instance if k not in known):
                issues.append(
                    ProfileIssue(
                        source,
                        _line(_node_at(root, (*path, extra), key=True)),
                        _dotted((*path, extra)),
                        f"unknown key (allowed: {', '.join(known)})",
                        _suggest(extra, known),
                    )
                )
            continue
        if kind == "required":
            missing = str(err.message).split("'")[1] if "'" in err.message else str(err.validator_value)
            issues.append(
                ProfileIssue(
                    source,
                    _line(_node_at(root, path, key=True)),  # the line naming the section
                    _dotted((*path, missing)),
                    "missing required key",
                )
            )
            continue
        node = _node_at(root, path)
        suggestion = None
        if kind == "enum":
            choices = [str(c) for c in err.validator_value]
            message = f"{err.instance!r} is not allowed (use one of: {', '.join(choices)})"
            suggestion = _suggest(str(err.instance), choices)
        elif kind == "type":
            expected = err.validator_value
            expected = " or ".join(expected) if isinstance(expected, list) else expected
            got = _JSON_TYPES.get(type(err.instance), type(err.instance).__name__)
            message = f"expected {expected}, got {got} {err.instance!r}"
            if expected == "string" and isinstance(err.instance, int | float):
                message += " (quote it, e.g. \"" + str(err.instance) + "\")"
        elif kind == "propertyNames":
            message = f"invalid name {err.instance!r}: {err.message}"
        else:
            message = err.message
        issues.append(ProfileIssue(source, _line(node), _dotted(path), message, suggestion))
    return issues


def _semantic_issues(
    data: dict[str, Any], root: yaml.Node | None, source: str, base_dir: Path | None
) -> list[ProfileIssue]:
    """Checks a schema cannot express."""
    issues: list[ProfileIssue] = []
    for name, quota in data["tenants"].items():
        if quota["burst"] < quota["rate_per_s"]:
            path = ("tenants", name, "burst")
            issues.append(
                ProfileIssue(source, _line(_node_at(root, path)), _dotted(path), "burst must be >= rate_per_s")
            )
    if "authorization" in data:
        try:
            read_cedar_policies(data["authorization"]["policies"], base_dir)
        except PolicyError as exc:
            path = ("authorization", "policies")
            issues.append(ProfileIssue(source, _line(_node_at(root, path)), _dotted(path), exc.message))
    return issues


__all__ = [
    "AuditPolicy",
    "InputLimits",
    "OutputGuards",
    "PhiPlacement",
    "PlacementPolicy",
    "PolicyProfile",
    "PriorityClass",
    "PrivacyPolicy",
    "ProfileIssue",
    "ProfileValidationError",
    "SHIPPED_PROFILES",
    "SigningPolicy",
    "TenantQuota",
    "WatermarkPolicy",
    "load_profile",
    "parse_profile",
    "profile_schema",
    "read_cedar_policies",
]
