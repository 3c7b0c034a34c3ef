"""clerk-sync's core from Flask (the same few lines fit Django or any other framework).

    DATABASE_URL=postgresql://… CLERK_WEBHOOK_SECRET=whsec_… flask --app examples.flask_app run

Verify the raw body, parse it, apply it through the store, answer as clerk-sync does: 2xx only
once the event is handled, 503 when the database may do better on Svix's retry. Run
`clerk-sync migrate` once beforehand.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from flask import Flask, request

from clerk_sync import NotAClerkEvent, VerificationError, Verifier, load_settings, parse_event
from clerk_sync.storage import EventRejected, StoreUnavailable
from clerk_sync.storage.postgres import PostgresStore

settings = load_settings()
verifier = Verifier(settings.signing_keys)

# The store is async (asyncpg) and Flask is not: one event loop in a background thread holds
# the connection pool for the whole process, and each request hands it a write.
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, name="clerk-sync", daemon=True).start()


def run(coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)


store = run(PostgresStore.open(settings.database_url, delete_mode=settings.delete_mode))

app = Flask(__name__)


@app.post("/api/webhooks/clerk")
def clerk_webhook() -> Any:
    body = request.get_data()  # the raw bytes: the signature covers them exactly
    try:
        delivery = verifier.verify(request.headers, body)
        event = parse_event(body)
        outcome = run(store.apply(delivery.message_id, event))
    except VerificationError as exc:
        return {"error": exc.message}, exc.status
    except (NotAClerkEvent, EventRejected) as exc:
        # Genuine but unusable: retrying cannot help, so tell Svix to stop.
        return {"error": str(exc)}, 400, {"webhook-delivery": "abort-message"}
    except StoreUnavailable:
        return {"error": "database unavailable, retry later"}, 503, {"Retry-After": "5"}
    return {"outcome": outcome.value}
