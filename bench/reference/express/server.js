// The Express reference: a Clerk webhook handler as its users write it (svix + pg, one upsert).
//
//   CLERK_WEBHOOK_SECRET=whsec_... DATABASE_URL=postgres://... PORT=3000 node server.js
const express = require("express");
const { Pool } = require("pg");
const { Webhook } = require("svix");

// One statement per delivery: an upsert for a user, organization or membership event (the naive
// way: the embedded organization and any one-live-membership rule left aside), an update of
// last_sign_in_at for session.created, a delete for a delete.
const CREATE_TABLES = `
  create table if not exists users (
    id text primary key,
    email text,
    first_name text,
    last_name text,
    image_url text,
    public_metadata jsonb,
    created_at timestamptz,
    updated_at timestamptz,
    last_sign_in_at timestamptz
  );
  create table if not exists organizations (
    id text primary key,
    name text,
    slug text,
    image_url text,
    public_metadata jsonb,
    created_at timestamptz,
    updated_at timestamptz
  );
  create table if not exists organization_memberships (
    id text primary key,
    organization_id text not null,
    user_id text not null,
    role text,
    permissions text[],
    created_at timestamptz,
    updated_at timestamptz
  )`;

// The only ordering guard: an older update never overwrites a newer row.
const UPSERT = `
  insert into users (id, email, first_name, last_name, image_url, public_metadata, created_at, updated_at)
  values ($1, $2, $3, $4, $5, $6, $7, $8)
  on conflict (id) do update set
    email = excluded.email, first_name = excluded.first_name, last_name = excluded.last_name,
    image_url = excluded.image_url, public_metadata = excluded.public_metadata,
    updated_at = excluded.updated_at
  where users.updated_at < excluded.updated_at`;

const UPSERT_ORGANIZATION = `
  insert into organizations (id, name, slug, image_url, public_metadata, created_at, updated_at)
  values ($1, $2, $3, $4, $5, $6, $7)
  on conflict (id) do update set
    name = excluded.name, slug = excluded.slug, image_url = excluded.image_url,
    public_metadata = excluded.public_metadata, updated_at = excluded.updated_at
  where organizations.updated_at < excluded.updated_at`;

const UPSERT_MEMBERSHIP = `
  insert into organization_memberships (id, organization_id, user_id, role, permissions, created_at, updated_at)
  values ($1, $2, $3, $4, $5, $6, $7)
  on conflict (id) do update set
    role = excluded.role, permissions = excluded.permissions, updated_at = excluded.updated_at
  where organization_memberships.updated_at < excluded.updated_at`;

const SIGNED_IN = `
  update users set last_sign_in_at = $2
  where id = $1 and (last_sign_in_at is null or last_sign_in_at < $2)`;

const webhook = new Webhook(process.env.CLERK_WEBHOOK_SECRET);
const pool = new Pool({ connectionString: process.env.DATABASE_URL });
const app = express();

app.post("/api/webhooks/clerk", express.raw({ type: "application/json" }), async (req, res) => {
  let event;
  try {
    event = webhook.verify(req.body, req.headers);
  } catch {
    return res.status(400).send("invalid signature");
  }
  const user = event.data; // a user, or the session, organization or membership of its type
  if (event.type === "user.created" || event.type === "user.updated") {
    const primary = user.email_addresses.find((e) => e.id === user.primary_email_address_id);
    await pool.query(UPSERT, [
      user.id,
      primary ? primary.email_address : null,
      user.first_name,
      user.last_name,
      user.image_url,
      user.public_metadata,
      new Date(user.created_at),
      new Date(user.updated_at),
    ]);
  } else if (event.type === "user.deleted") {
    await pool.query("delete from users where id = $1", [user.id]);
  } else if (event.type === "session.created") {
    await pool.query(SIGNED_IN, [user.user_id, new Date(user.created_at)]);
  } else if (event.type === "organization.created" || event.type === "organization.updated") {
    await pool.query(UPSERT_ORGANIZATION, [
      user.id,
      user.name,
      user.slug,
      user.image_url,
      user.public_metadata,
      new Date(user.created_at),
      new Date(user.updated_at),
    ]);
  } else if (event.type === "organization.deleted") {
    await pool.query("delete from organizations where id = $1", [user.id]);
  } else if (
    event.type === "organizationMembership.created" ||
    event.type === "organizationMembership.updated"
  ) {
    await pool.query(UPSERT_MEMBERSHIP, [
      user.id,
      user.organization.id,
      user.public_user_data.user_id,
      user.role,
      user.permissions,
      new Date(user.created_at),
      new Date(user.updated_at),
    ]);
  } else if (event.type === "organizationMembership.deleted") {
    await pool.query("delete from organization_memberships where id = $1", [user.id]);
  }
  res.sendStatus(200);
});

pool.query(CREATE_TABLES).then(() => {
  app.listen(Number(process.env.PORT || 3000), "127.0.0.1");
});
