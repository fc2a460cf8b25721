"""The console's connection editor (add, edit, delete, event key) and the password dialog's pinned version, in Chromium."""

from __future__ import annotations

from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.api.test_rotation_events import validation_event
from tests.console.test_console_pages import CANARY


def row_button(page, label: str):
    """A per-connection button, by its accessible name ("Edit corp-vault")."""
    return page.wait(lambda d: d.find_element(By.CSS_SELECTOR, f"button[aria-label='{label}']"))


def open_secret_managers(console):
    page = console.page
    page.sign_in(console.token("security"))
    page.go("Secret managers")
    page.wait(lambda d: "internal" in d.find_element(By.ID, "connection-list").text)
    return page


def test_add_edit_and_delete_a_vault_connection(console):
    security = console.tokens.headers("security")
    page = open_secret_managers(console)
    page.button("Add connection").click()
    Select(page.by_label("Type")).select_by_visible_text("HashiCorp Vault")
    # No choice to type a credential in: the auth token is a reference, and no field takes a password.
    assert page.driver.find_elements(By.CSS_SELECTOR, "#connection-form input[type=password]") == []
    # Every control has a visible label of its own.
    for control in page.driver.find_elements(By.CSS_SELECTOR, "#connection-form input, #connection-form select, #connection-form textarea"):
        labels = page.driver.find_elements(By.CSS_SELECTOR, f"label[for='{control.get_attribute('id')}']")
        assert len(labels) == 1 and labels[0].text.strip(), control.get_attribute("id")
    page.fill("Name", "corp-vault")
    page.fill("URL", "not a url")
    page.fill("Cache TTL (seconds) (optional)", "-5")
    Select(page.by_label("Auth method")).select_by_visible_text("Token")
    assert [o.text for o in Select(page.by_label("Auth token from")).options] == ["Environment variable", "File", "Internal secret"]
    page.fill("Auth token reference", "VAULT_TOKEN")
    page.button("Save connection").click()

    # The service's per-field errors beside their fields, and a summary linking to each.
    summary = page.wait(lambda d: d.find_element(By.ID, "connection-error-summary") if d.find_element(By.ID, "connection-error-summary").is_displayed() else False)
    assert "There is a problem" in summary.text
    assert "Not a valid URL." in page.text_of("#conn-url-error")
    assert "greater than or equal to 0" in page.text_of("#conn-cache_ttl_seconds-error")
    assert page.by_label("URL").get_attribute("aria-invalid") == "true"
    assert "URL: Not a valid URL." in summary.text
    assert console.client.get("/v1/secret-providers/corp-vault", headers=security).status_code == 404

    page.fill("URL", "https://vault.example.com:8200")
    page.fill("Cache TTL (seconds) (optional)", "120")
    page.fill("Allowed secrets (optional)", "mail/*, relay/*")
    page.button("Save connection").click()
    page.wait(lambda d: 'Connection "corp-vault" saved (version 1)' in d.find_element(By.ID, "connection-status").text)
    saved = console.client.get("/v1/secret-providers/corp-vault", headers=security).json
    assert saved["url"] == "https://vault.example.com:8200"
    assert saved["auth"] == {"method": "token", "token": {"env": "VAULT_TOKEN"}}
    assert saved["allowed_secrets"] == ["mail/*", "relay/*"]
    assert saved["cache_ttl_seconds"] == 120 and saved["mount"] == "secret" and saved["kv_version"] == 2
    assert "corp-vault" in page.text_of("#connection-list")
    # Vault publishes no rotation events: no event key to create.
    assert not page.driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Create event key for corp-vault']")

    row_button(page, "Edit corp-vault").click()
    name = page.by_label("Name")
    assert name.get_attribute("disabled") is not None and name.get_attribute("value") == "corp-vault"
    assert page.by_label("URL").get_attribute("value") == "https://vault.example.com:8200"
    assert page.by_label("Auth token reference").get_attribute("value") == "VAULT_TOKEN"
    Select(page.by_label("Auth method")).select_by_visible_text("AppRole")
    page.fill("Auth role ID", "smtpconf")
    Select(page.by_label("Auth secret ID from")).select_by_visible_text("File")
    page.fill("Auth secret ID reference", "/run/secrets/vault-secret-id")
    page.fill("Mount (optional)", "kv")
    page.button("Save connection").click()
    page.wait(lambda d: 'Connection "corp-vault" saved (version 2)' in d.find_element(By.ID, "connection-status").text)
    saved = console.client.get("/v1/secret-providers/corp-vault", headers=security).json
    assert saved["auth"] == {"method": "approle", "mount": "approle", "role_id": "smtpconf", "secret_id": {"file": "/run/secrets/vault-secret-id"}}
    assert saved["mount"] == "kv" and saved["allowed_secrets"] == ["mail/*", "relay/*"] and saved["cache_ttl_seconds"] == 120

    row_button(page, "Delete corp-vault").click()
    page.button("Delete connection").click()
    page.wait(lambda d: 'Connection "corp-vault" deleted' in d.find_element(By.ID, "connection-status").text)
    assert "corp-vault" not in page.text_of("#connection-list")
    assert console.client.get("/v1/secret-providers/corp-vault", headers=security).status_code == 404
    # The internal store's connection is edited, never deleted.
    assert page.driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Edit internal']")
    assert not page.driver.find_elements(By.CSS_SELECTOR, "button[aria-label='Delete internal']")


def test_a_connection_in_use_is_not_deleted_and_the_page_says_why(console, system_settings):
    security = console.tokens.headers("security")
    connection = {"type": "azure_key_vault", "vault_url": "https://corp.vault.azure.net", "credential": {"kind": "default"}, "allowed_secrets": ["smtp"]}
    assert console.client.put("/v1/secret-providers/corp-kv", json=connection, headers=security).status_code == 201
    settings = dict(system_settings, password={"source": "azure_key_vault", "provider": "corp-kv", "secret": "smtp"})
    assert console.client.put("/v1/smtp", json=settings, headers=console.tokens.headers("admin")).status_code == 200
    page = open_secret_managers(console)
    row_button(page, "Delete corp-kv").click()
    page.button("Delete connection").click()
    alert = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "#connection-panel [role=alert]"))
    assert "provider_in_use" in alert.text and "system" in alert.text
    assert console.client.get("/v1/secret-providers/corp-kv", headers=security).status_code == 200


def test_event_key_is_shown_once_and_works(console):
    security = console.tokens.headers("security")
    connection = {
        "type": "azure_key_vault", "vault_url": "https://corp.vault.azure.net",
        "credential": {"kind": "client_secret", "tenant_id": "t", "client_id": "c", "client_secret": {"env": "KV_SECRET"}},
    }
    assert console.client.put("/v1/secret-providers/corp-kv", json=connection, headers=security).status_code == 201
    page = open_secret_managers(console)
    row_button(page, "Create event key for corp-kv").click()
    key = page.wait(lambda d: d.find_element(By.ID, "event-key-value").text)
    address = page.text_of("#event-key-address")
    assert address == f"{console.url}/v1/secret-providers/corp-kv/events?key={key}"
    assert "shown only this once" in page.text_of("#event-key")

    # The key shown is the one the service accepts.
    path = address.removeprefix(console.url)
    answered = console.client.post(path, json=[validation_event("code-1")])
    assert answered.status_code == 200 and answered.json == {"validationResponse": "code-1"}

    page.button("Done").click()
    page.wait(lambda d: not d.find_elements(By.ID, "event-key"))
    assert key not in page.driver.page_source
    page.driver.refresh()
    page.wait(lambda d: "corp-kv" in d.find_element(By.ID, "connection-list").text)
    assert key not in page.driver.page_source
    audit = console.client.get("/v1/audit?limit=100", headers=security)
    assert key not in audit.get_data(as_text=True)

    # A second key replaces the first, which stops working at once.
    row_button(page, "Create event key for corp-kv").click()
    page.wait(lambda d: d.find_element(By.ID, "event-key-value").text not in ("", key))
    assert console.client.post(path, json=[validation_event("code-2")]).status_code == 401


def test_password_dialog_pins_a_version_and_the_editor_shows_it(console, system_settings):
    security = console.tokens.headers("security")
    for value in (f"{CANARY}-v1", f"{CANARY}-v2"):
        assert console.client.put("/v1/secrets/smtp/relay", json={"value": value}, headers=security).status_code in (200, 201)
    console.client.put("/v1/smtp", json=system_settings, headers=console.tokens.headers("admin"))
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    page.button("Change password").click()
    Select(page.by_label("Input type")).select_by_visible_text("Internal secret manager")
    value = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "select#secret-value"))
    Select(value).select_by_visible_text("smtp/relay")
    version = page.by_label("Version")
    assert "latest" in page.text_of("#secret-version-hint")
    version.send_keys("1")
    page.button("Use this password").click()
    page.wait(lambda d: "smtp/relay (version 1)" in d.find_element(By.ID, "password-summary").text)
    page.button("Submit").click()
    page.button("Confirm").click()
    page.wait(lambda d: "Settings saved" in d.find_element(By.ID, "save-status").text)
    saved = console.client.get("/v1/smtp", headers=console.tokens.headers("admin")).json
    assert saved["password"] == {"source": "internal", "secret": "smtp/relay", "version": 1}
    effective = console.client.get("/v1/smtp/effective?include_password=true", headers=console.tokens.headers("secret-reader", "reader"))
    assert effective.json["password"] == f"{CANARY}-v1"

    # Opened again, the dialog shows the pinned version; emptied, the reference follows the latest again.
    page.button("Change password").click()
    version = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "input#secret-version"))
    assert version.get_attribute("value") == "1"
    version.clear()
    page.button("Use this password").click()
    page.button("Submit").click()
    page.button("Confirm").click()
    page.wait(lambda d: "(version 3)" in d.find_element(By.ID, "save-status").text)
    saved = console.client.get("/v1/smtp", headers=console.tokens.headers("admin")).json
    assert saved["password"] == {"source": "internal", "secret": "smtp/relay", "version": None}
    assert CANARY not in page.driver.page_source


def test_an_edit_over_someone_elses_change_is_refused_not_lost(console):
    security = console.tokens.headers("security")
    connection = {"type": "azure_key_vault", "vault_url": "https://corp.vault.azure.net", "credential": {"kind": "default"}}
    assert console.client.put("/v1/secret-providers/corp-kv", json=connection, headers=security).status_code == 201
    page = open_secret_managers(console)
    row_button(page, "Edit corp-kv").click()
    page.fill("Allowed secrets (optional)", "smtp-*")
    # Someone else saves in between: the page's If-Match no longer matches.
    assert console.client.put("/v1/secret-providers/corp-kv", json={**connection, "allowed_secrets": ["other"]}, headers=security).status_code == 200
    page.button("Save connection").click()
    summary = page.wait(lambda d: d.find_element(By.ID, "connection-error-summary") if d.find_element(By.ID, "connection-error-summary").is_displayed() else False)
    assert "Someone else changed this connection" in summary.text
    assert console.client.get("/v1/secret-providers/corp-kv", headers=security).json["allowed_secrets"] == ["other"]
