"""Who is asking, in what role, and why: the principal of every load and inference call."""

from __future__ import annotations

from dataclasses import dataclass

from sealinfer.runtime.errors import UnknownPrincipalError

ROLES = frozenset({"clinician", "researcher", "ops", "auditor", "service"})
PURPOSES = frozenset({"treatment", "operations", "research"})


@dataclass(frozen=True, slots=True)
class Caller:
    """The principal of a request.

    ``break_glass`` marks emergency access: policy may allow it to a clinician, and it is always
    flagged loudly in the audit log.
    """

    user: str
    role: str
    purpose: str
    tenant: str | None = None
    break_glass: bool = False

    def __post_init__(self) -> None:
        if not self.user or not self.user.strip():
            raise UnknownPrincipalError(
                "The caller has an empty user id.", hint="Pass the authenticated user's id as Caller(user=...)."
            )
        if self.role not in ROLES:
            raise UnknownPrincipalError(
                f"Unknown role {self.role!r} for user {self.user!r}.",
                hint=f"Use one of: {', '.join(sorted(ROLES))}.",
            )
        if self.purpose not in PURPOSES:
            raise UnknownPrincipalError(
                f"Unknown purpose of use {self.purpose!r}.",
                hint=f"Use one of: {', '.join(sorted(PURPOSES))}.",
            )
