"""clerk-sync's delivery core from Flask (the same few lines fit Django or any other framework).

    DATABASE_URL=postgresql://… CLERK_WEBHOOK_SECRET=whsec_… flask --app examples.flask_app run

`DeliveryHandler.handle` does what `clerk-sync serve` does with a delivery (verify the raw body,
parse it, apply it, keep a dead letter, count it, log it) and says what to answer; the route
only reads the body and sends the answer. Run `clerk-sync migrate` once beforehand.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from flask import Flask, request
from werkzeug.exceptions import RequestEntityTooLarge

from clerk_sync import WEBHOOK_PATH, Answer, DeliveryHandler, load_settings
from clerk_sync.storage import open_store

settings = load_settings()

# The store is async and Flask is not: one event loop in a background thread holds the
# connection pool for the whole process, and each request hands it a delivery.
loop = asyncio.new_event_loop()
threading.Thread(target=loop.run_forever, name="clerk-sync", daemon=True).start()


def run(coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, loop).result(timeout=30)


store = run(open_store(settings, settings.server_backend()))
deliveries = DeliveryHandler.from_settings(settings, store)

app = Flask(__name__)
# Flask refuses a larger body from its Content-Length before reading it (or as soon as a
# chunked one grows past it).
app.config["MAX_CONTENT_LENGTH"] = deliveries.max_body_bytes


def respond(answer: Answer) -> Any:
    return answer.content, answer.status, answer.headers or {}


@app.post(WEBHOOK_PATH)
def clerk_webhook() -> Any:
    try:
        body = request.get_data()  # the raw bytes: the signature covers them exactly
    except RequestEntityTooLarge:
        return respond(deliveries.too_large())
    return respond(run(deliveries.handle(request.headers, body, request.remote_addr)))
