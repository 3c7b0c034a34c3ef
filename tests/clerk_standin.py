"""A local stand-in for Clerk's Backend API, on a real HTTP port, for the backfill and session
sync tests.

It follows the documented wire format (clerk.com/docs/reference/backend-api; clerk/openapi-specs
bapi/): `GET /v1/users` answers a bare JSON array of user objects, honours `limit` (1..500, else 422), `offset`, `order_by` (`created_at` with a `+`
or `-` prefix; Clerk's default is newest first) and repeated `user_id` filters; `GET
/v1/users/count` answers `{"object": "total_count", "total_count": N}`; `GET /v1/users/{id}`
answers the user object, or Clerk's 404 body; `GET /v1/jwks` answers the instance's JSON Web Key
Set `{"keys": [...]}`. `GET /v1/organizations` and the instance-wide `GET
/v1/organization_memberships` answer `{"data": [...], "total_count": N}` with the same `limit`,
`offset` and `order_by` rules (each membership embeds its organization as it is now, and
`public_user_data`); the instance-wide `GET /v1/organization_invitations` answers its
invitations the same way (`order_by` also by `email_address`; each with
`public_organization_data`, as Clerk's instance-wide list does, and without the `user_id` that
only the `organizationInvitation.accepted` webhook carries), filtered by `status` (repeated, or
comma-separated: `pending`, `accepted`, `revoked`, `expired`, which is a pending one past its
`expires_at`; another value is 422); `GET /v1/organizations/{id}` answers the organization or 404, and `GET
/v1/organizations/{id}/memberships` its memberships (repeated `user_id` filters, at most 100),
or 404 for an organization it does not have. A wrong bearer key gets Clerk's 401 body. Faults are injected by request
number (429 with `Retry-After`, 500) or by offset (a hard failure), and every request is logged.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests import support

BASE_CREATED_AT = 1_700_000_000_000


def clerk_user(index: int, *, updated_at: int | None = None, **fields: Any) -> dict[str, Any]:
    """The index-th user of the stand-in instance, shaped as the Backend API returns users."""
    user_id = f"user_{index:06d}bf"
    created_at = BASE_CREATED_AT + index * 1000
    user: dict[str, Any] = support.user_event(
        "user.created",
        user_id,
        updated_at if updated_at is not None else created_at + 500,
        email=f"user{index}@example.com",
        first_name=f"First{index}",
    )["data"]
    user["created_at"] = created_at
    user.update(fields)
    return user


def clerk_users(count: int) -> list[dict[str, Any]]:
    return [clerk_user(i) for i in range(count)]


def clerk_organization(
    index: int, *, updated_at: int | None = None, **fields: Any
) -> dict[str, Any]:
    """The index-th organization of the stand-in instance, as GET /v1/organizations answers."""
    created_at = BASE_CREATED_AT + index * 1000
    organization: dict[str, Any] = {
        "object": "organization",
        "id": f"org_{index:06d}bf",
        "name": f"Org {index}",
        "slug": f"org-{index}",
        "image_url": "https://img.clerk.com/org.png",
        "has_image": False,
        "members_count": 0,
        "max_allowed_memberships": 5,
        "admin_delete_enabled": True,
        "public_metadata": {"tier": "free"},
        "private_metadata": {"secret": "never stored"},
        "created_by": "user_000000bf",
        "created_at": created_at,
        "updated_at": updated_at if updated_at is not None else created_at + 300,
    }
    organization.update(fields)
    return organization


def clerk_organizations(count: int) -> list[dict[str, Any]]:
    return [clerk_organization(i) for i in range(count)]


def clerk_membership(
    index: int,
    organization: dict[str, Any],
    user_id: str,
    *,
    updated_at: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The index-th membership, of `user_id` in `organization`, as GET
    /v1/organization_memberships answers it (the organization embedded)."""
    created_at = BASE_CREATED_AT + index * 100 + 50
    membership: dict[str, Any] = {
        "object": "organization_membership",
        "id": f"orgmem_{index:07d}bf",
        "role": "org:admin" if index % 5 == 0 else "org:member",
        "role_name": "Admin" if index % 5 == 0 else "Member",
        "permissions": ["org:sys_profile:read"],
        "public_metadata": {},
        "private_metadata": {},
        "organization": organization,
        "public_user_data": {
            "user_id": user_id,
            "first_name": None,
            "last_name": None,
            "image_url": "https://img.clerk.com/user.png",
            "has_image": False,
            "identifier": f"{user_id}@example.com",
            "username": None,
            "banned": False,
        },
        "created_at": created_at,
        "updated_at": updated_at if updated_at is not None else created_at + 20,
    }
    membership.update(fields)
    return membership


def clerk_memberships(
    count: int, organizations: list[dict[str, Any]], users: int
) -> list[dict[str, Any]]:
    """`count` memberships, spread over the organizations and `users` users (user i of
    clerk_user), no pair twice as long as count <= len(organizations) * users."""
    return [
        clerk_membership(
            i,
            organizations[i % len(organizations)],
            f"user_{(i // len(organizations)) % users:06d}bf",
        )
        for i in range(count)
    ]


def clerk_invitation(
    index: int,
    organization: dict[str, Any],
    *,
    status: str = "pending",
    updated_at: int | None = None,
    expires_at: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """The index-th invitation, to `organization`, as GET /v1/organization_invitations answers
    it (no user_id: the list does not say who accepted; the accepted webhook does)."""
    created_at = BASE_CREATED_AT + index * 100 + 70
    invitation: dict[str, Any] = {
        "object": "organization_invitation",
        "id": f"orginv_{index:07d}bf",
        "email_address": f"invitee{index}@example.com",
        "role": "org:member",
        "role_name": "Member",
        "organization_id": organization["id"],
        "inviter_id": organization.get("created_by"),
        "public_inviter_data": None,
        "status": status,
        "public_metadata": {"source": "standin"},
        "private_metadata": {"secret": "never stored"},
        "url": f"https://accounts.example.com/accept?token=secret{index}",
        "expires_at": expires_at if expires_at is not None else created_at + 30 * 86_400_000,
        "created_at": created_at,
        "updated_at": updated_at if updated_at is not None else created_at + 10,
    }
    invitation.update(fields)
    return invitation


def clerk_invitations(count: int, organizations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`count` invitations spread over the organizations: every 7th accepted, every 11th
    revoked, the rest pending (and, 30 days after a creation in 2023, past their expires_at:
    expired, to Clerk's status filter)."""
    return [
        clerk_invitation(
            i,
            organizations[i % len(organizations)],
            status="accepted" if i % 7 == 3 else "revoked" if i % 11 == 5 else "pending",
        )
        for i in range(count)
    ]


INVITATION_STATUSES = ("pending", "accepted", "revoked", "expired")

LISTS = (
    "/v1/users",
    "/v1/organizations",
    "/v1/organization_memberships",
    "/v1/organization_invitations",
)


@dataclass
class Logged:
    path: str
    query: dict[str, list[str]]
    status: int

    @property
    def offset(self) -> int:
        return int(self.query.get("offset", ["0"])[0])


@dataclass
class StandIn:
    secret_key: str = "sk_test_standin_0123456789"
    users: list[dict[str, Any]] = field(default_factory=list)
    organizations: list[dict[str, Any]] = field(default_factory=list)
    memberships: list[dict[str, Any]] = field(default_factory=list)
    invitations: list[dict[str, Any]] = field(default_factory=list)
    # Users (organizations, memberships) that the lists leave out but a lookup still finds: as if
    # the list pages moved under a reader.
    unlisted: set[str] = field(default_factory=set)
    rate_limit_requests: set[int] = field(default_factory=set)  # answer 429 to these (1-based)
    error_requests: set[int] = field(default_factory=set)  # answer 500 to these
    broken_from_offset: int | None = None  # every page at or past this offset answers 500
    broken_list: str = "/v1/users"  # ... of this list
    wrap_pages: bool = (
        False  # answer {"data": [...], "total_count": n} instead (not Clerk's format)
    )
    before_page: Callable[[int], None] | None = None  # called with the offset of each users page
    jwks: dict[str, Any] = field(default_factory=lambda: {"keys": []})
    user_delay: float = 0.0  # seconds GET /v1/users/{id} takes: a slow Clerk
    user_asked: threading.Event = field(default_factory=threading.Event)  # set as one arrives
    retry_after: str = "1"  # the Retry-After of the injected 429s
    log: list[Logged] = field(default_factory=list)
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def page_offsets(self, path: str = "/v1/users") -> list[int]:
        """The offsets of the pages of a list served (lookups by user_id left out)."""
        return [
            r.offset
            for r in self.log
            if r.path == path and r.status == 200 and "user_id" not in r.query
        ]

    def requests_to(self, path: str) -> int:
        """How many requests (whatever their answer) asked for `path`."""
        return sum(r.path == path for r in self.log)

    def user_fetches(self, user_id: str) -> int:
        """How many times GET /v1/users/{user_id} was asked."""
        return sum(r.path == f"/v1/users/{user_id}" for r in self.log)

    def jwks_fetches(self) -> int:
        return sum(r.path == "/v1/jwks" for r in self.log)

    def answer(
        self, method: str, target: str, headers: dict[str, str]
    ) -> tuple[int, dict[str, str], Any]:
        parts = urlsplit(target)
        query = parse_qs(parts.query)
        if parts.path.startswith("/v1/users/user_"):
            self.user_asked.set()
            time.sleep(self.user_delay)
        with self._lock:
            number = len(self.log) + 1
            status, extra, body = self._answer(method, parts.path, query, headers, number)
            self.log.append(Logged(parts.path, query, status))
        return status, extra, body

    def _answer(
        self,
        method: str,
        path: str,
        query: dict[str, list[str]],
        headers: dict[str, str],
        number: int,
    ) -> tuple[int, dict[str, str], Any]:
        if headers.get("authorization") != f"Bearer {self.secret_key}":
            return (
                401,
                {},
                _errors(
                    "Invalid authentication",
                    "Unable to authenticate the request, you need to supply an active API key",
                    "authentication_invalid",
                ),
            )
        if number in self.rate_limit_requests:
            return (
                429,
                {"Retry-After": self.retry_after},
                _errors("Too Many Requests", None, "too_many_requests"),
            )
        if number in self.error_requests:
            return 500, {}, _errors("Internal server error", None, "internal_clerk_error")
        if method != "GET":
            return 405, {}, _errors("Method not allowed", None, "method_not_allowed")
        if path == "/v1/users/count":
            return 200, {}, {"object": "total_count", "total_count": len(self.users)}
        if path == "/v1/jwks":
            return 200, {}, self.jwks
        if path.startswith("/v1/users/"):
            user_id = unquote(path.removeprefix("/v1/users/"))
            user = next((u for u in self.users if u["id"] == user_id), None)
            if user is None:
                return _NOT_FOUND
            return 200, {}, user
        if path.startswith("/v1/organizations/"):
            return self._organization(unquote(path.removeprefix("/v1/organizations/")), query)
        if path not in LISTS:
            return _NOT_FOUND
        return self._list(path, query)

    def _embedded(self, memberships: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """These memberships, each with its organization as it is now (as Clerk embeds it)."""
        by_id = {o["id"]: o for o in self.organizations}
        return [
            {**m, "organization": by_id.get(m["organization"]["id"], m["organization"])}
            for m in memberships
        ]

    def _organization(
        self, rest: str, query: dict[str, list[str]]
    ) -> tuple[int, dict[str, str], Any]:
        """GET /v1/organizations/{id or slug}, and /v1/organizations/{id}/memberships."""
        key, _, sub = rest.partition("/")
        organization = next((o for o in self.organizations if key in (o["id"], o["slug"])), None)
        if organization is None or sub not in ("", "memberships"):
            return _NOT_FOUND
        if not sub:
            return 200, {}, organization
        wanted = query.get("user_id", [])
        if len(wanted) > 100:
            return 422, {}, _errors("too many user_id", None, "form_param_value_invalid")
        members = [
            m
            for m in self.memberships
            if m["organization"]["id"] == organization["id"]
            and (not wanted or m["public_user_data"]["user_id"] in wanted)
        ]
        return self._paged(members, query, wrapped=True, present=self._embedded)

    def _list(self, path: str, query: dict[str, list[str]]) -> tuple[int, dict[str, str], Any]:
        objects = {
            "/v1/users": lambda: self.users,
            "/v1/organizations": lambda: self.organizations,
            "/v1/organization_memberships": lambda: self.memberships,
            "/v1/organization_invitations": lambda: self.invitations,
        }[path]()
        wanted = set(query.get("user_id", [])) if path == "/v1/users" else set()
        asked = query.get("offset", ["0"])[0]
        offset = int(asked) if asked.isdigit() else 0  # _paged answers a malformed one 422
        if wanted:
            objects = [u for u in objects if u["id"] in wanted]
        else:
            if (
                path == self.broken_list
                and self.broken_from_offset is not None
                and offset >= self.broken_from_offset
            ):
                return 500, {}, _errors("Internal server error", None, "internal_clerk_error")
            if self.before_page is not None and path == "/v1/users":
                self.before_page(offset)
            objects = [o for o in objects if o["id"] not in self.unlisted]
        if path == "/v1/organization_invitations":
            statuses = [s for v in query.get("status", []) for s in v.split(",") if s]
            if any(s not in INVITATION_STATUSES for s in statuses):
                return 422, {}, _errors("Invalid status", None, "form_param_value_invalid")
            if statuses:
                objects = [o for o in objects if _invitation_status(o) in statuses]
            return self._paged(
                objects,
                query,
                wrapped=True,
                present=self._with_organization,
                orders=("created_at", "email_address"),
            )
        return self._paged(
            objects,
            query,
            wrapped=path != "/v1/users" or self.wrap_pages,
            present=self._embedded if path == "/v1/organization_memberships" else None,
        )

    def _with_organization(self, invitations: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """These invitations with their organization's public data, as the instance-wide list
        answers them (OrganizationInvitationWithPublicOrganizationData)."""
        by_id = {o["id"]: o for o in self.organizations}
        answered = []
        for invitation in invitations:
            org = by_id.get(invitation["organization_id"], {"id": invitation["organization_id"]})
            public = {k: org.get(k) for k in ("id", "name", "slug", "image_url", "has_image")}
            answered.append({**invitation, "public_organization_data": public})
        return answered

    def _paged(
        self,
        objects: list[dict[str, Any]],
        query: dict[str, list[str]],
        *,
        wrapped: bool,
        present: Callable[[list[dict[str, Any]]], list[dict[str, Any]]] | None = None,
        orders: tuple[str, ...] = ("created_at",),
    ) -> tuple[int, dict[str, str], Any]:
        """A page of `objects` by `limit` (1..500), `offset` and `order_by` (± one of
        `orders`)."""
        try:
            limit = int(query.get("limit", ["10"])[0])
            offset = int(query.get("offset", ["0"])[0])
        except ValueError:
            return 422, {}, _errors("Invalid query", None, "form_param_format_invalid")
        if not 1 <= limit <= 500 or offset < 0:
            return (
                422,
                {},
                _errors("limit must be between 1 and 500", None, "form_param_value_invalid"),
            )
        order_by = query.get("order_by", ["-created_at"])[0]
        key = order_by.lstrip("+-")
        if key not in orders:
            return (
                422,
                {},
                _errors("unsupported order_by for this stand-in", None, "form_param_value_invalid"),
            )
        objects = sorted(objects, key=lambda o: o[key], reverse=order_by.startswith("-"))
        page = objects[offset : offset + limit]
        if present is not None:
            page = present(page)
        if wrapped:
            return 200, {}, {"data": page, "total_count": len(objects)}
        return 200, {}, page


def _invitation_status(invitation: dict[str, Any]) -> str:
    """What Clerk's status filter matches: a pending invitation past its expires_at is expired."""
    status = str(invitation.get("status"))
    expires_at = invitation.get("expires_at")
    if status == "pending" and isinstance(expires_at, int) and expires_at < time.time() * 1000:
        return "expired"
    return status


def _errors(message: str, long_message: str | None, code: str) -> dict[str, Any]:
    error: dict[str, Any] = {"message": message, "code": code}
    if long_message:
        error["long_message"] = long_message
    return {"errors": [error], "clerk_trace_id": "trace_standin"}


_NOT_FOUND: tuple[int, dict[str, str], Any] = (
    404,
    {},
    _errors("Resource not found", None, "resource_not_found"),
)


def _handler(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def setup(self) -> None:
            super().setup()
            # Head and body leave in two writes: without this, Nagle's algorithm holds the body
            # for the client's delayed ACK (~40 ms a request on keep-alive connections).
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def _serve(self, method: str) -> None:
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, extra, body = standin.answer(method, self.path, headers)
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hangs up mid-answer (a cancelled run) is not the stand-in's fault


@contextmanager
def running(standin: StandIn) -> Iterator[StandIn]:
    """Serve the stand-in on 127.0.0.1 (a free port) for the duration of the block."""
    server = _Server(("127.0.0.1", 0), _handler(standin))
    standin.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
