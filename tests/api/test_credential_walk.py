"""The credential path in one place: a tenant's check goes from the API down to the secret manager, climbing back up at most twice.

A profiler records every call from one of the service's files into another
while ``POST /v1/tenants/{t}/smtp/validate`` runs, up to the moment the Vault
provider is entered. The files sit in layers (``LAYERS``: the API, the
consumers of a credential, the credential path, what it reads, storage and
providers); a call into a higher layer climbs back up, as when the SMTP engine
calls back into the credential path for the password once it is connected.
Cross-cutting plumbing that every request goes through (WSGI middlewares,
logging and metrics, the database and the change board, token authentication,
problem rendering) is left out: it is not part of the credential path.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path


from tests.api.test_vault_resolution import connection, vault  # noqa: F401 -- the fixture is used by name
from tests.conftest import Tokens
from tests.fixtures.smtp_servers import PASSWORD, USERNAME

ROOT = Path(__file__).resolve().parents[2]
#: Plumbing shared by every request, not steps of the credential path.
PLUMBING = {
    "service/observability", "service/access_log", "service/errors", "service/db", "service/db_sqlite",
    "service/db_watchdog", "service/propagation", "service/board", "service/readiness", "service/config",
    "service/tokens", "service/api/__init__", "service/app", "service/audit",
    # WSGI middlewares in front of every route
    "service/transport", "service/body_drain", "service/api/effective",
}
PROVIDER = "providers/hashicorp_vault"


def _label(filename: str) -> str | None:
    path = Path(filename)
    if not path.is_absolute():
        return None
    try:
        relative = path.relative_to(ROOT)
    except ValueError:
        return None
    if relative.parts[0] not in ("service", "providers"):
        return None
    label = str(relative.with_suffix(""))
    return None if label in PLUMBING else label


#: From the top: each file of the walk belongs to one layer (a directory stands for its files).
LAYERS = (
    {"service/api"},
    {"service/checks", "service/sending"},
    {"service/credentials"},
    {"service/settings", "service/settings_model", "service/settings_writes", "service/schemas", "service/secrets",
     "service/oauth", "service/oauth_flows", "service/token_store", "service/connections", "service/smtp_check"},
    {"service/crypto", "service/internal_store", "providers"},
)


def _layer(label: str) -> int:
    for depth, members in enumerate(LAYERS):
        if any(label == member or label.startswith(member + "/") for member in members):
            return depth
    raise AssertionError(f"{label} is in no layer of the credential walk: place it in LAYERS")


class Walk:
    """Calls from one service file into another, in order, until ``PROVIDER`` is entered."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.reached = False
        self._lock = threading.Lock()

    def profile(self, frame, event, _arg):  # noqa: ANN001 -- sys.setprofile's signature
        if self.reached or event != "call":
            return
        callee = _label(frame.f_code.co_filename)
        caller_frame = frame.f_back
        while caller_frame is not None and _label(caller_frame.f_code.co_filename) is None:
            caller_frame = caller_frame.f_back
        if callee is None or caller_frame is None:
            return
        caller = _label(caller_frame.f_code.co_filename)
        if caller != callee:
            with self._lock:
                self.calls.append((caller, callee))
                self.reached = callee == PROVIDER

    def climbs(self) -> list[tuple[str, str]]:
        """The calls into a higher layer."""
        return [(caller, callee) for caller, callee in self.calls if _layer(callee) < _layer(caller)]


def test_a_tenant_check_climbs_back_up_at_most_twice_on_its_way_to_the_secret_manager(
    make_app, openbao, vault, starttls_smtp_server, smtp_ca_pem,  # noqa: F811 -- the vault fixture
):
    app = make_app(smtp_allowed_ports=str(starttls_smtp_server.port))
    client, tokens = app.test_client(), Tokens(app)
    openbao.write_secret(vault, "mail/smtp", {"password": PASSWORD})
    assert client.put(
        "/v1/secret-providers/corp-vault", json=connection(openbao, vault), headers=tokens.headers("security"),
    ).status_code in (200, 201)
    settings = {
        "host": "localhost", "port": starttls_smtp_server.port, "security": "starttls", "ca_certificate_pem": smtp_ca_pem,
        "from_email": "noreply@example.com", "username": USERNAME, "timeout_seconds": 5,
        "password": {"source": "hashicorp_vault", "provider": "corp-vault", "path": "mail/smtp", "key": "password"},
    }
    assert client.put("/v1/tenants/acme/smtp", json=settings, headers=tokens.headers("admin")).status_code == 200

    walk = Walk()
    threading.setprofile(walk.profile)
    sys.setprofile(walk.profile)
    try:
        result = client.post("/v1/tenants/acme/smtp/validate", headers=tokens.headers("admin"))
    finally:
        sys.setprofile(None)
        threading.setprofile(None)

    assert result.status_code == 200 and result.json["ok"] is True, result.json
    assert walk.reached, walk.calls
    assert walk.calls[0][0].startswith("service/api/"), walk.calls
    assert len(walk.climbs()) <= 2, (walk.climbs(), walk.calls)
