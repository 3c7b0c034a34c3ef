"""The Supabase lockdown (sql/repeatable/90_supabase.sql), proven as Supabase's roles on the real test PostgreSQL.

The test database gets Supabase's roles and `auth.jwt()` before it is migrated, as a Supabase
project has them. Each check then runs as PostgREST runs a request: in a transaction, after
`set local role` and `request.jwt.claims`. On plain PostgreSQL the migration skips the lockdown
and says so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from clerk_sync import migrations
from tests import support
from tests.postgrest_standin import (
    AUTH_JWT_SQL,
    SUPABASE_AUTH_SQL,
    create_supabase_database,
    create_supabase_roles,
)
from tests.test_cli import clerk_sync as run_cli

USER_A, USER_B = "user_a", "user_b"
T = 1_700_000_000_000
SKIPPED = "skipped the row-level security and grants"


@pytest.fixture(scope="module")
def supabase_db(pg_server: str) -> Iterator[str]:
    dsn = create_supabase_database(pg_server)
    try:
        for n, user_id in enumerate((USER_A, USER_B)):
            event = support.user_event(
                "user.created", user_id, 1_700_000_000_000, email=f"{n}@x.io"
            )
            got = as_role(
                dsn,
                "service_role",
                "select public.clerk_sync_apply($1, $2::jsonb, 'soft') as outcome",
                f"msg_{user_id}",
                json.dumps(event),
            )
            assert got == [{"outcome": "applied"}]
        yield dsn
    finally:
        support.drop_database(pg_server, dsn)


def as_role(
    dsn: str, role: str, query: str, *args: Any, claims: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """Run `query` as PostgREST would for a request with this role and these JWT claims."""

    async def go() -> list[dict[str, Any]]:
        conn = await asyncpg.connect(dsn, timeout=10)
        try:
            async with conn.transaction():
                await conn.execute(f"set local role {role}")
                await conn.execute(
                    "select set_config('request.jwt.claims', $1, true)",
                    json.dumps(claims if claims is not None else {"role": role}),
                )
                return [dict(r) for r in await conn.fetch(query, *args)]
        finally:
            await conn.close()

    return list(support.run(go()))


WRITES = [
    "insert into public.users (id) values ('user_forged')",
    "update public.users set first_name = 'Mallory'",
    f"update public.users set first_name = 'Mallory' where id = '{USER_A}'",
    f"delete from public.users where id = '{USER_B}'",
    "truncate public.users",
]
FUNCTIONS = [
    "select public.clerk_sync_apply('msg_forged', "
    """'{"type": "user.created", "data": {"id": "user_forged", "updated_at": 1}}', 'soft')""",
    "select public.clerk_sync_record_invalid('msg_forged', '\\x00', 'forged')",
    "select public.clerk_sync_schema_version()",
]
BOOKKEEPING = [
    "select * from clerk_sync.inbox",
    "select * from clerk_sync.tombstones",
    "select * from clerk_sync.pending_sign_ins",
    "select * from clerk_sync.schema_migrations",
    "insert into clerk_sync.inbox (svix_id, outcome) values ('msg_forged', 'applied')",
    "select clerk_sync.ms_to_timestamptz('1')",
]
HELPERS = ("clerk_sync_active_org_id", "clerk_sync_is_member", "clerk_sync_org_role")
SIGNED_IN_AS_A = {"sub": USER_A, "role": "authenticated", "iss": "https://clerk.example.com"}


def assert_denied(dsn: str, role: str, query: str, claims: dict[str, Any] | None = None) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        as_role(dsn, role, query, claims=claims)


@pytest.mark.parametrize("query", ["select * from public.users", *WRITES, *FUNCTIONS, *BOOKKEEPING])
def test_anon_can_do_nothing(supabase_db: str, query: str) -> None:
    assert_denied(supabase_db, "anon", query)


def test_a_signed_in_user_reads_exactly_their_own_row(supabase_db: str) -> None:
    rows = as_role(
        supabase_db, "authenticated", "select * from public.users", claims=SIGNED_IN_AS_A
    )
    assert [r["id"] for r in rows] == [USER_A]
    assert rows[0]["email"] == "0@x.io"
    other = f"select * from public.users where id = '{USER_B}'"
    assert as_role(supabase_db, "authenticated", other, claims=SIGNED_IN_AS_A) == []
    # Another user sees only theirs; a token without a sub sees nothing.
    as_b = {**SIGNED_IN_AS_A, "sub": USER_B}
    rows = as_role(supabase_db, "authenticated", "select id from public.users", claims=as_b)
    assert rows == [{"id": USER_B}]
    for claims in ({"role": "authenticated"}, {}):
        assert (
            as_role(supabase_db, "authenticated", "select id from public.users", claims=claims)
            == []
        )


@pytest.mark.parametrize("query", [*WRITES, *FUNCTIONS, *BOOKKEEPING])
def test_a_signed_in_user_cannot_write_call_or_read_bookkeeping(
    supabase_db: str, query: str
) -> None:
    assert_denied(supabase_db, "authenticated", query, claims=SIGNED_IN_AS_A)


def test_nothing_changed_after_the_attempts(supabase_db: str) -> None:
    rows = support.fetch(supabase_db, "select id, first_name from public.users order by id")
    assert rows == [{"id": USER_A, "first_name": "Ada"}, {"id": USER_B, "first_name": "Ada"}]
    inbox = support.fetch(supabase_db, "select svix_id from clerk_sync.inbox order by 1")
    assert inbox == [{"svix_id": f"msg_{USER_A}"}, {"svix_id": f"msg_{USER_B}"}]


def test_the_service_role_calls_the_functions(supabase_db: str) -> None:
    event = support.user_event("user.updated", USER_A, 1_700_000_000_001, first_name="Grace")
    apply = "select public.clerk_sync_apply($1, $2::jsonb, 'soft') as outcome"
    assert as_role(supabase_db, "service_role", apply, "msg_sr", json.dumps(event)) == [
        {"outcome": "applied"}
    ]
    record = "select public.clerk_sync_record_invalid('msg_sr_bad', '\\x00', 'bad')"
    as_role(supabase_db, "service_role", record)
    version = as_role(supabase_db, "service_role", "select public.clerk_sync_schema_version() as v")
    assert version == [{"v": migrations.latest_version()}]
    rows = as_role(
        supabase_db, "service_role", "select id, first_name from public.users order by id"
    )
    assert rows == [{"id": USER_A, "first_name": "Grace"}, {"id": USER_B, "first_name": "Ada"}]


def test_the_catalog_says_the_same(supabase_db: str) -> None:
    [table] = support.fetch(
        supabase_db,
        "select relrowsecurity, relforcerowsecurity from pg_class where oid = 'public.users'::regclass",
    )
    assert table == {"relrowsecurity": True, "relforcerowsecurity": False}
    policies = support.fetch(
        supabase_db,
        """select cmd, roles::text[] as roles, qual from pg_policies
           where schemaname = 'public' and tablename = 'users'""",
    )
    assert len(policies) == 1
    assert policies[0]["cmd"] == "SELECT" and policies[0]["roles"] == ["authenticated"]
    assert "auth.jwt()" in policies[0]["qual"] and "'sub'" in policies[0]["qual"]
    functions = support.fetch(
        supabase_db,
        """select p.proname, p.prosecdef,
                  has_function_privilege('anon', p.oid, 'execute') as anon,
                  has_function_privilege('authenticated', p.oid, 'execute') as authenticated,
                  has_function_privilege('service_role', p.oid, 'execute') as service_role,
                  coalesce(array_to_string(p.proconfig, ','), '') as config
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = 'public' and p.proname like 'clerk\\_sync\\_%' order by 1""",
    )
    # Every clerk-sync function in public, whichever migration added it; the app's helpers are
    # the signed-in user's alone.
    assert {"clerk_sync_apply", "clerk_sync_record_invalid", "clerk_sync_schema_version"} <= {
        f["proname"] for f in functions
    }
    assert set(HELPERS) <= {f["proname"] for f in functions}
    for f in functions:
        assert f["prosecdef"], f
        assert "search_path=" in f["config"], f  # a SECURITY DEFINER function pins its path
        expected = (False, True, False) if f["proname"] in HELPERS else (False, False, True)
        assert (f["anon"], f["authenticated"], f["service_role"]) == expected, f
    for table in ("organizations", "organization_memberships"):  # invitations: below
        [row] = support.fetch(
            supabase_db,
            f"select relrowsecurity from pg_class where oid = 'public.{table}'::regclass",
        )
        assert row == {"relrowsecurity": True}
        cmds = support.fetch(
            supabase_db,
            "select cmd, roles::text[] as roles from pg_policies"
            f" where schemaname = 'public' and tablename = '{table}'",
        )
        assert cmds == [{"cmd": "SELECT", "roles": ["authenticated"]}]
    for role in ("anon", "authenticated"):
        [usage] = support.fetch(
            supabase_db, f"select has_schema_privilege('{role}', 'clerk_sync', 'usage') as u"
        )
        assert usage == {"u": False}


def test_the_schema_script_applies_twice_on_supabase(pg_server: str) -> None:
    dsn = support.create_database(pg_server, migrate=False)
    try:
        support.execute(dsn, SUPABASE_AUTH_SQL)
        script = migrations.render_schema()
        support.execute(dsn, script)
        support.execute(dsn, script)
        policies = support.fetch(
            dsn, "select policyname from pg_policies where tablename = 'users'"
        )
        assert len(policies) == 1
        rows = as_role(dsn, "authenticated", "select id from public.users", claims=SIGNED_IN_AS_A)
        assert rows == []
        assert_denied(dsn, "anon", FUNCTIONS[0])
        assert_denied(dsn, "authenticated", BOOKKEEPING[0], claims=SIGNED_IN_AS_A)
    finally:
        support.drop_database(pg_server, dsn)


# --- organizations and memberships -------------------------------------------------------------

ORG_EVENTS = [
    # org_1: user_a an admin, user_b removed; org_2 (user_a a member) deleted; org_3: user_b.
    support.membership_event("organizationMembership.created", "mem_a1", "org_1", USER_A,
                             T, role="org:admin"),
    support.membership_event("organizationMembership.created", "mem_b1", "org_1", USER_B, T),
    support.membership_event("organizationMembership.deleted", "mem_b1", "org_1", USER_B, T),
    support.membership_event("organizationMembership.created", "mem_a2", "org_2", USER_A, T),
    support.organization_event("organization.deleted", "org_2", 0),
    support.membership_event("organizationMembership.created", "mem_b3", "org_3", USER_B, T),
]  # fmt: skip
STRANGER = {**SIGNED_IN_AS_A, "sub": "user_stranger"}
SIGNED_IN_AS_B = {**SIGNED_IN_AS_A, "sub": USER_B}
ORG_WRITES = [
    "insert into public.organizations (id) values ('org_forged')",
    "update public.organizations set name = 'Mallory'",
    "delete from public.organizations",
    "insert into public.organization_memberships (id, organization_id, user_id)"
    " values ('mem_forged', 'org_1', 'user_stranger')",
    "update public.organization_memberships set role = 'org:admin'",
    "delete from public.organization_memberships",
    "select * from clerk_sync.organization_tombstones",
    "select * from clerk_sync.membership_tombstones",
]


def apply_as_service_role(dsn: str, events: list[dict[str, Any]], prefix: str) -> str:
    """Deliver each event as clerk-sync does on Supabase; each one applies."""
    for n, event in enumerate(events):
        got = as_role(
            dsn,
            "service_role",
            "select public.clerk_sync_apply($1, $2::jsonb, 'soft') as outcome",
            f"{prefix}_{n}",
            json.dumps(event),
        )
        assert got == [{"outcome": "applied"}]
    return dsn


@pytest.fixture(scope="module")
def org_db(supabase_db: str) -> str:
    return apply_as_service_role(supabase_db, ORG_EVENTS, "msg_org")


def read(dsn: str, claims: dict[str, Any]) -> tuple[list[str], list[str]]:
    orgs = as_role(dsn, "authenticated", "select id from public.organizations order by 1",
                   claims=claims)  # fmt: skip
    members = as_role(
        dsn, "authenticated", "select id from public.organization_memberships order by 1",
        claims=claims,
    )  # fmt: skip
    return [r["id"] for r in orgs], [r["id"] for r in members]


def test_a_member_reads_their_organizations_and_its_live_members(org_db: str) -> None:
    assert read(org_db, SIGNED_IN_AS_A) == (["org_1"], ["mem_a1"])
    assert read(org_db, SIGNED_IN_AS_B) == (["org_3"], ["mem_b3"])
    assert read(org_db, STRANGER) == ([], [])
    assert read(org_db, {"role": "authenticated"}) == ([], [])


@pytest.mark.parametrize(
    "query",
    [
        "select * from public.organizations",
        "select * from public.organization_memberships",
        "select public.clerk_sync_is_member('org_1')",
        "select public.clerk_sync_org_role('org_1')",
        "select public.clerk_sync_active_org_id()",
        *ORG_WRITES,
    ],
)
def test_anon_reads_and_calls_nothing_of_organizations(org_db: str, query: str) -> None:
    assert_denied(org_db, "anon", query)


@pytest.mark.parametrize("query", ORG_WRITES)
def test_no_signed_in_user_writes_organizations(org_db: str, query: str) -> None:
    assert_denied(org_db, "authenticated", query, claims=SIGNED_IN_AS_A)


def helper(dsn: str, call: str, claims: dict[str, Any]) -> Any:
    return as_role(dsn, "authenticated", f"select {call} as v", claims=claims)[0]["v"]


@pytest.mark.parametrize(
    ("claims", "org_id", "member", "role"),
    [
        (SIGNED_IN_AS_A, "org_1", True, "org:admin"),  # a member
        (SIGNED_IN_AS_B, "org_1", False, None),  # a removed member
        (SIGNED_IN_AS_A, "org_2", False, None),  # a member of a deleted organization
        (STRANGER, "org_1", False, None),  # a stranger
        ({"role": "authenticated"}, "org_1", False, None),  # no sub
    ],
)
def test_the_helpers_answer_for_the_caller(
    org_db: str, claims: dict[str, Any], org_id: str, member: bool, role: str | None
) -> None:
    assert helper(org_db, f"public.clerk_sync_is_member('{org_id}')", claims) is member
    assert helper(org_db, f"public.clerk_sync_org_role('{org_id}')", claims) == role


@pytest.mark.parametrize(
    ("extra", "active"),
    [
        ({"v": 2, "o": {"id": "org_1", "rol": "admin", "slg": "acme"}}, "org_1"),
        ({"org_id": "org_9", "org_role": "org:admin"}, "org_9"),  # a v1 token
        ({"v": 2, "org_id": "org_forged"}, None),  # v2 without o: a custom claim is no scope
        ({"v": 2, "o": {"id": "org_1"}, "org_id": "org_forged"}, "org_1"),
        ({}, None),
    ],
)
def test_the_active_organization_comes_from_the_session_token(
    org_db: str, extra: dict[str, Any], active: str | None
) -> None:
    claims = {**SIGNED_IN_AS_A, **extra}
    assert helper(org_db, "public.clerk_sync_active_org_id()", claims) == active


def test_the_service_role_writes_organizations_but_has_no_helpers(org_db: str) -> None:
    rows = as_role(org_db, "service_role", "select id from public.organizations order by 1")
    assert [r["id"] for r in rows] == ["org_1", "org_2", "org_3"]
    assert_denied(org_db, "service_role", "select public.clerk_sync_is_member('org_1')")


# --- invitations ---------------------------------------------------------------------------------

INVITATION_EVENTS = [
    # org_1 (user_a its admin, user_b removed): two; org_3 (user_b a plain member): one.
    support.invitation_event("organizationInvitation.created", "orginv_1a", "org_1", T),
    support.invitation_event("organizationInvitation.accepted", "orginv_1b", "org_1", T,
                             user_id="user_new"),
    support.invitation_event("organizationInvitation.created", "orginv_3", "org_3", T),
]  # fmt: skip
INVITATIONS = "select id from public.organization_invitations order by 1"
INVITATION_WRITES = [
    "insert into public.organization_invitations (id, organization_id) values ('x', 'org_1')",
    "update public.organization_invitations set role = 'org:admin'",
    "delete from public.organization_invitations",
    "truncate public.organization_invitations",
]
DOCS = Path(__file__).parent.parent / "docs" / "supabase.md"


@pytest.fixture(scope="module")
def invitation_db(org_db: str) -> str:
    return apply_as_service_role(org_db, INVITATION_EVENTS, "msg_inv")


def documented_invitations_policy() -> str:
    """The SQL docs/supabase.md gives for letting admins read their invitations, as written."""
    blocks = re.findall(r"```sql\n(.*?)```", DOCS.read_text(), re.S)
    [block] = [b for b in blocks if "on public.organization_invitations" in b]
    return block


@pytest.mark.parametrize("query", [INVITATIONS, *INVITATION_WRITES])
def test_no_client_role_reads_or_writes_invitations_by_default(
    invitation_db: str, query: str
) -> None:
    assert_denied(invitation_db, "anon", query)
    for claims in (SIGNED_IN_AS_A, SIGNED_IN_AS_B, STRANGER):
        assert_denied(invitation_db, "authenticated", query, claims=claims)


def test_the_service_role_reads_the_invitations(invitation_db: str) -> None:
    rows = as_role(invitation_db, "service_role", INVITATIONS)
    assert [r["id"] for r in rows] == ["orginv_1a", "orginv_1b", "orginv_3"]
    [table] = support.fetch(
        invitation_db,
        """select c.relrowsecurity as rls,
                  (select count(*) from pg_policies p where p.tablename = c.relname) as policies
           from pg_class c where c.oid = 'public.organization_invitations'::regclass""",
    )
    assert table == {"rls": True, "policies": 0}


def test_with_the_documented_policy_admins_read_their_organizations_invitations(
    invitation_db: str,
) -> None:
    def read_as(claims: dict[str, Any]) -> list[str]:
        rows = as_role(invitation_db, "authenticated", INVITATIONS, claims=claims)
        return [r["id"] for r in rows]

    support.execute(invitation_db, documented_invitations_policy())
    try:
        assert read_as(SIGNED_IN_AS_A) == ["orginv_1a", "orginv_1b"]  # org_1's admin
        assert read_as(SIGNED_IN_AS_B) == []  # a plain member of org_3, removed from org_1
        assert read_as(STRANGER) == []
        assert read_as({"role": "authenticated"}) == []
        assert_denied(invitation_db, "anon", INVITATIONS)
        for query in INVITATION_WRITES:
            assert_denied(invitation_db, "authenticated", query, claims=SIGNED_IN_AS_A)
        # The lock-down runs again after every migration: the app's grant and policy survive.
        support.execute(invitation_db, migrations.repeatables()[-1].sql)
        assert read_as(SIGNED_IN_AS_A) == ["orginv_1a", "orginv_1b"]
        assert_denied(invitation_db, "anon", INVITATIONS)
    finally:
        support.execute(
            invitation_db,
            """drop policy "org admins read their organization's invitations"
                   on public.organization_invitations;
               revoke select on public.organization_invitations from authenticated""",
        )


def test_supabases_default_grants_are_taken_back_from_the_invitations(pg_server: str) -> None:
    """Supabase grants anon and authenticated everything on each new table in public."""
    create_supabase_roles(pg_server)
    dsn = support.create_database(pg_server, migrate=False)
    try:
        support.execute(
            dsn,
            SUPABASE_AUTH_SQL + "alter default privileges in schema public"
            " grant all on tables to anon, authenticated, service_role;",
        )
        support.migrate_database(dsn)
        privileges = support.fetch(
            dsn,
            """select r.rolname, array(select p from unnest(array['select', 'insert', 'update',
                      'delete', 'truncate', 'references', 'trigger']) as p
                      where has_table_privilege(r.rolname, 'public.organization_invitations', p))
                      as granted
               from pg_roles r where r.rolname in ('anon', 'authenticated', 'service_role')
               order by 1""",
        )
        assert privileges == [
            {"rolname": "anon", "granted": []},
            {"rolname": "authenticated", "granted": []},
            {"rolname": "service_role", "granted": ["select", "insert", "update", "delete",
                                                    "truncate", "references", "trigger"]},
        ]  # fmt: skip
    finally:
        support.drop_database(pg_server, dsn)


# --- docs/supabase.md §5: an app's own organization-scoped table -------------------------------

DOCS = Path(__file__).resolve().parent.parent / "docs" / "supabase.md"


def docs_example_sql() -> str:
    """The SQL block of docs/supabase.md's organizations section, as a reader copies it."""
    section = DOCS.read_text().split("\n## 5.", 1)[1].split("\n## ", 1)[0]
    return section.split("```sql\n", 1)[1].split("```", 1)[0]


def test_the_docs_example_policies_do_what_the_docs_say(pg_server: str) -> None:
    """Members read their organizations' rows whichever organization is active; admins write in
    the active one only; a removed member loses both at once, while their session token (which
    still names the organization, for up to a minute) has not changed."""
    dsn = create_supabase_database(pg_server)
    try:
        member = support.membership_event
        for n, event in enumerate([
            member("organizationMembership.created", "mem_a1", "org_1", USER_A, T, role="org:admin"),
            member("organizationMembership.created", "mem_a2", "org_2", USER_A, T),
            member("organizationMembership.created", "mem_b2", "org_2", USER_B, T, role="org:admin"),
        ]):  # fmt: skip
            as_role(dsn, "service_role", "select public.clerk_sync_apply($1, $2::jsonb)",
                    f"msg_docs_{n}", json.dumps(event))  # fmt: skip
        # The app's migration, and the grants Supabase gives a new table in public by default.
        support.execute(
            dsn,
            docs_example_sql()
            + """
            grant select, insert, update, delete on public.projects to authenticated;
            insert into public.projects (organization_id, name)
            values ('org_1', 'one'), ('org_2', 'two'), ('org_3', 'three');
            """,
        )
        active_1 = {**SIGNED_IN_AS_A, "v": 2, "o": {"id": "org_1", "rol": "admin"}}
        active_2 = {**SIGNED_IN_AS_A, "v": 2, "o": {"id": "org_2", "rol": "member"}}
        b_active_2 = {**SIGNED_IN_AS_B, "v": 2, "o": {"id": "org_2", "rol": "admin"}}
        names = "select name from public.projects order by name"
        insert = "insert into public.projects (organization_id, name) values ($1, 'new')"

        def read(claims: dict[str, Any]) -> list[str]:
            return [r["name"] for r in as_role(dsn, "authenticated", names, claims=claims)]

        def write(claims: dict[str, Any], org_id: str) -> None:
            as_role(dsn, "authenticated", insert, org_id, claims=claims)

        # Every organization the user belongs to, whichever is active.
        assert read(active_1) == read(active_2) == ["one", "two"]
        assert read(b_active_2) == ["two"]
        assert read(STRANGER) == []
        # Writes: an admin, in the active organization only.
        write(active_1, "org_1")
        write(b_active_2, "org_2")
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            write(active_1, "org_2")  # a member there, but not the active organization
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            write(active_2, "org_2")  # active, but not an admin there
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            write({**active_1, "o": {"id": "org_3", "rol": "admin"}}, "org_3")  # not a member

        # Removed from org_1: the same token (o.id still org_1) reads and writes nothing there.
        removed = member("organizationMembership.deleted", "mem_a1", "org_1", USER_A, T + 1)
        as_role(dsn, "service_role", "select public.clerk_sync_apply($1, $2::jsonb)",
                "msg_docs_removed", json.dumps(removed))  # fmt: skip
        assert read(active_1) == ["new", "two"]  # org_2's: b's new one and "two"
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            write(active_1, "org_1")
    finally:
        support.drop_database(pg_server, dsn)


# --- plain PostgreSQL ---------------------------------------------------------------------------


def test_without_auth_jwt_migrate_skips_the_lockdown_and_says_so(
    pg_server: str, tmp_path: Path
) -> None:
    # The roles are cluster-wide and may exist (other tests create them); auth.jwt() is not here.
    dsn = support.create_database(pg_server, migrate=False)
    try:
        result = run_cli(tmp_path, "migrate", DATABASE_URL=dsn)
        assert result.returncode == 0, result.stderr
        lines = result.stderr.splitlines()
        assert lines[0].startswith("clerk-sync: applied migrations 0001_initial")
        assert [line for line in lines if SKIPPED in line] == [
            "clerk-sync: no Supabase roles (anon, authenticated, service_role) and auth.jwt() in "
            f"this database: {SKIPPED} for them"
        ]
        assert_not_locked_down(dsn)
    finally:
        support.drop_database(pg_server, dsn)


def assert_not_locked_down(dsn: str) -> None:
    [table] = support.fetch(
        dsn, "select relrowsecurity from pg_class where oid = 'public.users'::regclass"
    )
    assert table == {"relrowsecurity": False}
    assert support.fetch(dsn, "select * from pg_policies where tablename = 'users'") == []
    public_can = support.fetch(
        dsn,
        """select bool_or(has_function_privilege('public', p.oid, 'execute')) as any
           from pg_proc p join pg_namespace n on n.oid = p.pronamespace
           where n.nspname = 'public' and p.proname like 'clerk\\_sync\\_%'""",
    )
    assert public_can == [{"any": False}]


@pytest.mark.slow
def test_without_the_roles_the_lockdown_is_skipped(tmp_path: Path) -> None:
    # A server of its own, where the roles certainly do not exist: auth.jwt() alone is not enough.
    server = support.ThrowawayPostgres(tmp_path / "plain")
    try:
        dsn = support.create_database(server.dsn, migrate=False)
        support.execute(dsn, AUTH_JWT_SQL)
        said: list[str] = []

        async def migrate() -> None:
            conn = await asyncpg.connect(dsn)
            conn.add_log_listener(lambda _conn, message: said.append(message.message))
            try:
                await migrations.migrate(conn)
            finally:
                await conn.close()

        support.run(migrate())
        assert any(SKIPPED in line for line in said), said
        assert_not_locked_down(dsn)
    finally:
        server.close()
