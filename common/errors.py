"""Errors shared by the daemon, the API and the CLI.

Every error carries an HTTP status and a message meant for a person: it names what was wrong
and, where there is one, the fix.
"""
from __future__ import annotations


class ShoalError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def to_dict(self) -> dict:
        body = {"message": self.message, "code": self.code}
        if self.field:
            body["field"] = self.field
        return body


class InvalidArgument(ShoalError):
    status = 400
    code = "invalid_argument"


class Unauthorized(ShoalError):
    status = 401
    code = "unauthorized"


class PermissionDenied(ShoalError):
    status = 403
    code = "permission_denied"


class NotFound(ShoalError):
    status = 404
    code = "not_found"


class Conflict(ShoalError):
    """The object changed since it was read (optimistic concurrency) or already exists."""

    status = 409
    code = "conflict"


class FailedPrecondition(ShoalError):
    status = 412
    code = "failed_precondition"


class ResourceExhausted(ShoalError):
    """A pool ran dry: addresses, VNIs, published ports, a manager's disk."""

    status = 507
    code = "resource_exhausted"


class Unavailable(ShoalError):
    """No quorum, no leader, or the manager could not be reached."""

    status = 503
    code = "unavailable"


class OutcomeUnknown(Unavailable):
    """A write whose leader went away mid-request and no new leader answered in time: the
    change may or may not have been applied. Never a refusal: check before retrying."""

    status = 504
    code = "unknown_outcome"


class NotAManager(ShoalError):
    status = 503
    code = "not_a_manager"


class NotInSwarm(ShoalError):
    status = 503
    code = "not_in_swarm"


_BY_CODE = {cls.code: cls for cls in (
    ShoalError, InvalidArgument, Unauthorized, PermissionDenied, NotFound, Conflict,
    FailedPrecondition, ResourceExhausted, Unavailable, OutcomeUnknown, NotAManager, NotInSwarm)}


def from_dict(body: dict, status: int = 500) -> ShoalError:
    cls = _BY_CODE.get(body.get("code", ""), ShoalError)
    err = cls(body.get("message") or f"request failed with HTTP {status}", field=body.get("field"))
    return err
