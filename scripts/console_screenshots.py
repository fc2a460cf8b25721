"""Regenerate the console screenshots in docs/ with headless Chromium against a seeded service on loopback.

Run from the repository root: ``.venv/bin/python scripts/console_screenshots.py`` (after ``make test``: the test extra
and Debian's chromium and chromium-driver, as the browser tests do).
"""

from __future__ import annotations

import base64
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import trustme  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

from service.app import create_app  # noqa: E402
from service.tokens import create_token  # noqa: E402
from tests.console.harness import Page, ServedApp, start_browser, stop_browser  # noqa: E402
from tests.fixtures.smtp_servers import (  # noqa: E402
    PASSWORD,
    REFUSED_RECIPIENT,
    USERNAME,
    RecordingHandler,
    start_smtp_server,
    start_starttls_smtp_server,
)

DOCS = ROOT / "docs"
WIDTH = 1024


def shoot(page: Page, name: str, element_css: str | None = None) -> None:
    """A full-height capture of the page (or of one element) as docs/NAME.png."""
    driver = page.driver
    driver.execute_script("window.scrollTo(0, 0)")
    target = DOCS / f"console-{name}.png"
    if element_css:
        box = driver.execute_script(
            "const r = document.querySelector(arguments[0]).getBoundingClientRect();"
            "return {x: r.left + scrollX, y: r.top + scrollY, width: r.width, height: r.height};",
            element_css,
        )
        clip = {**box, "scale": 1}
    else:
        # The whole page, beyond the window's height, at the window's width.
        size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": WIDTH, "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    target.write_bytes(base64.b64decode(shot["data"]))
    print(f"{target.relative_to(ROOT)}: {target.stat().st_size // 1024} KiB")


def main() -> None:
    DOCS.mkdir(exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="smtpconf-shots-"))
    ca = trustme.CA()
    smtp = start_starttls_smtp_server(ca)
    refusing = start_smtp_server(RecordingHandler(refused_recipients=frozenset({REFUSED_RECIPIENT})))
    ca_pem = ca.cert_pem.bytes().decode()
    app = create_app(
        {
            "database_url": f"sqlite:///{workdir / 'console.db'}",
            "master_key": base64.b64encode(b"s" * 32).decode(),
            "smtp_allowed_ports": f"25,465,587,2525,{smtp.port},{refusing.port}",
        }
    )
    services = app.extensions["smtpconf"]
    services.db.upgrade()
    admin = create_token(services.db, "alice-admin", ["admin"])
    security = create_token(services.db, "sam-security", ["security"])
    client = app.test_client()
    as_admin = {"Authorization": f"Bearer {admin}"}
    as_security = {"Authorization": f"Bearer {security}"}
    client.put("/v1/secrets/smtp/relay", json={"value": "relay-password"}, headers=as_security)
    client.put("/v1/secrets/smtp/relay", json={"value": "relay-password-2"}, headers=as_security)
    client.put(
        "/v1/smtp",
        headers=as_admin,
        json={
            "host": "localhost", "port": smtp.port, "security": "starttls", "ca_certificate_pem": ca_pem,
            "from_email": "noreply@example.com", "from_name": "Example Alerts", "username": USERNAME,
            "password": {"source": "plaintext", "value": PASSWORD}, "cc": ["audit@example.com"],
            "preferred_notifications": ["password_recovery", "license_status"], "timeout_seconds": 10,
        },
    )
    for tenant, override in (
        ("acme", {"from_email": "alerts@acme.example", "from_name": "ACME Alerts"}),
        ("globex", {"port": 2525, "cc": []}),
    ):
        client.put(f"/v1/tenants/{tenant}/smtp", json=override, headers=as_admin)
    client.put(
        "/v1/tenants/initech/smtp", headers=as_admin,
        json={"host": "127.0.0.1", "port": refusing.port, "security": "none", "username": None, "password": None},
    )
    as_sender = {"Authorization": f"Bearer {create_token(services.db, 'billing-app', ['sender'])}"}
    # Two messages sent and one the server refuses, for the Recent mail page.
    for path, to, extra in (
        ("/v1/messages", ["ada@example.com"], {"notification": "password_recovery"}),
        ("/v1/tenants/acme/messages", ["grace@example.org", "linus@example.net"], {}),
        ("/v1/tenants/initech/messages", [REFUSED_RECIPIENT], {}),
    ):
        client.post(path, headers=as_sender, json={"subject": "Your invoice", "text": "Attached.", "to": to, **extra})

    served = ServedApp(app)
    driver, profile = start_browser(WIDTH, 800)
    page = Page(driver, served.url)
    try:
        page.open()
        page.by_label("Access token")
        shoot(page, "sign-in")

        page.sign_in(admin)
        page.settle()
        page.button("Validate configuration").click()
        button = page.button("Validate configuration")
        page.wait(lambda d: button.get_attribute("data-state") in ("success", "failure"))
        shoot(page, "system-settings")

        page.button("Change password").click()
        Select(page.by_label("Input type")).select_by_visible_text("Input text")
        page.by_label("Value").send_keys("not-the-password")
        page.button("Use this password").click()
        page.button("Validate configuration").click()
        page.wait(lambda d: button.get_attribute("data-state") == "failure")
        page.driver.find_element(By.CSS_SELECTOR, "#check-result details summary").click()
        shoot(page, "validation-failed", ".checks")

        page.open("/console/#/tenants/acme")
        page.wait(lambda d: d.find_element(By.TAG_NAME, "h1").text == 'Tenant "acme"')
        page.settle()
        shoot(page, "tenant")

        page.open("/console/#/system")
        page.settle()
        page.button("Change password").click()
        Select(page.by_label("Input type")).select_by_visible_text("Internal secret manager")
        page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "select#secret-value"))
        driver.set_window_size(WIDTH, 800)
        driver.save_screenshot(str(DOCS / "console-password-dialog.png"))
        print(f"docs/console-password-dialog.png: {(DOCS / 'console-password-dialog.png').stat().st_size // 1024} KiB")
        page.button("Cancel").click()

        page.button("Sign out").click()
        page.sign_in(security)
        client.put(
            "/v1/secret-providers/corp-kv",
            headers=as_security,
            json={"type": "azure_key_vault", "vault_url": "https://corp.vault.azure.net", "credential": {"kind": "default"},
                  "allowed_secrets": ["smtp-*"]},
        )
        page.go("Secret managers")
        page.button("Add connection").click()
        Select(page.by_label("Type")).select_by_visible_text("HashiCorp Vault")
        page.fill("Name", "corp-vault")
        page.fill("URL", "vault.example.com")
        Select(page.by_label("Auth method")).select_by_visible_text("AppRole")
        page.fill("Auth role ID", "smtpconf")
        Select(page.by_label("Auth secret ID from")).select_by_visible_text("File")
        page.fill("Auth secret ID reference", "/run/secrets/vault-secret-id")
        page.fill("Allowed secrets (optional)", "mail/*")
        page.button("Save connection").click()
        page.wait(lambda d: d.find_element(By.ID, "connection-error-summary").is_displayed())
        shoot(page, "connection-editor", "#connection-form")
        page.button("Cancel").click()
        page.driver.find_element(By.CSS_SELECTOR, "button[aria-label='Create event key for corp-kv']").click()
        page.find("#event-key-value")
        shoot(page, "secret-managers")

        page.go("Audit trail")
        rows = page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#audit-list tbody tr"))
        rows[2].find_element(By.TAG_NAME, "summary").click()  # the system settings change, password redacted
        shoot(page, "audit-trail")

        page.go("Recent mail")
        page.wait(lambda d: "Page 1" in d.find_element(By.ID, "mail-status").text)
        shoot(page, "recent-mail")
    finally:
        stop_browser(driver, profile)
        served.stop()
        smtp.stop()
        refusing.stop()
        services.close()


if __name__ == "__main__":
    main()
