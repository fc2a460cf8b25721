"""The console's Recent mail page in a real Chromium, over messages sent through the served service to aiosmtpd."""

from __future__ import annotations

import requests
from selenium.webdriver.common.by import By

from service.tokens import create_token
from tests.fixtures.smtp_servers import REFUSED_RECIPIENT

SUBJECT = "canary-subject-5e1f0a never shown"
BODY = "canary-body-9c2d7b never shown"


def rows(page):
    return page.driver.find_elements(By.CSS_SELECTOR, "#mail-list tbody tr")


def cells(row):
    return [cell.text for cell in row.find_elements(By.TAG_NAME, "td")]


def wait_status(page, text):
    page.wait(lambda d: text in d.find_element(By.ID, "mail-status").text)


def test_recent_mail_shows_sent_and_refused_messages_with_the_reply_filters_by_tenant_and_pages(
    make_console, recipient_refusing_smtp_server
):
    server = recipient_refusing_smtp_server
    console = make_console(ports=[server.port])
    admin = console.tokens.headers("admin")
    settings = {"host": "127.0.0.1", "port": server.port, "security": "none", "from_email": "noreply@example.com",
                "timeout_seconds": 5}
    assert console.client.put("/v1/smtp", json=settings, headers=admin).status_code == 200
    assert console.client.put("/v1/tenants/acme/smtp", json={"from_name": "Acme"}, headers=admin).status_code == 200
    sender = console.tokens.headers("sender")

    def send(path, **message):
        payload = {"subject": SUBJECT, "text": BODY, **message}
        return requests.post(f"{console.url}{path}", json=payload, headers=sender, timeout=30)

    for _ in range(24):  # one page and a bit: the two that matter land on page 1, the oldest on page 2
        assert send("/v1/messages", to=["bob@filler.example"]).status_code == 200
    accepted = send("/v1/messages", to=["ada@example.com", "grace@example.org"], notification="password_recovery")
    assert accepted.status_code == 200, accepted.text
    refused = send("/v1/tenants/acme/messages", to=[REFUSED_RECIPIENT])
    assert refused.status_code == 502 and refused.json()["code"] == "upstream_rejected"

    page = console.page
    page.sign_in(console.token("admin"))
    assert "Recent mail" in page.nav()
    page.go("Recent mail")
    wait_status(page, "Page 1: 25 messages")
    newest, second = rows(page)[:2]
    when, tenant, outcome, recipients, notification, message_id, channel, reply = cells(newest)
    assert (tenant, channel) == ("acme", "HTTP") and "by test-sender" in when
    assert "Refused by the server" in outcome and "upstream_rejected" in outcome
    assert reply == "550 5.1.1 Mailbox unavailable"
    assert recipients.split("\n") == ["1", "example.com"]
    assert newest.find_element(By.CSS_SELECTOR, "[data-outcome]").get_attribute("data-outcome") == "rejected"
    when, tenant, outcome, recipients, notification, message_id, channel, reply = cells(second)
    assert (tenant, outcome, notification, channel) == ("System level", "\u2714 Sent", "Password recovery", "HTTP")
    assert message_id == accepted.json()["message_id"]
    assert reply == "250 2.0.0 Message accepted"
    assert recipients.split("\n") == ["2", "example.com, example.org"]
    assert SUBJECT not in page.driver.page_source and BODY not in page.driver.page_source

    page.button("Older").click()
    wait_status(page, "Page 2: 1 message")
    assert "filler.example" in cells(rows(page)[0])[3]
    page.button("Newer").click()
    wait_status(page, "Page 1: 25 messages")

    page.fill("Tenant", "acme")
    page.button("Filter").click()
    wait_status(page, "Page 1 for tenant acme: 1 message")
    assert len(rows(page)) == 1 and cells(rows(page)[0])[1] == "acme"
    assert not page.driver.find_elements(By.ID, "mail-older")
    page.fill("Tenant", "nobody-here")
    page.button("Filter").click()
    wait_status(page, "No message has been sent for tenant nobody-here yet.")
    assert rows(page) == []
    page.fill("Tenant", "not a tenant!")
    page.button("Filter").click()
    page.wait(lambda d: d.find_element(By.ID, "mail-tenant-error").is_displayed())
    assert page.by_label("Tenant").get_attribute("aria-invalid") == "true"
    page.fill("Tenant", "")
    page.button("Filter").click()
    wait_status(page, "Page 1: 25 messages")
    assert page.driver.execute_script("return document.documentElement.scrollWidth <= window.innerWidth")


def test_security_sees_recent_mail_and_a_token_without_admin_or_security_does_not(console):
    page = console.page
    page.sign_in(console.token("security"))
    assert page.nav() == ["Secret managers", "Secrets", "Audit trail", "Recent mail"]
    page.go("Recent mail")
    wait_status(page, "No message has been sent yet.")
    page.button("Sign out").click()

    page.sign_in(console.token("reader"))
    assert "Recent mail" not in page.nav()
    page.open("/console/#/recent-mail")  # typed in: sent to the landing page instead
    page.settle()
    assert page.text_of("h1") == "System settings"
    assert not page.driver.find_elements(By.ID, "mail-list")


def test_a_token_restricted_to_a_tenant_starts_on_its_tenant_and_is_refused_the_rest(make_console, plain_smtp_server):
    console = make_console(ports=[plain_smtp_server.port])
    admin = console.tokens.headers("admin")
    settings = {"host": "127.0.0.1", "port": plain_smtp_server.port, "security": "none",
                "from_email": "noreply@example.com", "timeout_seconds": 5}
    assert console.client.put("/v1/smtp", json=settings, headers=admin).status_code == 200
    assert console.client.put("/v1/tenants/acme/smtp", json={"from_name": "Acme"}, headers=admin).status_code == 200
    sender = console.tokens.headers("sender")
    for path, domain in (("/v1/tenants/acme/messages", "acme.example"), ("/v1/messages", "system.example")):
        message = {"to": [f"ada@{domain}"], "subject": "s", "text": "t"}
        assert requests.post(f"{console.url}{path}", json=message, headers=sender, timeout=30).status_code == 200
    token = create_token(console.app.extensions["smtpconf"].db, "acme-admin", ["admin"], tenants=["acme"])

    page = console.page
    page.sign_in(token)
    page.go("Recent mail")
    wait_status(page, "Page 1 for tenant acme: 1 message")
    assert page.by_label("Tenant").get_attribute("value") == "acme"
    assert "acme.example" in cells(rows(page)[0])[3]
    assert "system.example" not in page.text_of("#mail-list")
    page.fill("Tenant", "")
    page.button("Filter").click()
    wait_status(page, "tenant_not_allowed")
    assert rows(page) == []
