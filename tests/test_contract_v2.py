"""An outside team's acceptance check of the v2 contract (/work/shared/contract.md): clerk-sync is
used only as a user does (the CLI in subprocesses, `serve` on a free port, Svix-signed deliveries,
SQL reads of the public tables)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from clerk_sync.testing import (
    deleted_event,
    dumps,
    make_secret,
    membership_event,
    organization_event,
    signed_headers,
    user_event,
)
from tests import support

pytestmark = pytest.mark.slow

# The contract's example, verbatim.
CONTRACT_TOML = """\
[users.columns]
role = "public_metadata.role"                                    # text unless a type is given
plan = { path = "public_metadata.plan", type = "text", default = "free" }
credits = { path = "public_metadata.credits", type = "integer" }
stripe_customer_id = { path = "private_metadata.stripe_customer_id", private = true }

[organizations.columns]
tier = "public_metadata.tier"
"""

# The other conversions, for the CLERK_SYNC_CONFIG site.
TYPES_TOML = """\
[users.columns]
beta = { path = "public_metadata.beta", type = "boolean" }
tags = { path = "public_metadata.tags", type = "text[]" }
trial_ends_at = { path = "public_metadata.trial_ends_at", type = "timestamptz" }
big = { path = "public_metadata.big", type = "bigint" }
small = { path = "public_metadata.big", type = "integer", default = -1 }
score = { path = "public_metadata.score", type = "numeric" }
extra = { path = "public_metadata.extra", type = "jsonb" }
"""

T0 = 1_700_000_000_000


def env_for(**extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLERK_", "DATABASE_URL", "SUPABASE_")) and k not in ("HOST", "PORT")
    }
    env.update(extra)
    return env


def cli(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clerk_sync", *args],
        cwd=cwd,
        env=env_for(**env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class Site:
    """A fresh database, `migrate` run by the CLI, and `serve` on a free port."""

    def __init__(self, pg_server: str, cwd: Path, **env: str) -> None:
        self.cwd = cwd
        self.dsn = support.create_database(pg_server, migrate=False)
        self.secret, self.key = make_secret()
        self.env = {"DATABASE_URL": self.dsn, **env}
        result = cli(cwd, "migrate", **self.env)
        assert result.returncode == 0, result.stderr
        self.server = support.ServerProcess(
            env_for(CLERK_WEBHOOK_SECRET=self.secret, **self.env), cwd=cwd
        )
        self.server.wait_ready()

    def post(self, event: dict[str, Any], svix_id: str | None = None) -> httpx.Response:
        body = dumps(event)
        return httpx.post(
            self.server.webhook_url,
            content=body,
            headers=signed_headers(self.key, body, svix_id),
            timeout=30,
        )

    def outcome(self, event: dict[str, Any], svix_id: str | None = None) -> str:
        answer = self.post(event, svix_id)
        assert answer.status_code == 200, answer.text
        return str(answer.json()["outcome"])

    def one(self, query: str, *args: Any) -> dict[str, Any]:
        rows = support.fetch(self.dsn, query, *args)
        assert len(rows) == 1, rows
        return rows[0]

    def close(self, pg_server: str) -> None:
        self.server.stop()
        support.drop_database(pg_server, self.dsn)


def live_memberships(s: Site, org: str, user_id: str | None = None) -> list[dict[str, Any]]:
    """The live memberships of an organization (of one user in it), by id."""
    return support.fetch(
        s.dsn,
        "select id from public.organization_memberships where organization_id = $1"
        " and ($2::text is null or user_id = $2) and deleted_at is null order by id",
        org,
        user_id,
    )


@pytest.fixture(scope="module")
def site(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    cwd = tmp_path_factory.mktemp("contract-site")
    (cwd / "clerk-sync.toml").write_text(CONTRACT_TOML)
    s = Site(pg_server, cwd)
    yield s
    s.close(pg_server)


def user(user_id: str, updated_at: int, public: dict[str, Any], private: dict[str, Any]) -> Any:
    return user_event(
        "user.updated", user_id, updated_at, public_metadata=public, private_metadata=private
    )


# --- your own columns -------------------------------------------------------------------------


def test_the_contract_example_adds_typed_columns(site: Site) -> None:
    cols = support.fetch(
        site.dsn,
        "select table_name, column_name, data_type, column_default from information_schema.columns"
        " where table_schema = 'public' and column_name = any($1)"
        " and table_name in ('users', 'organizations')",
        ["role", "plan", "credits", "stripe_customer_id", "tier"],
    )
    types = {(c["table_name"], c["column_name"]): c["data_type"] for c in cols}
    assert types == {
        ("users", "role"): "text",
        ("users", "plan"): "text",
        ("users", "credits"): "integer",
        ("users", "stripe_customer_id"): "text",
        ("organizations", "tier"): "text",
    }


def test_values_convert_by_the_contract_rules(site: Site) -> None:
    public = {"role": "admin", "plan": "pro", "credits": 5}
    assert site.outcome(user("user_cc1", T0 + 1, public, {"stripe_customer_id": "cus_1"})) in (
        "applied",
    )
    row = site.one(
        "select role, plan, credits, stripe_customer_id from public.users where id = 'user_cc1'"
    )
    assert row == {"role": "admin", "plan": "pro", "credits": 5, "stripe_customer_id": "cus_1"}

    # 1.5 and "5" do not fit integer: the default (null), and the delivery still applies.
    assert site.outcome(user("user_cc1", T0 + 2, {**public, "credits": 1.5}, {})) == "applied"
    assert site.one("select credits from public.users where id = 'user_cc1'")["credits"] is None
    assert site.outcome(user("user_cc1", T0 + 3, {**public, "credits": "5"}, {})) == "applied"
    assert site.one("select credits from public.users where id = 'user_cc1'")["credits"] is None
    # 5.0 is an integral number.
    assert site.outcome(user("user_cc1", T0 + 4, {**public, "credits": 5.0}, {})) == "applied"
    assert site.one("select credits from public.users where id = 'user_cc1'")["credits"] == 5

    # A newer event without the value sets the default.
    assert site.outcome(user("user_cc1", T0 + 5, {"credits": 7}, {})) == "applied"
    row = site.one(
        "select role, plan, credits, stripe_customer_id from public.users where id = 'user_cc1'"
    )
    assert row == {"role": None, "plan": "free", "credits": 7, "stripe_customer_id": None}

    # An older event changes nothing.
    assert (
        site.outcome(user("user_cc1", T0 + 4, public, {"stripe_customer_id": "cus_old"})) == "stale"
    )
    row = site.one(
        "select role, plan, credits, stripe_customer_id from public.users where id = 'user_cc1'"
    )
    assert row == {"role": None, "plan": "free", "credits": 7, "stripe_customer_id": None}


def test_an_organization_column_is_filled(site: Site) -> None:
    assert (
        site.outcome(
            organization_event(
                "organization.created", "org_cc_tier", T0, public_metadata={"tier": "gold"}
            )
        )
        == "applied"
    )
    assert (
        site.one("select tier from public.organizations where id = 'org_cc_tier'")["tier"] == "gold"
    )


def test_schema_prints_the_columns(site: Site) -> None:
    result = cli(site.cwd, "schema", **site.env)
    assert result.returncode == 0, result.stderr
    for name in ("role", "plan", "credits", "stripe_customer_id", "tier"):
        assert name in result.stdout, name


@pytest.mark.parametrize(
    ("toml", "naming"),
    [
        (
            '[users.columns]\nstripe = { path = "private_metadata.stripe_customer_id" }\n',
            "stripe",
        ),
        ('[users.columns]\nrole = { path = "public_metadata.role", type = "varchar" }\n', "role"),
        ('[sessions.columns]\nx = "id"\n', "sessions"),
    ],
    ids=["private-without-private", "unknown-type", "unknown-section"],
)
def test_a_malformed_file_stops_the_command(
    tmp_path: Path, pg_server: str, toml: str, naming: str
) -> None:
    (tmp_path / "clerk-sync.toml").write_text(toml)
    dsn = support.create_database(pg_server, migrate=False)
    try:
        result = cli(tmp_path, "migrate", DATABASE_URL=dsn)
        assert result.returncode == 2, result.stdout + result.stderr
        assert "Traceback" not in result.stdout + result.stderr
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert "clerk-sync.toml" in lines[0] and naming in lines[0], lines[0]
    finally:
        support.drop_database(pg_server, dsn)


def test_config_path_other_types_and_migrate_filling(
    pg_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cwd = tmp_path_factory.mktemp("config-site")
    # The file in the working directory is broken: CLERK_SYNC_CONFIG must win over it.
    (cwd / "clerk-sync.toml").write_text("[nonsense.columns]\nx = 1\n")
    elsewhere = tmp_path_factory.mktemp("elsewhere") / "columns.toml"
    elsewhere.write_text(TYPES_TOML)
    s = Site(pg_server, cwd, CLERK_SYNC_CONFIG=str(elsewhere))
    try:
        public = {
            "beta": True,
            "tags": ["a", "b"],
            "trial_ends_at": T0,
            "big": 2**40,
            "score": 1.5,
            "extra": {"k": [1, "x"]},
        }
        assert s.outcome(user("user_types", T0 + 1, public, {})) == "applied"
        row = s.one(
            "select beta, tags, trial_ends_at, big, small, score::text as score, extra::text as extra"
            " from public.users where id = 'user_types'"
        )
        assert row["big"] == 2**40 and row["small"] == -1  # out of integer range: the default
        assert row["score"] == "1.5"
        assert row["extra"] == '{"k": [1, "x"]}'
        assert row["beta"] is True
        assert row["tags"] == ["a", "b"]
        assert int(row["trial_ends_at"].timestamp() * 1000) == T0
        # Not fitting: "true" for boolean, [1, 2] for text[], "soon" for timestamptz.
        bad = {"beta": "true", "tags": [1, 2], "trial_ends_at": "soon"}
        assert s.outcome(user("user_types", T0 + 2, bad, {})) == "applied"
        row = s.one("select beta, tags, trial_ends_at from public.users where id = 'user_types'")
        assert row == {"beta": None, "tags": None, "trial_ends_at": None}
        assert s.outcome(user("user_later", T0 + 1, {"later": "filled"}, {"stripe": "cus_9"})) == (
            "applied"
        )

        # A column declared after the rows were synced: `migrate` fills it, without Clerk
        # (CLERK_API_URL points nowhere).
        elsewhere.write_text(
            TYPES_TOML
            + 'later = { path = "public_metadata.later", type = "text" }\n'
            + 'stripe = { path = "private_metadata.stripe", private = true }\n'
        )
        result = cli(
            cwd,
            "migrate",
            **s.env,
            CLERK_API_URL="http://127.0.0.1:9/v1",
            CLERK_SECRET_KEY="sk_test_nothing",
        )
        assert result.returncode == 0, result.stderr
        row = s.one("select later, stripe from public.users where id = 'user_later'")
        assert row == {"later": "filled", "stripe": "cus_9"}
    finally:
        s.close(pg_server)


# --- organizations and memberships --------------------------------------------------------------


def test_organization_events_and_their_outcomes(site: Site) -> None:
    org = "org_cc_life"
    assert (
        site.outcome(organization_event("organization.created", org, T0 + 10, name="A"))
        == "applied"
    )
    svix_id = "msg_cc_org_update"
    update = organization_event("organization.updated", org, T0 + 20, name="B")
    assert site.outcome(update, svix_id) == "applied"
    assert site.outcome(update, svix_id) == "duplicate"
    assert (
        site.outcome(organization_event("organization.updated", org, T0 + 15, name="C")) == "stale"
    )
    assert (
        site.outcome(organization_event("organization.updated", org, T0 + 20, name="D")) == "stale"
    )
    row = site.one(
        "select name, slug, max_allowed_memberships, admin_delete_enabled, created_by,"
        " public_metadata, deleted_at, updated_at from public.organizations where id = $1",
        org,
    )
    assert row["name"] == "B" and row["slug"] == "acme" and row["created_by"] == "user_creator"
    assert row["max_allowed_memberships"] == 5 and row["admin_delete_enabled"] is True
    assert row["deleted_at"] is None
    assert int(row["updated_at"].timestamp() * 1000) == T0 + 20

    m = "orgmem_cc_life"
    assert (
        site.outcome(
            membership_event("organizationMembership.created", m, org, "user_cc_m", T0 + 30)
        )
        == "applied"
    )
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.updated", m, org, "user_cc_m", T0 + 40, role="org:admin"
            )
        )
        == "applied"
    )
    row = site.one(
        "select organization_id, user_id, role, permissions, deleted_at"
        " from public.organization_memberships where id = $1",
        m,
    )
    assert row == {
        "organization_id": org,
        "user_id": "user_cc_m",
        "role": "org:admin",
        "permissions": ["org:posts:read"],
        "deleted_at": None,
    }
    assert (
        site.outcome(
            membership_event("organizationMembership.deleted", m, org, "user_cc_m", T0 + 50)
        )
        == "applied"
    )
    assert (
        site.one("select deleted_at from public.organization_memberships where id = $1", m)[
            "deleted_at"
        ]
        is not None
    )
    assert (
        site.outcome(
            membership_event("organizationMembership.updated", m, org, "user_cc_m", T0 + 60)
        )
        == "stale"
    )


def test_membership_before_its_organization(site: Site) -> None:
    event = membership_event(
        "organizationMembership.created",
        "orgmem_cc_early",
        "org_cc_early",
        "user_cc_nobody_yet",
        T0 + 5,
        org_updated_at=T0 + 5,
        name="Early",
    )
    assert site.outcome(event) == "applied"
    assert (
        site.one("select name from public.organizations where id = 'org_cc_early'")["name"]
        == "Early"
    )
    assert (
        site.outcome(
            organization_event("organization.created", "org_cc_early", T0 + 1, name="Older")
        )
        == "stale"
    )


def test_organization_delete_ends_memberships_and_a_second_delete_is_stale(site: Site) -> None:
    org = "org_cc_gone"
    assert site.outcome(organization_event("organization.created", org, T0)) == "applied"
    for i in range(2):
        assert (
            site.outcome(
                membership_event(
                    "organizationMembership.created",
                    f"orgmem_cc_gone{i}",
                    org,
                    f"user_cc_g{i}",
                    T0 + 1,
                )
            )
            == "applied"
        )
    assert site.outcome(organization_event("organization.deleted", org, 0)) == "applied"
    assert (
        site.one("select deleted_at from public.organizations where id = $1", org)["deleted_at"]
        is not None
    )
    live = live_memberships(site, org)
    assert live == []
    assert site.outcome(organization_event("organization.deleted", org, 0)) == "stale"
    assert site.outcome(organization_event("organization.updated", org, T0 + 99)) == "stale"
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.created", "orgmem_cc_gone9", org, "user_cc_g9", T0 + 99
            )
        )
        == "stale"
    )


def test_rejoin_keeps_one_live_membership(site: Site) -> None:
    org, u = "org_cc_rejoin", "user_cc_rejoin"
    first = membership_event(
        "organizationMembership.created", "orgmem_cc_r1", org, u, T0 + 1, created_at=T0 + 1
    )
    assert site.outcome(first) == "applied"
    # Left, then rejoined with a new membership id.
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.deleted", "orgmem_cc_r1", org, u, T0 + 2, created_at=T0 + 1
            )
        )
        == "applied"
    )
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.created", "orgmem_cc_r2", org, u, T0 + 3, created_at=T0 + 3
            )
        )
        == "applied"
    )
    # A third one created later while r2 is live: r3 is the live one.
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.created", "orgmem_cc_r3", org, u, T0 + 4, created_at=T0 + 4
            )
        )
        == "applied"
    )
    live = live_memberships(site, org, u)
    assert live == [{"id": "orgmem_cc_r3"}]
    # An update of the ended r2 does not bring it back as a second live one.
    assert site.outcome(
        membership_event(
            "organizationMembership.updated", "orgmem_cc_r2", org, u, T0 + 5, created_at=T0 + 3
        )
    ) in ("applied", "stale")
    live = live_memberships(site, org, u)
    assert live == [{"id": "orgmem_cc_r3"}]


def test_private_metadata_never_reaches_public_tables(site: Site) -> None:
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.created",
                "orgmem_cc_priv",
                "org_cc_priv",
                "user_cc_priv",
                T0,
            )
        )
        == "applied"
    )
    assert (
        site.outcome(user("user_cc_priv", T0, {}, {"secret": "never in public.users"})) == "applied"
    )
    columns = support.fetch(
        site.dsn,
        "select table_name from information_schema.columns where table_schema = 'public'"
        " and column_name = 'private_metadata'",
    )
    assert columns == []
    for table in ("users", "organizations", "organization_memberships"):
        rows = support.fetch(site.dsn, f"select t::text as t from public.{table} t")
        assert rows and not any("never in public" in r["t"] for r in rows), table


# --- HTTP answers --------------------------------------------------------------------------------


def test_http_error_answers(site: Site) -> None:
    url = site.server.webhook_url
    body = dumps(user_event("user.created", "user_cc_http", T0))

    answer = httpx.post(url, content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 400 and answer.json()["error"]

    other_key = make_secret()[1]
    answer = httpx.post(url, content=body, headers=signed_headers(other_key, body))
    assert answer.status_code == 401 and answer.json()["error"]

    stale_ts = signed_headers(site.key, body, timestamp=int(__import__("time").time()) - 301)
    answer = httpx.post(url, content=body, headers=stale_ts)
    assert answer.status_code == 401 and answer.json()["error"]

    big = b'{"type": "user.created", "data": {"pad": "' + b"x" * (1024 * 1024) + b'"}}'
    answer = httpx.post(url, content=big, headers=signed_headers(site.key, big))
    assert answer.status_code == 413 and answer.json()["error"]

    not_clerk = b'{"hello": "world"}'
    answer = httpx.post(url, content=not_clerk, headers=signed_headers(site.key, not_clerk))
    assert answer.status_code == 400 and answer.json()["error"]

    assert support.fetch(site.dsn, "select id from public.users where id = 'user_cc_http'") == []


def test_a_membership_created_earlier_never_becomes_live(site: Site) -> None:
    org, u = "org_cc_order", "user_cc_order"
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.created", "orgmem_cc_o2", org, u, T0 + 9, created_at=T0 + 9
            )
        )
        == "applied"
    )
    # An older membership of the same pair arrives late: it is kept ended, never live.
    site.outcome(
        membership_event(
            "organizationMembership.created", "orgmem_cc_o1", org, u, T0 + 1, created_at=T0 + 1
        )
    )
    live = live_memberships(site, org, u)
    assert live == [{"id": "orgmem_cc_o2"}]


def test_user_deleted_ends_their_memberships_and_later_ones_are_stale(site: Site) -> None:
    org, u = "org_cc_udel", "user_cc_udel"
    assert site.outcome(user("user_cc_udel", T0, {}, {})) == "applied"
    assert (
        site.outcome(
            membership_event("organizationMembership.created", "orgmem_cc_ud1", org, u, T0 + 1)
        )
        == "applied"
    )
    assert site.outcome(deleted_event(u)) == "applied"
    assert (
        site.one(
            "select deleted_at from public.organization_memberships where id = 'orgmem_cc_ud1'"
        )["deleted_at"]
        is not None
    )
    assert (
        site.outcome(
            membership_event("organizationMembership.created", "orgmem_cc_ud2", org, u, T0 + 2)
        )
        == "stale"
    )


def test_an_embedded_newer_organization_is_written_even_when_the_membership_is_stale(
    site: Site,
) -> None:
    org, u, m = "org_cc_emb", "user_cc_emb", "orgmem_cc_emb"
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.created", m, org, u, T0 + 10, org_updated_at=T0
            )
        )
        == "applied"
    )
    older_membership = membership_event(
        "organizationMembership.updated", m, org, u, T0 + 5, org_updated_at=T0 + 50, name="Renamed"
    )
    assert site.outcome(older_membership) == "applied"  # a row changed: the organization
    assert site.one("select name from public.organizations where id = $1", org)["name"] == "Renamed"


# --- inbox retention (runs last: it drops this site's payloads) ----------------------------------


def has_text(row_text: str, needle: str) -> bool:
    """The needle in a row's text, as is or hex-encoded (a bytea payload)."""
    return needle in row_text or needle.encode().hex() in row_text


def test_zz_payload_retention_zero_drops_payloads_and_replay_says_so(site: Site) -> None:
    svix_id = "msg_cc_retention"
    assert site.outcome(user("user_cc_ret", T0, {}, {}), svix_id) == "applied"
    dead_id = "msg_cc_dead"
    dead = site.post(
        {"object": "event", "type": "user.created", "data": {"object": "user"}}, dead_id
    )
    assert dead.status_code == 400 and dead.headers.get("webhook-delivery") == "abort-message"

    before = support.fetch(site.dsn, "select i::text as t from clerk_sync.inbox i")
    assert any(svix_id in r["t"] and has_text(r["t"], "first_name") for r in before)

    # The default (3 days) keeps a fresh payload.
    result = cli(site.cwd, "purge", **site.env)
    assert result.returncode == 0, result.stderr
    after = support.fetch(site.dsn, "select i::text as t from clerk_sync.inbox i")
    assert any(svix_id in r["t"] and has_text(r["t"], "first_name") for r in after)

    result = cli(site.cwd, "purge", **site.env, CLERK_SYNC_PAYLOAD_RETENTION_DAYS="0")
    assert result.returncode == 0, result.stderr
    rows = support.fetch(site.dsn, "select i::text as t from clerk_sync.inbox i")
    kept = [r["t"] for r in rows if svix_id in r["t"]]
    assert len(kept) == 1  # the row stays (30 days) ...
    assert "user_cc_ret" in kept[0] and not has_text(kept[0], "first_name")  # ... not its payload
    dead_rows = [r["t"] for r in rows if dead_id in r["t"]]
    assert len(dead_rows) == 1 and has_text(dead_rows[0], '"object"')  # a dead letter keeps it

    result = cli(site.cwd, "replay", "--svix-id", svix_id, **site.env)
    assert "Traceback" not in result.stdout + result.stderr
    assert "payload" in (result.stdout + result.stderr).lower(), result.stdout + result.stderr
    assert result.returncode == 1  # replay's "could not be applied"


EDGE_TOML = """\
[users.columns]
n_int = { path = "public_metadata.v", type = "integer" }
n_big = { path = "public_metadata.v", type = "bigint" }
n_num = { path = "public_metadata.v", type = "numeric" }
n_bool = { path = "public_metadata.v", type = "boolean" }
n_text = { path = "public_metadata.v", type = "text" }
n_arr = { path = "public_metadata.v", type = "text[]" }
n_ts = { path = "public_metadata.v", type = "timestamptz" }
"""


@pytest.fixture(scope="module")
def edge_site(pg_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    cwd = tmp_path_factory.mktemp("edge-site")
    (cwd / "clerk-sync.toml").write_text(EDGE_TOML)
    s = Site(pg_server, cwd)
    yield s
    s.close(pg_server)


# value -> which of the columns take it (the others stay null), per the contract's rules.
EDGE_CASES: list[tuple[Any, set[str]]] = [
    (True, {"n_bool"}),
    (False, {"n_bool"}),
    (5, {"n_int", "n_big", "n_num", "n_ts"}),
    (2**31 - 1, {"n_int", "n_big", "n_num", "n_ts"}),
    (2**31, {"n_big", "n_num", "n_ts"}),
    (2**63, {"n_num"}),
    (1.5, {"n_num"}),
    ("1.5", {"n_text"}),
    ("5", {"n_text"}),
    (["a"], {"n_arr"}),
    ([], {"n_arr"}),
    (["a", 1], set()),
    ({"a": 1}, set()),
    (None, set()),
]


@pytest.mark.parametrize(("value", "taken_by"), EDGE_CASES, ids=[repr(v) for v, _ in EDGE_CASES])
def test_a_value_converts_only_when_its_json_type_fits(
    edge_site: Site, value: Any, taken_by: set[str]
) -> None:
    user_id = "user_edge_" + str(abs(hash(repr(value))))
    assert edge_site.outcome(user(user_id, T0, {"v": value}, {})) == "applied"
    row = edge_site.one(
        "select n_int, n_big, n_num, n_bool, n_text, n_arr, n_ts from public.users where id = $1",
        user_id,
    )
    taken = {name for name, v in row.items() if v is not None}
    assert taken == taken_by, row


def test_deletes_that_arrive_first_still_win(site: Site) -> None:
    assert site.outcome(organization_event("organization.deleted", "org_cc_first", 0)) == "applied"
    assert site.outcome(organization_event("organization.created", "org_cc_first", T0)) == "stale"
    rows = support.fetch(
        site.dsn, "select deleted_at from public.organizations where id = 'org_cc_first'"
    )
    assert rows == [] or rows[0]["deleted_at"] is not None
    m = "orgmem_cc_first"
    deleted = membership_event(
        "organizationMembership.deleted", m, "org_cc_m1", "user_cc_m1", T0 + 2
    )
    assert site.outcome(deleted) == "applied"
    created = membership_event(
        "organizationMembership.created", m, "org_cc_m1", "user_cc_m1", T0 + 1
    )
    site.outcome(created)  # may be applied for its embedded organization
    live = support.fetch(
        site.dsn,
        "select id from public.organization_memberships where id = $1 and deleted_at is null",
        m,
    )
    assert live == []
    assert (
        site.outcome(
            membership_event("organizationMembership.updated", m, "org_cc_m1", "user_cc_m1", T0 + 9)
        )
        == "stale"
    )


def test_hard_delete_mode_removes_rows_and_they_stay_gone(
    pg_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    s = Site(pg_server, tmp_path_factory.mktemp("hard-site"), CLERK_SYNC_DELETE_MODE="hard")
    try:
        org = "org_cc_hard"
        assert s.outcome(organization_event("organization.created", org, T0)) == "applied"
        assert (
            s.outcome(
                membership_event(
                    "organizationMembership.created", "orgmem_cc_h1", org, "user_h", T0 + 1
                )
            )
            == "applied"
        )
        assert (
            s.outcome(
                membership_event(
                    "organizationMembership.created", "orgmem_cc_h2", org, "user_i", T0 + 1
                )
            )
            == "applied"
        )
        assert (
            s.outcome(
                membership_event(
                    "organizationMembership.deleted", "orgmem_cc_h2", org, "user_i", T0 + 2
                )
            )
            == "applied"
        )
        assert (
            support.fetch(
                s.dsn, "select id from public.organization_memberships where id = 'orgmem_cc_h2'"
            )
            == []
        )
        assert s.outcome(organization_event("organization.deleted", org, 0)) == "applied"
        assert support.fetch(s.dsn, "select id from public.organizations where id = $1", org) == []
        live = live_memberships(s, org)
        assert live == []
        assert s.outcome(organization_event("organization.updated", org, T0 + 5)) == "stale"
        assert (
            s.outcome(
                membership_event(
                    "organizationMembership.updated",
                    "orgmem_cc_h1",
                    org,
                    "user_h",
                    T0 + 5,
                    org_updated_at=T0 + 5,
                )
            )
            == "stale"
        )
        assert support.fetch(s.dsn, "select id from public.organizations where id = $1", org) == []
    finally:
        s.close(pg_server)


def test_concurrent_memberships_of_one_pair_leave_the_latest_live(site: Site) -> None:
    import random
    from concurrent.futures import ThreadPoolExecutor

    org, u = "org_cc_conc", "user_cc_conc"
    events = [
        membership_event(
            "organizationMembership.created",
            f"orgmem_cc_c{i:02d}",
            org,
            u,
            T0 + i,
            created_at=T0 + i,
            org_updated_at=T0 + i,
            name=f"N{i:02d}",
        )
        for i in range(24)
    ]
    random.Random(7).shuffle(events)
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(site.post, events))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    live = live_memberships(site, org, u)
    assert live == [{"id": "orgmem_cc_c23"}]
    assert site.one("select name from public.organizations where id = $1", org)["name"] == "N23"


def test_http_edges_of_the_answer_table(site: Site) -> None:
    import time

    url = site.server.webhook_url
    event = organization_event("organization.created", "org_cc_edges", T0)
    body = dumps(event)
    # 300 s ahead is accepted (inclusive tolerance; the server's clock only moves towards it).
    headers = signed_headers(site.key, body, timestamp=int(time.time()) + 300)
    answer = httpx.post(url, content=body, headers=headers)
    assert answer.status_code == 200 and answer.json() == {"outcome": "applied"}
    # The webhook-* spelling of the headers (Standard Webhooks) works too.
    body2 = dumps(organization_event("organization.updated", "org_cc_edges", T0 + 1))
    h = signed_headers(site.key, body2)
    std = {"content-type": "application/json"} | {
        k.replace("svix-", "webhook-"): v for k, v in h.items() if k.startswith("svix-")
    }
    answer = httpx.post(url, content=body2, headers=std)
    assert answer.status_code == 200 and answer.json() == {"outcome": "applied"}
    # A malformed timestamp header: 400.
    bad = {**signed_headers(site.key, body), "svix-timestamp": "yesterday"}
    answer = httpx.post(url, content=body, headers=bad)
    assert answer.status_code == 400 and answer.json()["error"]
    # Verified but not JSON: 400.
    answer = httpx.post(url, content=b"not json", headers=signed_headers(site.key, b"not json"))
    assert answer.status_code == 400 and answer.json()["error"]
    # Verified, JSON with a type but no data: 400.
    no_data = b'{"type": "organization.created"}'
    answer = httpx.post(url, content=no_data, headers=signed_headers(site.key, no_data))
    assert answer.status_code == 400 and answer.json()["error"]


def test_other_events_keep_or_fill_the_custom_columns(site: Site) -> None:
    from clerk_sync.testing import session_event

    public = {"role": "owner", "plan": "team", "credits": 3}
    assert site.outcome(user("user_cc_sess", T0 + 1, public, {"stripe_customer_id": "cus_s"})) == (
        "applied"
    )
    # session.created changes nothing but last_sign_in_at.
    assert site.outcome(session_event("user_cc_sess", T0 + 100, T0 + 100)) == "applied"
    row = site.one(
        "select role, plan, credits, stripe_customer_id, last_sign_in_at from public.users"
        " where id = 'user_cc_sess'"
    )
    assert int(row.pop("last_sign_in_at").timestamp() * 1000) == T0 + 100
    assert row == {"role": "owner", "plan": "team", "credits": 3, "stripe_customer_id": "cus_s"}
    # An organization written from a membership's embedded copy gets its columns too.
    assert (
        site.outcome(
            membership_event(
                "organizationMembership.created",
                "orgmem_cc_tier",
                "org_cc_emb_tier",
                "user_cc_sess",
                T0,
                public_metadata={"tier": "silver"},
            )
        )
        == "applied"
    )
    assert site.one("select tier from public.organizations where id = 'org_cc_emb_tier'") == {
        "tier": "silver"
    }


def test_serve_adds_and_fills_columns_declared_later(
    pg_server: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    cwd = tmp_path_factory.mktemp("later-site")
    s = Site(pg_server, cwd)
    try:
        assert (
            s.outcome(user("user_cc_l1", T0, {"tier": "x", "n": "7"}, {"p": "cus_l"})) == "applied"
        )
        assert (
            s.outcome(
                membership_event(
                    "organizationMembership.created",
                    "orgmem_cc_l1",
                    "org_cc_l1",
                    "user_cc_l1",
                    T0,
                    public_metadata={"tier": "gold"},
                )
            )
            == "applied"
        )
        s.server.stop()
        (cwd / "clerk-sync.toml").write_text(
            "[users.columns]\n"
            'n = { path = "public_metadata.n", type = "integer", default = 0 }\n'
            'p = { path = "private_metadata.p", private = true }\n'
            "[organizations.columns]\n"
            'tier = "public_metadata.tier"\n'
            "[organization_memberships.columns]\n"
            'org_role = "role"\n'
        )
        s.server = support.ServerProcess(env_for(CLERK_WEBHOOK_SECRET=s.secret, **s.env), cwd=cwd)
        s.server.wait_ready()
        assert s.one("select n, p from public.users where id = 'user_cc_l1'") == {
            "n": 0,  # "7" does not fit integer: the default
            "p": "cus_l",
        }
        assert s.one("select tier from public.organizations where id = 'org_cc_l1'") == {
            "tier": "gold"
        }
        assert s.one(
            "select org_role from public.organization_memberships where id = 'orgmem_cc_l1'"
        ) == {"org_role": "org:member"}
    finally:
        s.close(pg_server)


def test_nulls_equal_times_and_a_deleted_user_never_seen(site: Site) -> None:
    org, u, m = "org_cc_null", "user_cc_never", "orgmem_cc_null"
    event = membership_event("organizationMembership.created", m, org, u, T0 + 1)
    event["data"]["permissions"] = None
    event["data"]["public_metadata"] = None
    event["data"]["organization"]["public_metadata"] = None
    assert site.outcome(event) == "applied"
    row = site.one(
        "select permissions, public_metadata::text as pm from public.organization_memberships"
        " where id = $1",
        m,
    )
    assert row == {"permissions": [], "pm": "{}"}
    org_pm = site.one(
        "select public_metadata::text as pm from public.organizations where id = $1", org
    )
    assert org_pm == {"pm": "{}"}
    # An equal updated_at is stale.
    same = membership_event("organizationMembership.updated", m, org, u, T0 + 1, role="org:admin")
    assert site.outcome(same) == "stale"
    assert site.one("select role from public.organization_memberships where id = $1", m) == {
        "role": "org:member"
    }
    # The user was never synced; their user.deleted still ends the membership.
    assert site.outcome(deleted_event(u)) == "applied"
    assert site.one(
        "select deleted_at is not null as ended from public.organization_memberships where id = $1",
        m,
    ) == {"ended": True}


def test_an_embedded_copy_does_not_revive_a_deleted_organization(site: Site) -> None:
    org = "org_cc_norevive"
    assert site.outcome(organization_event("organization.created", org, T0)) == "applied"
    assert site.outcome(organization_event("organization.deleted", org, 0)) == "applied"
    late = membership_event(
        "organizationMembership.created",
        "orgmem_cc_nr",
        org,
        "user_cc_nr",
        T0 + 50,
        org_updated_at=T0 + 50,
        name="Revived?",
    )
    assert site.outcome(late) == "stale"
    row = site.one("select name, deleted_at from public.organizations where id = $1", org)
    assert row["name"] == "Acme" and row["deleted_at"] is not None


def test_an_organization_delete_racing_its_memberships_leaves_none_live(site: Site) -> None:
    from concurrent.futures import ThreadPoolExecutor

    org = "org_cc_race"
    assert site.outcome(organization_event("organization.created", org, T0)) == "applied"
    events = [
        membership_event(
            "organizationMembership.created", f"orgmem_cc_race{i}", org, f"user_r{i}", T0 + 1
        )
        for i in range(20)
    ]
    events.insert(10, organization_event("organization.deleted", org, 0))
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(site.post, events))
    assert all(a.status_code == 200 for a in answers), [a.text for a in answers]
    live = live_memberships(site, org)
    assert live == []
