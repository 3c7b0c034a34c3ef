"""The Backend API client against the stand-in: wire format, retries, and errors a user can act on."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from clerk_sync.clerk_api import (
    MAX_RETRY_AFTER,
    ClerkAPIError,
    ClerkAuthError,
    ClerkClient,
    Page,
    backoff,
    retry_after,
)
from clerk_sync.settings import ConfigError, load_settings
from tests import clerk_standin, support
from tests.clerk_standin import StandIn


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with clerk_standin.running(StandIn(users=clerk_standin.clerk_users(1234))) as server:
        yield server


class Sleeps:
    """Records the waits the client asks for, and waits not at all."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def client(standin: StandIn, *, key: str | None = None, sleep: Sleeps | None = None) -> ClerkClient:
    return ClerkClient(key or standin.secret_key, standin.url, sleep=sleep or Sleeps(), timeout=5)


async def _pages(c: ClerkClient) -> list[list[dict[str, object]]]:
    async with c:
        return [await c.list_users(offset) for offset in (0, 500, 1000)]


def test_lists_pages_oldest_first_with_the_documented_parameters(standin: StandIn) -> None:
    pages = asyncio.run(_pages(client(standin)))
    assert [len(p) for p in pages] == [500, 500, 234]
    ids = [u["id"] for page in pages for u in page]
    assert ids == [u["id"] for u in standin.users]  # the whole list, in creation order
    assert pages[0][0] == standin.users[0]  # raw JSON, private_metadata and all
    request = standin.log[0]
    assert request.path == "/v1/users"
    assert request.query == {"limit": ["500"], "offset": ["0"], "order_by": ["+created_at"]}


def test_count_and_lookup_by_id(standin: StandIn) -> None:
    async def go() -> tuple[int, set[str]]:
        async with client(standin) as c:
            wanted = [f"user_{i:06d}bf" for i in range(0, 250)] + ["user_gone1", "user_gone2"]
            return await c.count_users(), await c.existing_user_ids(wanted)

    total, found = asyncio.run(go())
    assert total == 1234
    assert found == {f"user_{i:06d}bf" for i in range(250)}
    lookups = [r for r in standin.log if "user_id" in r.query]
    assert [len(r.query["user_id"]) for r in lookups] == [100, 100, 52]  # the API's limit of 100


def test_429_waits_for_retry_after_then_retries(standin: StandIn) -> None:
    standin.rate_limit_requests = {1, 2}
    sleeps = Sleeps()
    c = client(standin, sleep=sleeps)
    pages = asyncio.run(_pages(c))
    assert len(pages[0]) == 500
    assert sleeps.waits == [1.0, 1.0]
    assert c.retries["rate_limited"] == 2
    assert [r.status for r in standin.log[:3]] == [429, 429, 200]


def test_5xx_is_retried_with_backoff(standin: StandIn) -> None:
    standin.error_requests = {1, 2, 3}
    sleeps = Sleeps()
    c = client(standin, sleep=sleeps)
    assert len(asyncio.run(_pages(c))[0]) == 500
    assert c.retries["server_error"] == 3
    assert len(sleeps.waits) == 3 and sleeps.waits[0] < sleeps.waits[2]  # growing


def test_persistent_5xx_gives_up_after_the_last_attempt(standin: StandIn) -> None:
    standin.broken_from_offset = 0
    sleeps = Sleeps()
    with pytest.raises(ClerkAPIError, match=r"kept answering 500, 6 attempts"):
        asyncio.run(_pages(client(standin, sleep=sleeps)))
    assert len(standin.log) == 6
    assert len(sleeps.waits) == 5


def test_unreachable_api_is_retried_then_reported() -> None:
    sleeps = Sleeps()
    url = f"http://127.0.0.1:{support.free_port()}/v1"
    c = ClerkClient("sk_test_x", url, sleep=sleeps, max_attempts=3)
    with pytest.raises(
        ClerkAPIError, match=r"cannot reach .*/v1/users/count: ConnectError after 3"
    ):
        asyncio.run(c.count_users())
    assert len(sleeps.waits) == 2
    asyncio.run(c.close())


def test_wrong_key_fails_at_once_with_a_clear_message(standin: StandIn) -> None:
    sleeps = Sleeps()
    with pytest.raises(ClerkAuthError) as caught:
        asyncio.run(_pages(client(standin, key="sk_test_wrong", sleep=sleeps)))
    message = str(caught.value)
    assert message.startswith("CLERK_SECRET_KEY was rejected (401): check it is the secret key")
    assert "supply an active API key" in message  # Clerk's own words
    assert "sk_test_wrong" not in message
    assert "\n" not in message
    assert len(standin.log) == 1 and sleeps.waits == []


def test_an_answer_that_is_not_a_user_list_is_an_error(standin: StandIn) -> None:
    async def go() -> None:
        async with ClerkClient(standin.secret_key, standin.url + "/users/count") as c:
            await c.list_users(0)  # GET …/users/count/users: 404 from the stand-in

    with pytest.raises(ClerkAPIError, match=r"answered 404: Resource not found"):
        asyncio.run(go())

    standin.wrap_pages = True  # {"data": [...], "total_count": n}, the JavaScript SDK's shape
    with pytest.raises(ClerkAPIError, match=r"did not answer a JSON array of users"):
        asyncio.run(_pages(client(standin)))


def test_retry_after_parsing() -> None:
    assert retry_after("3") == 3.0
    assert retry_after("0.5") == 0.5
    assert retry_after(None) == 1.0
    assert retry_after("soon") == 1.0
    assert retry_after("86400") == MAX_RETRY_AFTER
    assert retry_after("-4") == 0.0
    in_five = email.utils.formatdate(time.time() + 5, usegmt=True)
    assert 3.0 <= retry_after(in_five) <= 5.0


def test_backoff_grows_and_is_capped() -> None:
    assert 0.25 <= backoff(1) <= 0.5
    assert 4.0 <= backoff(5) <= 8.0
    assert backoff(30) <= 20.0


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("CLERK_SECRET_KEY", "CLERK_API_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)


@pytest.mark.usefixtures("clean_env")
def test_settings_for_the_backend_api(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load_settings()
    assert settings.clerk_secret_key is None
    assert settings.clerk_api_url == "https://api.clerk.com/v1"
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_live_abc")
    monkeypatch.setenv("CLERK_API_URL", "http://127.0.0.1:9/v1/")
    settings = load_settings()
    assert (settings.clerk_secret_key, settings.clerk_api_url) == (
        "sk_live_abc",
        "http://127.0.0.1:9/v1",
    )


@pytest.mark.usefixtures("clean_env")
def test_a_key_that_is_not_a_secret_key_is_refused_without_echoing_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CLERK_SECRET_KEY", "pk_test_Y2xlcmsuZXhhbXBsZS5jb20k")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value).startswith("CLERK_SECRET_KEY: a Clerk secret key starts with 'sk_'")
    assert "Y2xlcmsu" not in str(caught.value)
    monkeypatch.setenv("CLERK_SECRET_KEY", "sk_test_x")
    monkeypatch.setenv("CLERK_API_URL", "api.clerk.com")
    with pytest.raises(ConfigError, match=r"^CLERK_API_URL: expected an http\(s\):// URL"):
        load_settings()


# --- organizations and memberships ------------------------------------------------------------


def with_organizations(standin: StandIn, organizations: int, memberships: int) -> None:
    standin.organizations = clerk_standin.clerk_organizations(organizations)
    standin.memberships = clerk_standin.clerk_memberships(
        memberships, standin.organizations, len(standin.users)
    )


def test_organization_and_membership_lists_page_as_documented(standin: StandIn) -> None:
    with_organizations(standin, 700, 1100)
    standin.organizations[3]["name"] = "Renamed since"  # memberships embed it as it is now

    async def go() -> list[Page]:
        async with client(standin) as c:
            return [
                await c.list_page("/organizations", 0),
                await c.list_page("/organizations", 500),
                await c.list_page("/organization_memberships", 1000),
                await c.list_page("/organizations", 500, 10),
            ]

    first, second, members, small = asyncio.run(go())
    assert (len(first.items), len(second.items), first.total) == (500, 200, 700)
    assert [o["id"] for o in first.items + second.items] == [o["id"] for o in standin.organizations]
    assert (len(members.items), members.total) == (100, 1100)
    member = members.items[3]  # membership 1003, in organization 303
    assert (
        member["public_user_data"]["user_id"]
        == standin.memberships[1003]["public_user_data"]["user_id"]
    )
    assert member["organization"]["id"] == "org_000303bf"
    assert len(small.items) == 10
    assert standin.log[0].query == {"limit": ["500"], "offset": ["0"], "order_by": ["+created_at"]}
    assert standin.log[2].path == "/v1/organization_memberships"
    embedded = asyncio.run(_first_membership_of(standin, "org_000003bf"))
    assert embedded["organization"]["name"] == "Renamed since"


async def _first_membership_of(standin: StandIn, org_id: str) -> dict[str, object]:
    async with client(standin) as c:
        page = await c.list_page(f"/organizations/{org_id}/memberships", 0)
        return page.items[0]


def test_organization_lists_refuse_what_clerk_refuses(standin: StandIn) -> None:
    with_organizations(standin, 3, 3)

    async def go(path: str, limit: int) -> Page:
        async with ClerkClient(standin.secret_key, standin.url, max_attempts=1) as c:
            return await c.list_page(path, 0, limit)

    for path in ("/organizations", "/organization_memberships"):
        with pytest.raises(ClerkAPIError, match="answered 422: limit must be between 1 and 500"):
            asyncio.run(go(path, 501))
    # The users' bare array is not the organizations' shape.
    with pytest.raises(ClerkAPIError, match=r"GET /users did not answer \{data"):
        asyncio.run(go("/users", 10))


def test_organization_lists_wait_for_retry_after_and_stop_on_a_wrong_key(
    standin: StandIn,
) -> None:
    with_organizations(standin, 3, 3)
    standin.rate_limit_requests, standin.retry_after = {1, 2}, "2"
    sleeps = Sleeps()

    async def go(key: str | None = None) -> Page:
        async with client(standin, key=key, sleep=sleeps) as c:
            return await c.list_page("/organization_memberships", 0)

    assert len(asyncio.run(go()).items) == 3
    assert sleeps.waits == [2.0, 2.0] and [r.status for r in standin.log] == [429, 429, 200]

    standin.log.clear()
    with pytest.raises(ClerkAuthError, match=r"CLERK_SECRET_KEY was rejected \(401\)"):
        asyncio.run(go("sk_test_wrong"))
    assert len(standin.log) == 1


def test_organizations_and_memberships_are_confirmed_by_lookups(standin: StandIn) -> None:
    with_organizations(standin, 10, 30)  # memberships i: organization i % 10, user i // 10
    m = standin.memberships

    async def go() -> tuple[set[str], set[str]]:
        async with client(standin) as c:
            orgs = await c.existing_organization_ids(["org_000001bf", "org_gone", "org_000009bf"])
            members = await c.existing_membership_ids(
                [
                    (m[0]["id"], "org_000000bf", "user_000000bf"),
                    (m[10]["id"], "org_000000bf", "user_000001bf"),
                    ("orgmem_rejoined_before", "org_000000bf", "user_000002bf"),  # not its id
                    ("orgmem_of_a_gone_org", "org_gone", "user_000000bf"),
                ]
            )
            return orgs, members

    orgs, members = asyncio.run(go())
    assert orgs == {"org_000001bf", "org_000009bf"}
    assert members == {m[0]["id"], m[10]["id"]}
    lookups = [(r.path, r.query.get("user_id"), r.status) for r in standin.log][3:]
    assert lookups == [
        (
            "/v1/organizations/org_000000bf/memberships",
            ["user_000000bf", "user_000001bf", "user_000002bf"],
            200,
        ),
        ("/v1/organizations/org_gone/memberships", ["user_000000bf"], 404),
    ]


# --- organization invitations -----------------------------------------------------------------


def test_the_instance_wide_invitation_list_pages_as_documented(standin: StandIn) -> None:
    with_organizations(standin, 30, 0)
    standin.invitations = clerk_standin.clerk_invitations(1100, standin.organizations)
    standin.organizations[4]["name"] = "Renamed since"  # public_organization_data is as it is now

    async def go() -> list[Page]:
        async with client(standin) as c:
            return [await c.list_page("/organization_invitations", at) for at in (0, 500, 1000)]

    pages = asyncio.run(go())
    assert [len(p.items) for p in pages] == [500, 500, 100]
    assert {p.total for p in pages} == {1100}
    listed = [x for p in pages for x in p.items]
    assert [x["id"] for x in listed] == [x["id"] for x in standin.invitations]  # oldest first
    invitation = listed[94]  # organization 4, accepted
    assert (invitation["status"], invitation["organization_id"]) == ("accepted", "org_000004bf")
    assert "user_id" not in invitation  # the list does not say who accepted
    assert invitation["public_organization_data"] == {
        "id": "org_000004bf",
        "name": "Renamed since",
        "slug": "org-4",
        "image_url": "https://img.clerk.com/org.png",
        "has_image": False,
    }
    assert [r.path for r in standin.log] == ["/v1/organization_invitations"] * 3
    assert standin.log[1].query == {
        "limit": ["500"],
        "offset": ["500"],
        "order_by": ["+created_at"],
    }


def test_the_stand_ins_invitation_filters_follow_clerks(standin: StandIn) -> None:
    """Not the client's (it lists every status): the stand-in's `status` filter and `order_by`,
    as Clerk documents them, so that what the tests serve is what Clerk would."""
    with_organizations(standin, 2, 0)
    now_ms = int(time.time() * 1000)
    inv = clerk_standin.clerk_invitations(8, standin.organizations)
    inv[0]["expires_at"] = now_ms + 86_400_000  # still open; the other pending ones expired
    standin.invitations = inv

    def ask(query: str) -> tuple[int, list[str]]:
        status, _, body = standin.answer(
            "GET",
            f"/v1/organization_invitations?{query}",
            {"authorization": f"Bearer {standin.secret_key}"},
        )
        return status, [x["id"][-4:-2] for x in body["data"]] if status == 200 else []

    # Clerk's default order is newest first.
    assert ask("status=pending&limit=10") == (200, ["00"])
    assert ask("status=expired&limit=10") == (200, ["07", "06", "04", "02", "01"])
    assert ask("status=accepted&status=revoked&limit=10") == (200, ["05", "03"])
    assert ask("status=accepted,revoked&order_by=%2Bcreated_at&limit=10") == (200, ["03", "05"])
    assert ask("order_by=-email_address&limit=2") == (200, ["07", "06"])
    assert ask("status=open")[0] == 422
    assert ask("order_by=%2Bname")[0] == 422


def test_the_invitation_list_refuses_what_clerk_refuses_and_retries_a_429(
    standin: StandIn,
) -> None:
    with_organizations(standin, 1, 0)
    standin.invitations = clerk_standin.clerk_invitations(3, standin.organizations)

    async def go(limit: int = 500, key: str | None = None, sleeps: Sleeps | None = None) -> Page:
        async with ClerkClient(
            key or standin.secret_key, standin.url, sleep=sleeps or Sleeps(), max_attempts=3
        ) as c:
            return await c.list_page("/organization_invitations", 0, limit)

    with pytest.raises(ClerkAPIError, match="answered 422: limit must be between 1 and 500"):
        asyncio.run(go(501))
    standin.log.clear()
    standin.rate_limit_requests, standin.retry_after = {1}, "3"
    sleeps = Sleeps()
    assert len(asyncio.run(go(sleeps=sleeps)).items) == 3
    assert sleeps.waits == [3.0] and [r.status for r in standin.log] == [429, 200]
    standin.log.clear()
    with pytest.raises(ClerkAuthError, match=r"CLERK_SECRET_KEY was rejected \(401\)"):
        asyncio.run(go(key="sk_test_wrong"))
    assert len(standin.log) == 1
