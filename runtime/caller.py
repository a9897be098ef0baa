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
        # Checked here, where the mistake is made: a caller that passed would otherwise fail later, as
        # an audit record the log cannot write, after the decision was taken.
        if not isinstance(self.user, str) or not self.user.strip() or len(self.user) > ID_LIMIT:
            raise UnknownPrincipalError(
                f"The caller's user id must be a non-empty string of at most {ID_LIMIT} characters, "
                f"got {_shown(self.user)}.",
                hint="Pass the authenticated user's id as Caller(user=...).",
            )
        if not isinstance(self.role, str) or self.role not in ROLES:
            raise UnknownPrincipalError(
                f"Unknown role {_shown(self.role)} for user {self.user!r}.",
                hint=f"Use one of: {', '.join(sorted(ROLES))}.",
            )
        if not isinstance(self.purpose, str) or self.purpose not in PURPOSES:
            raise UnknownPrincipalError(
                f"Unknown purpose of use {_shown(self.purpose)}.",
                hint=f"Use one of: {', '.join(sorted(PURPOSES))}.",
            )
        if self.tenant is not None and (
                not isinstance(self.tenant, str) or not self.tenant.strip() or len(self.tenant) > ID_LIMIT):
            raise UnknownPrincipalError(
                f"The caller's tenant must be a non-empty string of at most {ID_LIMIT} characters, "
                f"got {_shown(self.tenant)}.",
                hint="Pass the ward or department id as Caller(tenant=...), or leave it out.",
            )
        if not isinstance(self.break_glass, bool):
            raise UnknownPrincipalError(
                f"break_glass must be True or False, got {_shown(self.break_glass)}.",
                hint="Pass Caller(break_glass=True) only for emergency access.",
            )


ID_LIMIT = 512  # the audit record's limit for ids: anything longer is data, not an id


def _shown(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
