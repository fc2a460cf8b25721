"""A canary plaintext password appears only in the one response that exists to return it."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import sqlalchemy as sa

CANARY = "canary-7Zq!pw-8d1f2b44-never-leak"


def _database_text(app, database_url: str) -> bytes:
    if database_url.startswith("sqlite"):
        path = Path(sa.engine.make_url(database_url).database)
        app.extensions["smtpconf"].db.dispose()
        return b"".join(f.read_bytes() for p in path.parent.glob(path.name + "*") for f in ([p] if p.is_file() else p.rglob("*")) if f.is_file())
    engine = app.extensions["smtpconf"].db.engine
    dump = []
    with engine.connect() as conn:
        for table in sa.inspect(engine).get_table_names():
            dump += [repr(tuple(row)) for row in conn.execute(sa.text(f'SELECT * FROM "{table}"'))]
    return "\n".join(dump).encode()


def test_canary_password_never_leaks(app, client, tokens, system_settings, database_url, caplog, capfd):
    caplog.set_level(logging.DEBUG)
    system_settings["password"] = {"source": "plaintext", "value": CANARY}
    admin, reader, sender, security = (tokens.headers(r) for r in ("admin", "reader", "secret-reader", "security"))
    responses = [
        client.put("/v1/smtp", json=system_settings, headers=admin),
        client.put("/v1/tenants/t1/smtp", json={"from_name": "T1"}, headers=admin),
        client.put("/v1/tenants/t2/smtp", json={"username": "u2", "password": {"source": "plaintext", "value": CANARY}}, headers=admin),
        client.put("/v1/smtp", json={**system_settings, "port": 0}, headers=admin),
        client.put("/v1/smtp", json={**system_settings, "host": "other.example", "password": {"source": "plaintext", "value_set": True}}, headers=admin),
        client.get("/v1/smtp", headers=admin),
        client.get("/v1/smtp", headers=reader),
        client.get("/v1/tenants/t1/smtp", headers=reader),
        client.get("/v1/tenants/t2/smtp", headers=admin),
        client.get("/v1/smtp/effective", headers=reader),
        client.get("/v1/smtp/effective", headers=sender),
        client.get("/v1/tenants/t2/smtp/effective", headers=reader),
        client.get("/v1/smtp/effective?include_password=true", headers=reader),
        client.get("/v1/audit", headers=security),
        client.get("/v1/audit", headers=admin),
        client.delete("/v1/tenants/t2/smtp", headers=admin),
        client.get("/readyz"),
        client.get("/metrics"),
    ]
    authorised = client.get("/v1/smtp/effective?include_password=true", headers=sender)
    assert authorised.json["password"] == CANARY

    for response in responses:
        assert CANARY not in response.get_data(as_text=True), response.request.path
        assert CANARY not in json.dumps(dict(response.headers))
    audit = client.get("/v1/audit?limit=500", headers=security).get_data(as_text=True)
    assert "smtp_settings.put" in audit and CANARY not in audit
    assert CANARY not in caplog.text
    out, err = capfd.readouterr()
    assert "request" in err and CANARY not in out + err
    database = _database_text(app, database_url)
    assert b"smtp_settings" in database or b"system" in database
    assert CANARY.encode() not in database
