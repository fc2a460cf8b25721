"""The delivery log's retention and the lifetime of Idempotency-Keys."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa

from service.db import utcnow
from service.sending.store import DeliveryRecord, IdempotencyRecord
from tests.sending.conftest import MESSAGE, settings_for


def test_rows_older_than_the_retention_and_keys_older_than_a_day_are_purged(sending, plain_smtp_server):
    app, client, tokens = sending(plain_smtp_server, delivery_log_days=7)
    assert client.put("/v1/smtp", json=settings_for(plain_smtp_server), headers=tokens.headers("admin")).status_code == 200
    headers = tokens.headers("sender", **{"Idempotency-Key": "old-key"})
    assert client.post("/v1/messages", json=MESSAGE, headers=headers).status_code == 200
    assert client.post("/v1/messages", json=MESSAGE, headers=tokens.headers("sender")).status_code == 200
    services = app.extensions["smtpconf"]
    deliveries = services.sending.deliveries
    deliveries.flush()
    with services.db.transaction() as session:
        first = min(session.scalars(sa.select(DeliveryRecord.id)))
        session.execute(sa.update(DeliveryRecord).where(DeliveryRecord.id == first).values(at=utcnow() - dt.timedelta(days=8)))
        session.execute(sa.update(IdempotencyRecord).values(created_at=utcnow() - dt.timedelta(hours=25)))

    assert deliveries.purge() == {"deliveries": 1, "idempotency_keys": 1}
    items = client.get("/v1/messages", headers=tokens.headers("admin")).json["items"]
    assert len(items) == 1 and items[0]["id"] != first
    # The key is forgotten: the same key sends again.
    assert client.post("/v1/messages", json=MESSAGE, headers=headers).status_code == 200
    assert len(plain_smtp_server.messages) == 3


def test_an_expired_key_is_not_answered_from_memory_of_it(sending, plain_smtp_server):
    app, client, tokens = sending(plain_smtp_server)
    assert client.put("/v1/smtp", json=settings_for(plain_smtp_server), headers=tokens.headers("admin")).status_code == 200
    headers = tokens.headers("sender", **{"Idempotency-Key": "day-old"})
    assert client.post("/v1/messages", json=MESSAGE, headers=headers).status_code == 200
    with app.extensions["smtpconf"].db.transaction() as session:
        session.execute(sa.update(IdempotencyRecord).values(created_at=utcnow() - dt.timedelta(hours=25)))
    assert client.post("/v1/messages", json={**MESSAGE, "subject": "new"}, headers=headers).status_code == 200
    assert len(plain_smtp_server.messages) == 2


def test_the_log_shows_no_body_subject_or_recipient_address(sending, plain_smtp_server):
    app, client, tokens = sending(plain_smtp_server)
    assert client.put("/v1/smtp", json=settings_for(plain_smtp_server), headers=tokens.headers("admin")).status_code == 200
    payload = {**MESSAGE, "to": ["ada@private.example"], "subject": "Secret subject 91x", "text": "Secret body 27q"}
    assert client.post("/v1/messages", json=payload, headers=tokens.headers("sender")).status_code == 200
    listing = client.get("/v1/messages", headers=tokens.headers("admin")).get_data(as_text=True)
    assert "private.example" in listing
    for hidden in ("ada@", "Secret subject 91x", "Secret body 27q"):
        assert hidden not in listing
