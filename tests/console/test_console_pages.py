"""The console in a real headless Chromium: sign-in, navigation by role, the settings page and its checks."""

from __future__ import annotations

import re
from pathlib import Path

from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select

from tests.fixtures.smtp_servers import PASSWORD, USERNAME

STATIC = Path(__file__).resolve().parents[2] / "service" / "console" / "static"
CANARY = "canary-console-41be7a-do-not-leak"


def add_password(page, value):
    page.button("Add password").click()
    Select(page.by_label("Input type")).select_by_visible_text("Input text")
    page.by_label("Value").send_keys(value)
    page.button("Use this password").click()
    page.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog[open]"))


def fill_starttls(page, server, ca_pem, password=PASSWORD, username=USERNAME):
    page.fill("SMTP server", "localhost")
    page.fill("SMTP port", str(server.port))
    Select(page.by_label("SMTP type")).select_by_visible_text("STARTTLS")
    page.by_label("CA certificate (PEM)").send_keys(ca_pem)
    page.fill("From email", "noreply@example.com")
    page.fill("Username", username)
    add_password(page, password)


def wait_state(page, button_text, states=("success", "failure")):
    button = page.button(button_text)
    return page.wait(lambda d: button.get_attribute("data-state") in states and button.get_attribute("data-state"))


def test_root_redirects_and_console_pages_carry_the_security_headers(client):
    assert client.get("/").status_code == 302 and client.get("/").headers["Location"].endswith("/console/")
    for path in ["/console/", *(f"/console/{p.name}" for p in STATIC.iterdir())]:
        response = client.get(path)
        assert response.status_code == 200, path
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'self'" in policy and "frame-ancestors 'none'" in policy
        assert "unsafe-inline" not in policy and "http" not in policy
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Referrer-Policy"] == "no-referrer"
    assert client.get("/console/app.js").mimetype == "text/javascript"
    assert client.get("/console/../app.py").status_code == 404


def test_console_files_have_no_inline_code_no_html_sinks_and_no_outside_origin():
    html = (STATIC / "index.html").read_text()
    assert not re.search(r"<script(?![^>]*\bsrc=)", html), "inline script"
    assert not re.search(r"\sstyle=|\son[a-z]+=", html), "inline style or handler"
    for path in STATIC.iterdir():
        text = path.read_text().replace('xmlns="http://www.w3.org/2000/svg"', "")  # a namespace name, not a fetch
        assert not re.search(r"https?://", text), f"{path.name} names an outside origin"
        if path.suffix == ".js":
            assert not re.search(r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|eval\(|new Function", text), path.name
            assert "localStorage" not in text, path.name


def test_admin_signs_in_lands_on_system_settings_and_signs_out(console):
    page = console.page
    token = console.token("admin")
    page.sign_in(token)
    assert page.nav() == ["System settings", "Tenants", "Audit trail", "Recent mail"]
    assert page.text_of("h1") == "System settings"
    driver = page.driver
    assert driver.execute_script("return sessionStorage.getItem('smtpconf.token')") == token
    assert driver.execute_script("return localStorage.length") == 0
    assert token not in driver.current_url
    page.button("Sign out").click()
    page.by_label("Access token")
    assert driver.execute_script("return sessionStorage.length") == 0
    assert page.driver.find_element(By.ID, "nav").is_displayed() is False


def test_security_sees_only_the_security_pages(console):
    page = console.page
    page.sign_in(console.token("security"))
    assert page.nav() == ["Secret managers", "Secrets", "Audit trail", "Recent mail"]
    page.settle()
    assert page.text_of("h1") == "Secret managers"
    page.open("/console/#/system")  # not theirs: sent to their landing page
    page.settle()
    assert page.text_of("h1") == "Secret managers"


def test_reader_sees_settings_read_only(console, system_settings):
    console.client.put("/v1/smtp", json=system_settings, headers=console.tokens.headers("admin"))
    page = console.page
    page.sign_in(console.token("reader"))
    assert page.nav() == ["System settings", "Tenants"]
    page.settle()
    assert page.by_label("SMTP server").get_attribute("value") == "smtp.example.com"
    assert not page.by_label("SMTP server").is_enabled()
    buttons = page.buttons()
    assert not {"Submit", "Validate configuration", "Test connection", "Change password"} & set(buttons)


def test_a_wrong_token_is_refused_with_a_message(console):
    page = console.page
    page.open()
    page.by_label("Access token").send_keys("smtpconf_not-a-token" + Keys.ENTER)  # Enter submits: keyboard works
    # The form is drawn anew with the message: look the element up each time.
    page.wait(lambda d: d.find_element(By.ID, "token-error").is_displayed())
    assert "not valid" in page.text_of("#token-error")
    assert page.driver.execute_script("return sessionStorage.length") == 0


def test_validate_turns_green_then_red_with_auth_failed(console, starttls_smtp_server, smtp_ca_pem):
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    fill_starttls(page, starttls_smtp_server, smtp_ca_pem)
    page.button("Validate configuration").click()
    assert wait_state(page, "Validate configuration") == "success"
    assert "success" in page.button("Validate configuration").get_attribute("class")
    assert starttls_smtp_server.messages == []

    page.button("Change password").click()
    Select(page.by_label("Input type")).select_by_visible_text("Input text")
    page.by_label("Value").send_keys("not-the-password")
    page.button("Use this password").click()
    assert page.button("Validate configuration").get_attribute("data-state") == "idle"  # the form changed
    page.button("Validate configuration").click()
    assert wait_state(page, "Validate configuration") == "failure"
    alert = page.find("#check-result [role=alert]")
    assert "auth_failed" in alert.text and "auth" in alert.text and "535" in alert.text
    transcript = page.find("#check-result details.transcript")
    assert transcript.get_attribute("open") is None  # collapsed until asked for
    transcript.find_element(By.TAG_NAME, "summary").click()
    assert "AUTH" in transcript.text and "not-the-password" not in page.driver.page_source


def test_test_connection_sends_a_mail_the_server_receives(console, starttls_smtp_server, smtp_ca_pem):
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    fill_starttls(page, starttls_smtp_server, smtp_ca_pem)
    assert page.by_label("Send test mail to").get_attribute("placeholder") == "noreply@example.com"
    page.button("Test connection").click()  # empty: the from email
    assert wait_state(page, "Test connection") == "success"
    assert "test mail accepted" in page.text_of("#check-result [role=status]")
    page.fill("Send test mail to", "ops@example.com")
    page.button("Test connection").click()
    page.wait(lambda d: len(starttls_smtp_server.messages) == 2)
    assert [m.rcpt_tos for m in starttls_smtp_server.messages] == [["noreply@example.com"], ["ops@example.com"]]


def test_submit_confirm_saves_what_was_typed_and_never_shows_the_password(console, starttls_smtp_server, smtp_ca_pem):
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    fill_starttls(page, starttls_smtp_server, smtp_ca_pem, password=CANARY)
    page.fill("From name", "Alerts & Co")
    page.fill("Reply-to", "help@example.com")
    page.fill("Mailto Cc", "audit@example.com, ops@example.com")
    page.fill("Timeout (seconds)", "7")
    page.by_label("Password recovery").click()
    page.button("Submit").click()
    page.button("Confirm").click()
    status = page.wait(lambda d: "Settings saved" in d.find_element(By.ID, "save-status").text and d.find_element(By.ID, "save-status"))
    assert status.get_attribute("role") == "status"
    saved = console.client.get("/v1/smtp", headers=console.tokens.headers("admin")).json
    assert saved["host"] == "localhost" and saved["port"] == starttls_smtp_server.port
    assert saved["security"] == "starttls" and saved["from_email"] == "noreply@example.com"
    assert saved["from_name"] == "Alerts & Co" and saved["reply_to"] == "help@example.com"
    assert saved["cc"] == ["audit@example.com", "ops@example.com"] and saved["timeout_seconds"] == 7
    assert saved["preferred_notifications"] == ["password_recovery"]
    assert saved["username"] == USERNAME and saved["password"] == {"source": "plaintext", "value_set": True}
    assert saved["updated_by"] == "test-admin"
    assert CANARY not in page.driver.page_source
    assert page.find("#password-summary").text.startswith("Set, stored encrypted")
    assert page.button("Change password")
    # Saved again unchanged: the read-back password form keeps the stored value.
    page.button("Submit").click()
    page.button("Confirm").click()
    page.wait(lambda d: "version 2" in d.find_element(By.ID, "save-status").text)
    effective = console.client.get("/v1/smtp/effective?include_password=true", headers=console.tokens.headers("secret-reader"))
    assert effective.json["password"] == CANARY
    assert CANARY not in page.driver.page_source


def test_field_errors_show_beside_their_fields_and_in_a_summary(console):
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    page.fill("SMTP server", "smtp.example.com")
    page.fill("SMTP port", "99999")
    page.fill("From email", "not an address")
    page.button("Submit").click()
    page.button("Confirm").click()
    summary = page.wait(lambda d: d.find_element(By.ID, "error-summary").is_displayed() and d.find_element(By.ID, "error-summary"))
    assert "There is a problem" in summary.text
    assert page.find("#field-port-error").is_displayed() and "65535" in page.text_of("#field-port-error")
    assert page.find("#field-from_email-error").is_displayed()
    assert page.by_label("SMTP port").get_attribute("aria-invalid") == "true"
    summary.find_element(By.PARTIAL_LINK_TEXT, "SMTP port").click()
    assert page.driver.switch_to.active_element.get_attribute("id") == "field-port"
    assert console.client.get("/v1/smtp", headers=console.tokens.headers("admin")).status_code == 404


def test_a_second_writer_in_between_gives_the_412_message_and_reload_shows_theirs(console, system_settings):
    admin = console.tokens.headers("admin")
    console.client.put("/v1/smtp", json=system_settings, headers=admin)
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    page.fill("From name", "Mine")
    theirs = dict(system_settings, from_name="Theirs", password={"source": "plaintext", "value_set": True})
    assert console.client.put("/v1/smtp", json=theirs, headers=admin).status_code == 200
    page.button("Submit").click()
    page.button("Confirm").click()
    alert = page.wait(lambda d: "Someone else saved" in d.find_element(By.ID, "save-alert").text and d.find_element(By.ID, "save-alert"))
    assert alert.get_attribute("role") == "alert"
    assert console.client.get("/v1/smtp", headers=admin).json["from_name"] == "Theirs"
    page.button("Reload").click()
    page.wait(lambda d: page.by_label("From name").get_attribute("value") == "Theirs")
    page.fill("From name", "Mine after all")
    page.button("Submit").click()
    page.button("Confirm").click()
    page.wait(lambda d: "Settings saved" in d.find_element(By.ID, "save-status").text)
    assert console.client.get("/v1/smtp", headers=admin).json["from_name"] == "Mine after all"


def test_anonymous_settings_show_the_warning(console):
    admin = console.tokens.headers("admin")
    console.client.put("/v1/smtp", json={"host": "relay.example.com", "port": 25, "from_email": "a@example.com"}, headers=admin)
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    warning = page.find("#anonymous-warning")
    assert warning.is_displayed() and "Anonymous SMTP" in warning.text
    assert "\u26a0" in warning.text  # an icon as well as the words
    page.fill("Username", "mailer")
    page.wait(lambda d: not d.find_elements(By.ID, "anonymous-warning"))


def test_tenant_page_marks_inherited_fields_and_saves_only_overrides(console, system_settings):
    admin = console.tokens.headers("admin")
    console.client.put("/v1/smtp", json=system_settings, headers=admin)
    console.client.put("/v1/tenants/acme/smtp", json={"from_name": "ACME alerts"}, headers=admin)
    page = console.page
    page.sign_in(console.token("admin"))
    page.go("Tenants")
    row = page.wait(lambda d: d.find_element(By.LINK_TEXT, "acme"))
    row.click()
    page.wait(lambda d: d.find_element(By.TAG_NAME, "h1").text == 'Tenant "acme"')
    page.settle()
    host_tag = page.find("#inherited-host")
    assert host_tag.is_displayed() and host_tag.text.lower() == "inherited"
    assert page.by_label("SMTP server").get_attribute("value") == "smtp.example.com"  # the system value, shown
    assert not page.by_label("SMTP server").is_enabled()
    assert not page.find("#inherited-from_name").is_displayed()
    assert page.by_label("From name").get_attribute("value") == "ACME alerts"
    assert page.find("#inherited-password").is_displayed()
    page.find("#inherit-port").click()  # override the port for this tenant
    assert not page.find("#inherited-port").is_displayed()
    page.fill("SMTP port", "2525")
    page.button("Submit").click()
    page.button("Confirm").click()
    page.wait(lambda d: "Settings saved" in d.find_element(By.ID, "save-status").text)
    stored = console.client.get("/v1/tenants/acme/smtp", headers=admin).json
    assert stored["port"] == 2525 and stored["from_name"] == "ACME alerts"
    assert "host" not in {k for k in stored if k not in stored.get("inherited", [])} or "host" in stored["inherited"]
    assert "port" not in stored["inherited"] and "host" in stored["inherited"]


def test_open_a_new_tenant_by_id(console, system_settings):
    console.client.put("/v1/smtp", json=system_settings, headers=console.tokens.headers("admin"))
    page = console.page
    page.sign_in(console.token("admin"))
    page.go("Tenants")
    page.fill("Tenant", "bad id!")
    page.button("Open").click()
    assert page.find("#tenant-id-error").is_displayed()
    page.fill("Tenant", "globex")
    page.button("Open").click()
    page.wait(lambda d: d.find_element(By.TAG_NAME, "h1").text == 'Tenant "globex"')
    page.settle()
    assert "no override yet" in page.text_of("#settings-meta")
    assert page.find("#inherited-from_email").is_displayed()


def test_oauth2_shows_the_fields_of_each_flow_instead_of_the_password(console, system_settings):
    console.client.put("/v1/smtp", json=system_settings, headers=console.tokens.headers("admin"))
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    Select(page.by_label("Authentication")).select_by_visible_text("OAuth2")
    assert not page.find("#row-field-password").is_displayed()
    assert Select(page.by_label("Flow")).first_selected_option.text.startswith("Microsoft")
    for label in ("Tenant ID", "Client ID", "Scope", "Authority host"):
        assert page.by_label(label).is_displayed()
    assert page.button("Set client secret") and page.button("Set client certificate")
    Select(page.by_label("Flow")).select_by_visible_text("Google service account")
    assert page.button("Set service account key")
    assert page.driver.find_elements(By.ID, "field-auth-tenant_id") == []
    Select(page.by_label("Authentication")).select_by_visible_text("Password")
    assert page.find("#row-field-password").is_displayed() and page.button("Change password")


def test_a_check_is_busy_for_as_long_as_the_server_keeps_silent_then_times_out(console, silent_server):
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    page.fill("SMTP server", "127.0.0.1")
    page.fill("SMTP port", str(silent_server.port))
    Select(page.by_label("SMTP type")).select_by_visible_text("None")
    page.fill("From email", "noreply@example.com")
    page.fill("Timeout (seconds)", "2")
    button = page.button("Validate configuration")
    button.click()
    # Busy at once: disabled, announced, and the other check cannot start meanwhile.
    assert button.get_attribute("data-state") == "busy" and button.get_attribute("aria-busy") == "true"
    assert not button.is_enabled() and not page.driver.find_element(By.ID, "test-connection").is_enabled()
    assert "up to 2 seconds" in page.text_of("#check-progress")
    assert wait_state(page, "Validate configuration") == "failure"
    assert button.is_enabled() and button.get_attribute("aria-busy") == "false"
    assert "timeout" in page.text_of("#check-result [role=alert]")


def microsoft_oauth_form(make_console, oauth, smtp_ca_pem, client_id):
    """A console signed in as admin, the form filled for XOAUTH2 through the Entra-shaped token endpoint."""
    from tests.fixtures.oauth_servers import MAILBOX, TENANT

    console = make_console([oauth.xoauth2.port])
    page = console.page
    page.sign_in(console.token("admin"))
    page.settle()
    page.fill("SMTP server", "localhost")
    page.fill("SMTP port", str(oauth.xoauth2.port))
    page.by_label("CA certificate (PEM)").send_keys(smtp_ca_pem)
    page.fill("From email", MAILBOX)
    page.fill("Username", MAILBOX)
    Select(page.by_label("Authentication")).select_by_visible_text("OAuth2")
    page.fill("Tenant ID", TENANT)
    page.fill("Client ID", client_id)
    page.fill("Authority host", oauth.tokens.base_url)
    return console, page


def test_oauth2_microsoft_validates_and_saves_through_the_console(make_console, oauth, smtp_ca_pem):
    from tests.fixtures.oauth_servers import CLIENT_ID, CLIENT_SECRET

    console, page = microsoft_oauth_form(make_console, oauth, smtp_ca_pem, CLIENT_ID)
    page.button("Set client secret").click()
    Select(page.by_label("Input type")).select_by_visible_text("Input text")
    page.by_label("Value").send_keys(CLIENT_SECRET)
    page.button("Use this client secret").click()
    page.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog[open]"))
    page.button("Validate configuration").click()
    assert wait_state(page, "Validate configuration") == "success", page.text_of("#check-result")
    page.button("Submit").click()
    page.button("Confirm").click()
    page.wait(lambda d: "Settings saved" in d.find_element(By.ID, "save-status").text)
    saved = console.client.get("/v1/smtp", headers=console.tokens.headers("admin")).json
    assert saved["auth"]["flow"] == "microsoft" and saved["auth"]["client_id"] == CLIENT_ID
    assert saved["auth"]["client_secret"] == {"source": "plaintext", "value_set": True}
    assert saved.get("password") is None
    assert CLIENT_SECRET not in page.driver.page_source
    assert Select(page.by_label("Authentication")).first_selected_option.text == "OAuth2"


def test_oauth2_microsoft_with_a_client_certificate_typed_in_validates_and_saves(make_console, oauth, smtp_ca_pem):
    from tests.fixtures.oauth_servers import CERT_CLIENT_ID

    console, page = microsoft_oauth_form(make_console, oauth, smtp_ca_pem, CERT_CLIENT_ID)
    page.button("Set client certificate").click()
    Select(page.by_label("Input type")).select_by_visible_text("Input text")
    value = page.by_label("Value")
    assert value.tag_name == "textarea"  # a PEM keeps its line breaks
    value.send_keys(oauth.certificate_pem)
    page.button("Use this client certificate").click()
    page.wait(lambda d: not d.find_elements(By.CSS_SELECTOR, "dialog[open]"))
    page.button("Validate configuration").click()
    assert wait_state(page, "Validate configuration") == "success", page.text_of("#check-result")
    page.button("Submit").click()
    page.button("Confirm").click()
    page.wait(lambda d: "Settings saved" in d.find_element(By.ID, "save-status").text)
    saved = console.client.get("/v1/smtp", headers=console.tokens.headers("admin")).json
    assert saved["auth"]["client_certificate"] == {"source": "plaintext", "value_set": True}
    assert "client_secret" not in saved["auth"]
    assert "PRIVATE KEY" not in page.driver.page_source
