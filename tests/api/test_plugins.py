"""Provider types are plugins found by entry point; a broken one never takes the service down."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest

from providers.registry import ProviderRegistry
from tests.conftest import Tokens

PLUGIN_SOURCES = Path(__file__).resolve().parents[1] / "plugin_dist"


@pytest.fixture
def installed_plugins(tmp_path, monkeypatch):
    """Install a separate distribution the way pip lays it out: a package and its dist-info."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "smtpconf_example_provider").symlink_to(PLUGIN_SOURCES / "smtpconf_example_provider")
    (site / "smtpconf_broken_provider.py").symlink_to(PLUGIN_SOURCES / "smtpconf_broken_provider.py")
    info = site / "smtpconf_example_provider-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: smtpconf-example-provider\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[smtpconf.secret_providers]\n"
        "vaultlet = smtpconf_example_provider:VaultletProvider\n"
        "broken = smtpconf_broken_provider:BrokenProvider\n"
        "mislabelled = smtpconf_example_provider:VaultletConnectionSchema\n"
    )
    monkeypatch.syspath_prepend(str(site))
    yield
    for name in [m for m in sys.modules if m.startswith("smtpconf_")]:
        del sys.modules[name]


def test_built_in_types_are_registered_by_entry_point():
    sources = ProviderRegistry.from_entry_points().sources()
    assert {"plaintext", "internal"} <= set(sources)


def test_broken_plugins_are_logged_and_skipped(installed_plugins, caplog):
    caplog.set_level(logging.ERROR, logger="providers.registry")
    registry = ProviderRegistry.from_entry_points()
    assert "vaultlet" in registry.sources()
    assert "broken" not in registry.sources() and "mislabelled" not in registry.sources()
    skipped = {r.plugin for r in caplog.records if r.getMessage() == "secret provider plugin skipped"}
    assert skipped == {"broken", "mislabelled"}


def test_a_separately_installed_provider_works_end_to_end(installed_plugins, make_app):
    app = make_app()
    client, tokens = app.test_client(), Tokens(app)
    types = client.get("/v1/secret-provider-types", headers=tokens.headers("reader")).json["items"]
    vaultlet = next(t for t in types if t["source"] == "vaultlet")
    assert "secret" in vaultlet["reference_schema"]["required"]
    assert "secrets" in vaultlet["connection_schema"]["properties"]

    connection = {"type": "vaultlet", "secrets": {"smtp-password": "from-a-plugin"}, "allowed_secrets": ["smtp-*"]}
    created = client.put("/v1/secret-providers/lab", json=connection, headers=tokens.headers("security"))
    assert created.status_code == 201, created.json
    settings = {
        "host": "smtp.example.com", "port": 587, "from_email": "noreply@example.com", "username": "u",
        "password": {"source": "vaultlet", "provider": "lab", "secret": "smtp-password"},
    }
    assert client.put("/v1/smtp", json=settings, headers=tokens.headers("admin")).status_code == 200
    body = client.get("/v1/smtp/effective?include_password=true", headers=tokens.headers("secret-reader")).json
    assert body["password"] == "from-a-plugin"
