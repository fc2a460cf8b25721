"""The console in headless Chromium: secret pickers from a real OpenBao, the security pages, XSS probes, reach."""

from __future__ import annotations

import itertools
import time

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.console.conftest import MARKUP
from tests.console.test_console_pages import CANARY, wait_state

_mounts = itertools.count()


def no_markup_was_parsed(page) -> None:
    """The probe's <img> never became an element, its handler never ran, and no dialog opened."""
    assert page.driver.find_elements(By.CSS_SELECTOR, "img") == []
    assert page.driver.execute_script("return window.__xss") is None
    assert not page.alerts_fired()


def test_password_picker_lists_secrets_from_openbao_and_saves_the_reference(console, openbao, monkeypatch, system_settings):
    mount = f"kv-console-{next(_mounts)}-{int(time.time() * 1000) % 100000}"
    openbao.enable_kv(mount, version=2)
    openbao.write_policy(f"{mount}-list", f'path "{mount}/metadata/*" {{ capabilities = ["list"] }}\npath "{mount}/data/*" {{ capabilities = ["read"] }}\n')
    monkeypatch.setenv("SMTPCONF_TEST_CONSOLE_VAULT_TOKEN", openbao.create_token([f"{mount}-list"]))
    for path in ("mail/smtp", "mail/relays/eu", "infra/root"):
        openbao.write_secret(mount, path, {"password": CANARY})
    connection = {
        "type": "hashicorp_vault", "url": openbao.url, "mount": mount, "kv_version": 2,
        "auth": {"method": "token", "token": {"env": "SMTPCONF_TEST_CONSOLE_VAULT_TOKEN"}},
        "allowed_secrets": ["mail/*"], "timeout_seconds": 2,
    }
    assert console.client.put("/v1/secret-providers/corp-vault", json=connection, headers=console.tokens.headers("security")).status_code == 201
    console.client.put("/v1/smtp", json=system_settings, headers=console.tokens.headers("admin"))
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    page.button("Change password").click()
    Select(page.by_label("Input type")).select_by_visible_text("HashiCorp Vault")
    assert Select(page.by_label("Connection")).first_selected_option.text == "corp-vault"
    value = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "select#secret-value"))
    options = [o.text for o in Select(value).options]
    assert options == ["mail/smtp", "mail/relays/eu", "Enter another name…"]  # infra/root is not allowed
    Select(value).select_by_visible_text("mail/relays/eu")
    page.button("Use this password").click()
    page.wait(lambda d: "mail/relays/eu" in d.find_element(By.ID, "password-summary").text)
    page.button("Submit").click()
    page.button("Confirm").click()
    page.wait(lambda d: "Settings saved" in d.find_element(By.ID, "save-status").text)
    saved = console.client.get("/v1/smtp", headers=console.tokens.headers("admin")).json
    assert saved["password"] == {"source": "hashicorp_vault", "provider": "corp-vault", "path": "mail/relays/eu", "key": "password", "version": None} or (
        saved["password"]["path"] == "mail/relays/eu" and saved["password"]["key"] == "password"
    )
    assert CANARY not in page.driver.page_source


def test_cyberark_password_is_entered_by_name(console, cyberark_ccp, tmp_path, system_settings):
    from tests.fixtures.cyberark_ccp import APP_ID

    pem = tmp_path / "ccp-client.pem"
    pem.write_text(cyberark_ccp.client_certificate_pem)
    connection = {
        "type": "cyberark", "url": cyberark_ccp.url, "app_id": APP_ID, "client_certificate": {"file": str(pem)},
        "ca_certificate_pem": cyberark_ccp.ca_pem, "allowed_secrets": ["SMTP/*"],
    }
    console.client.put("/v1/secret-providers/ccp", json=connection, headers=console.tokens.headers("security"))
    console.client.put("/v1/smtp", json=system_settings, headers=console.tokens.headers("admin"))
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    page.button("Change password").click()
    Select(page.by_label("Input type")).select_by_visible_text("CyberArk")
    value = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "input#secret-value[type=text]"))
    assert "cannot list" in page.text_of("#secret-value-hint")
    value.send_keys("SMTP/relay")
    page.button("Use this password").click()
    page.wait(lambda d: "safe SMTP, object relay" in d.find_element(By.ID, "password-summary").text)


def test_security_pages_check_new_version_invalidate_and_audit_paging(console):
    security = console.tokens.headers("security")
    for index in range(30):  # more than one page of the audit trail
        console.client.put("/v1/secrets/smtp/relay", json={"value": f"{CANARY}-{index}"}, headers=security)
    page = console.page
    page.sign_in(console.token("security"))
    page.settle()
    check = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "button[data-connection='internal']"))
    check.click()
    page.wait(lambda d: check.get_attribute("data-state") == "success")
    assert "Reachable" in page.text_of("#check-result-internal")

    page.fill("Secret (optional)", "smtp/relay")
    Select(page.by_label("Connection")).select_by_visible_text("internal")
    page.button("Invalidate cache").click()
    page.wait(lambda d: "Cache invalidated" in d.find_element(By.ID, "invalidate-status").text)

    page.go("Secrets")
    page.wait(lambda d: "smtp/relay" in d.find_element(By.ID, "secret-list").text)
    assert "30" in page.text_of("#secret-list")
    page.find("#secret-list details.history summary").click()
    versions = page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#secret-list ol.versions li"))
    assert len(versions) == 30 and "test-security" in versions[0].text
    page.fill("Name", "smtp/backup")
    page.by_label("Value").send_keys(CANARY)
    page.button("New version").click()
    page.wait(lambda d: "Version 1 of smtp/backup saved" in d.find_element(By.ID, "secret-status").text)
    page.wait(lambda d: "smtp/backup" in d.find_element(By.ID, "secret-list").text)
    assert CANARY not in page.driver.page_source

    page.go("Audit trail")
    first = page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#audit-list tbody tr"))
    assert len(first) == 25
    assert "secret.create" in first[0].text and "smtp/backup" in first[0].text  # newest first
    page.button("Older events").click()
    page.wait(lambda d: "Page 2" in d.find_element(By.ID, "audit-status").text)
    rows = page.driver.find_elements(By.CSS_SELECTOR, "#audit-list tbody tr")
    assert 0 < len(rows) <= 25
    assert any("secret.create" in row.text and "smtp/relay" in row.text for row in rows)  # the oldest changes
    page.button("Newer events").click()
    page.wait(lambda d: "Page 1" in d.find_element(By.ID, "audit-status").text)
    assert CANARY not in page.driver.page_source


def test_markup_from_the_api_stays_text(console, system_settings, markup_smtp_server):
    admin = console.tokens.headers("admin")
    probe = dict(system_settings, from_name=MARKUP, host="127.0.0.1", port=markup_smtp_server.port, security="none",
                 username=None, password=None)
    assert console.client.put("/v1/smtp", json=probe, headers=admin).status_code == 200
    console.client.put("/v1/tenants/acme/smtp", json={"from_name": MARKUP}, headers=admin)
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    assert page.by_label("From name").get_attribute("value") == MARKUP
    page.button("Validate configuration").click()
    assert wait_state(page, "Validate configuration") == "failure"
    alert = page.find("#check-result [role=alert]")
    assert MARKUP in alert.text  # the SMTP reply, as text
    alert.find_element(By.TAG_NAME, "summary").click()
    assert MARKUP in page.text_of("#check-result pre")  # the transcript, as text
    no_markup_was_parsed(page)

    page.go("Audit trail")
    details = page.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#audit-list details"))
    for element in details:
        element.find_element(By.TAG_NAME, "summary").click()
    assert "onerror" in page.text_of("#audit-list")
    no_markup_was_parsed(page)

    page.go("Tenants")
    page.wait(lambda d: d.find_element(By.LINK_TEXT, "acme")).click()
    page.wait(lambda d: page.by_label("From name").get_attribute("value") == MARKUP)
    page.open("/console/#/tenants/" + "%3Cimg%20src%3Dx%20onerror%3Dalert(1)%3E")  # not a tenant id
    page.wait(lambda d: "could not be read" in d.find_element(By.TAG_NAME, "main").text)
    assert "<img src=x onerror=alert(1)>" in page.text_of("h1")
    no_markup_was_parsed(page)


def test_every_control_is_labelled_and_the_page_fits_1024_pixels(console, system_settings):
    console.client.put("/v1/smtp", json=system_settings, headers=console.tokens.headers("admin"))
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    unlabelled = page.driver.execute_script(
        """
        return [...document.querySelectorAll('main input, main select, main textarea, main button')]
          .filter((c) => !(c.labels && c.labels.length) && !c.getAttribute('aria-label') && !(c.tagName === 'BUTTON' && c.textContent.trim()))
          .map((c) => c.id || c.outerHTML.slice(0, 80));
        """
    )
    assert unlabelled == []
    assert page.driver.execute_script("return window.innerWidth") <= 1024
    assert page.driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")
    # Keyboard: Tab from the last field reaches the check and submit buttons in order.
    page.by_label("Send test mail to").send_keys(Keys.TAB)
    assert page.driver.switch_to.active_element.text == "Test connection"
    page.driver.switch_to.active_element.send_keys(Keys.TAB)
    assert page.driver.switch_to.active_element.text == "Submit"
    page.driver.switch_to.active_element.send_keys(Keys.ENTER)
    assert page.driver.switch_to.active_element.text == "Confirm"  # focus moves to the confirmation


def test_a_manager_that_cannot_be_reached_leaves_free_entry_in_the_picker(console, system_settings):
    from tests.fixtures.smtp_servers import free_port

    down = {
        "type": "hashicorp_vault", "url": f"http://127.0.0.1:{free_port()}", "mount": "secret",
        "auth": {"method": "token", "token": {"env": "SMTPCONF_TEST_UNUSED_TOKEN"}}, "allowed_secrets": ["mail/*"],
        "timeout_seconds": 1,
    }
    console.client.put("/v1/secret-providers/down-vault", json=down, headers=console.tokens.headers("security"))
    console.client.put("/v1/smtp", json=system_settings, headers=console.tokens.headers("admin"))
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    page.button("Change password").click()
    Select(page.by_label("Input type")).select_by_visible_text("HashiCorp Vault")
    value = page.wait(lambda d: d.find_element(By.CSS_SELECTOR, "input#secret-value[type=text]"))
    assert "could not be listed" in page.text_of("#secret-value-hint")
    value.send_keys("mail/smtp")
    page.button("Use this password").click()
    page.wait(lambda d: 'HashiCorp Vault "down-vault": mail/smtp' in d.find_element(By.ID, "password-summary").text)
