// The Express reference: a Clerk webhook handler as its users write it (svix + pg, one upsert).
//
//   CLERK_WEBHOOK_SECRET=whsec_... DATABASE_URL=postgres://... PORT=3000 node server.js
const express = require("express");
const { Pool } = require("pg");
const { Webhook } = require("svix");

const CREATE_TABLE = `
  create table if not exists users (
    id text primary key,
    email text,
    first_name text,
    last_name text,
    image_url text,
    public_metadata jsonb,
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
  const user = event.data;
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
  }
  res.sendStatus(200);
});

pool.query(CREATE_TABLE).then(() => {
  app.listen(Number(process.env.PORT || 3000), "127.0.0.1");
});
