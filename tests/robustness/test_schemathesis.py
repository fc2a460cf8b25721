"""Generated requests for every operation in openapi.yaml: never a 500, never an answer the spec does not describe."""

from __future__ import annotations

import collections
import os
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.errors import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from service import smtp_check
from service.app import create_app
from service.tokens import create_token
from tests.conftest import MASTER_KEY, SYSTEM_SETTINGS

#: Random exploration (``make fuzz``) sets a seed and a budget; the default suite runs
#: the same derandomized cases every time.
FUZZ_SEED = os.environ.get("SMTPCONF_FUZZ_SEED")
EXAMPLES_PER_MODE = int(os.environ.get("SMTPCONF_FUZZ_EXAMPLES_PER_MODE", "60")) if FUZZ_SEED else 60
MIN_CASES = 2000 if EXAMPLES_PER_MODE >= 60 else 0
ROLES = ("admin", "reader", "secret-reader", "security", "sender")
# TEST-NET-3 (RFC 5737): what every generated host name "resolves" to; the policy refuses it.
UNROUTABLE = "203.0.113.1"
UNKNOWN_TOKEN = "smtpconf_" + "0" * 43
VAULT_TOKEN_VARIABLE = "SMTPCONF_TEST_FUZZ_VAULT_TOKEN"
SEEDED_TENANTS = ("acme", "globex", "initech")
SEEDED_CONNECTIONS = ("internal", "corp-vault")
SEEDED_SECRETS = ("smtp/relay",)

CONFIG = schemathesis.Config.from_dict(
    {
        "checks": {
            # 503 is the contract's answer when a password cannot be resolved (and /readyz's when
            # down); status_code_conformance still fails it wherever the spec does not list it.
            "not_a_server_error": {"expected-statuses": ["2xx", "3xx", "4xx", "503"]},
            # Invalid input must be refused; 413 is how an oversize generated body is refused.
            "negative_data_rejection": {
                "expected-statuses": [
                    "400",
                    "401",
                    "403",
                    "404",
                    "405",
                    "406",
                    "409",
                    "413",
                    "415",
                    "422",
                    "428",
                    "429",
                ]
            },
        }
    }
)
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]
HYPOTHESIS_SETTINGS = hypothesis.settings(
    max_examples=EXAMPLES_PER_MODE,
    deadline=None,
    # The same cases on every run, so a CI failure reproduces locally (with the
    # versions pinned in tests/constraints.txt); ``make fuzz`` explores from a seed.
    derandomize=FUZZ_SEED is None,
    database=None,
    # Findings are collected across all operations and reported together, so nothing is shrunk.
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)


def _seeded(test: Any) -> Any:
    return hypothesis.seed(int(FUZZ_SEED))(test) if FUZZ_SEED else test


def _closed_loopback_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Fleet:
    """Apps for fuzzing, each on its own copy of one seeded database, so operations cannot disturb each other.

    Every SMTP destination is refused before a connection is made: the only allowed
    port is a closed loopback port, and every network is denied. The one Vault
    connection points at that closed port too.
    """

    def __init__(self, directory: Path, closed_port: int) -> None:
        self.directory = directory
        self.closed_port = closed_port
        self.template = directory / "template.db"
        self.tokens: dict[str, str] = {}
        self._apps: list[Flask] = []

    def app(self, name: str) -> Flask:
        """A new app on a fresh copy of the seeded database."""
        database = self.directory / f"{name}.db"
        shutil.copyfile(self.template, database)
        app = create_app(
            {
                "database_url": f"sqlite:///{database}",
                "master_key": MASTER_KEY,
                "testing": True,
                "smtp_allowed_ports": str(self.closed_port),
                "smtp_denied_networks": "0.0.0.0/0,::/0",
                "rate_limit_per_minute": 1_000_000,
            }
        )
        self._apps.append(app)
        return app

    def seed(self) -> schemathesis.BaseSchema:
        """Create the template database with tokens and state, and load the spec the app serves."""
        app = create_app({"database_url": f"sqlite:///{self.template}", "master_key": MASTER_KEY, "testing": True})
        services = app.extensions["smtpconf"]
        services.db.upgrade()
        self.tokens = {role: create_token(services.db, f"fuzz-{role}", [role]) for role in ROLES}
        client = app.test_client()
        for path, role, document in self._seed_documents():
            response = client.put(path, json=document, headers=self.headers(role))
            assert response.status_code in (200, 201), (path, response.json)
        schema = schemathesis.openapi.from_wsgi("/openapi.yaml", app, config=CONFIG)
        services.close()
        return schema

    def headers(self, role: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[role]}"}

    def close(self) -> None:
        for app in self._apps:
            app.extensions["smtpconf"].close()

    def _seed_documents(self) -> list[tuple[str, str, dict[str, Any]]]:
        vault = {
            "type": "hashicorp_vault",
            "url": f"http://127.0.0.1:{self.closed_port}",
            "auth": {"method": "token", "token": {"env": VAULT_TOKEN_VARIABLE}},
            "allowed_secrets": ["mail/*"],
            "timeout_seconds": 1,
        }
        vault_password = {"source": "hashicorp_vault", "provider": "corp-vault", "path": "mail/smtp", "key": "password"}
        return [
            ("/v1/secrets/smtp/relay", "security", {"value": "relay-password"}),
            ("/v1/secret-providers/corp-vault", "security", vault),
            ("/v1/smtp", "admin", dict(SYSTEM_SETTINGS)),
            (
                "/v1/tenants/acme/smtp",
                "admin",
                {"from_email": "alerts@acme.example", "username": None, "password": None},
            ),
            (
                "/v1/tenants/globex/smtp",
                "admin",
                {"host": "mail.globex.example", "password": {"source": "internal", "secret": "smtp/relay"}},
            ),
            ("/v1/tenants/initech/smtp", "admin", {"password": vault_password}),
        ]


@pytest.fixture
def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Fleet]:
    # A generated host name must never reach a real resolver (no network here, and a
    # stalled lookup would hold a check for up to its 120 s timeout).
    monkeypatch.setattr(smtp_check, "_system_resolver", lambda host, port: [UNROUTABLE])
    monkeypatch.setenv(VAULT_TOKEN_VARIABLE, "fuzz-vault-token")
    fleet = Fleet(tmp_path, _closed_loopback_port())
    yield fleet
    fleet.close()


def _seeded_path_values(operation: schemathesis.APIOperation) -> list[dict[str, str]]:
    """Path parameters naming seeded state, so generated GETs do not all answer 404."""
    names = {parameter.name for parameter in operation.path_parameters}
    if "tenant" in names:
        return [{"tenant": tenant} for tenant in SEEDED_TENANTS]
    if "name" in names:
        values = SEEDED_SECRETS if operation.path.startswith("/v1/secrets/") else SEEDED_CONNECTIONS
        return [{"name": value} for value in values]
    return []


def _can_be_invalid(operation: schemathesis.APIOperation) -> bool:
    """Whether the spec forbids some request to the operation (else negative generation has nothing to draw)."""
    constrained_path = any(
        {"pattern", "maxLength"} & set(parameter.definition["schema"]) for parameter in operation.path_parameters
    )
    return bool(operation.body.items) or bool(list(operation.query)) or constrained_path


def _cases(operation: schemathesis.APIOperation, mode: GenerationMode, fleet: Fleet) -> st.SearchStrategy[Case]:
    """Cases sent with a token of each role the operation accepts; one in ten with a refused or unknown token."""
    accepted = operation.definition.raw.get("x-roles") or []
    if not accepted:
        return operation.as_strategy(generation_mode=mode)
    pinned = _seeded_path_values(operation) if mode is GenerationMode.POSITIVE else []
    authorised = []
    for role in accepted:
        headers = fleet.headers(role)
        authorised.append(operation.as_strategy(generation_mode=mode, headers=headers))
        authorised += [operation.as_strategy(generation_mode=mode, headers=headers, path_parameters=p) for p in pinned]
        if mode is GenerationMode.POSITIVE:
            # The spec's own examples (a Vault connection, settings reading their password from it).
            authorised += operation.get_strategies_from_examples(headers=headers)
    refused_role = next((role for role in ROLES if role not in accepted), None)
    unauthorised = [operation.as_strategy(generation_mode=mode, headers={"Authorization": f"Bearer {UNKNOWN_TOKEN}"})]
    if refused_role is not None:
        unauthorised.append(operation.as_strategy(generation_mode=mode, headers=fleet.headers(refused_role)))
    return st.integers(0, 9).flatmap(
        lambda draw: st.sampled_from(unauthorised if draw == 0 else authorised).flatmap(lambda strategy: strategy)
    )


def _fuzz(
    operation: schemathesis.APIOperation, app: Flask, fleet: Fleet
) -> tuple[collections.Counter[int], dict[str, str]]:
    """Send the operation's generated cases to ``app``: the statuses seen, and each distinct failure."""
    statuses: collections.Counter[int] = collections.Counter()
    findings: dict[str, str] = {}
    modes = [GenerationMode.POSITIVE] + ([GenerationMode.NEGATIVE] if _can_be_invalid(operation) else [])
    for mode in modes:

        @HYPOTHESIS_SETTINGS
        @hypothesis.given(case=_cases(operation, mode, fleet))
        @_seeded
        def send(case: Case) -> None:
            response = case.call(app=app)
            statuses[response.status_code] += 1
            try:
                case.validate_response(response, checks=CHECKS)
            except FailureGroup as group:
                for failure in group.exceptions:
                    findings.setdefault(failure.title, str(group)[:2000])

        send()
    return statuses, findings


def test_every_operation_answers_within_the_spec(fleet: Fleet) -> None:
    schema = fleet.seed()
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: dict[str, collections.Counter[int]] = {}
    findings: dict[str, str] = {}
    for index, operation in enumerate(operations):
        statuses[operation.label], found = _fuzz(operation, fleet.app(f"operation-{index}"), fleet)
        findings |= {f"{operation.label}: {title}": detail for title, detail in found.items()}

    total = sum(sum(counter.values()) for counter in statuses.values())
    width = max(len(label) for label in statuses)
    for label, counter in statuses.items():
        print(f"{label:<{width}}  {sum(counter.values()):>4}  {dict(sorted(counter.items()))}")
    print(f"{total} generated cases across {len(operations)} operations")

    assert not findings, "\n\n".join(f"{where}\n{detail}" for where, detail in findings.items())
    assert all(statuses.values()), [label for label, counter in statuses.items() if not counter]
    assert total >= MIN_CASES
