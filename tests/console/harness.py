"""A real headless Chromium (Debian's chromium and chromium-driver) and the app served on loopback."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable

from flask import Flask
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from werkzeug.serving import BaseWSGIServer, make_server

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Generous for a loaded two-core machine; every wait ends as soon as its condition holds.
WAIT_SECONDS = 20


def browser_available() -> bool:
    return Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()


def start_browser(width: int = 1024, height: int = 900) -> tuple[webdriver.Chrome, str]:
    """Chromium with a fresh profile, nothing fetched from outside, and the paths given (no Selenium Manager)."""
    # Both paths are given, so Selenium has nothing to look up; offline mode makes sure it never downloads.
    os.environ.setdefault("SE_OFFLINE", "true")
    profile = tempfile.mkdtemp(prefix="smtpconf-chromium-")
    options = Options()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        "--lang=en-US",
        f"--window-size={width},{height}",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(WAIT_SECONDS)
    driver.set_script_timeout(WAIT_SECONDS)
    return driver, profile


def stop_browser(driver: webdriver.Chrome, profile: str) -> None:
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


class ServedApp:
    """The Flask app behind a threaded werkzeug server on a free loopback port."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.server: BaseWSGIServer = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=10)


class Page:
    """What the tests do with the console, in the words a user would use."""

    def __init__(self, driver: webdriver.Chrome, base_url: str) -> None:
        self.driver = driver
        self.base_url = base_url

    def wait(self, condition: Callable[[Any], Any], timeout: float = WAIT_SECONDS) -> Any:
        return WebDriverWait(self.driver, timeout, ignored_exceptions=(StaleElementReferenceException,)).until(condition)

    def open(self, path: str = "/console/") -> None:
        self.driver.get(self.base_url + path)

    def sign_in(self, token: str) -> None:
        self.open()
        field = self.by_label("Access token")
        field.send_keys(token)
        self.button("Sign in").click()
        self.wait(lambda d: d.find_element(By.ID, "session").is_displayed())

    def find(self, css: str) -> WebElement:
        return self.wait(lambda d: d.find_element(By.CSS_SELECTOR, css))

    def by_label(self, text: str) -> WebElement:
        """The control whose visible <label> reads ``text``."""

        def find(driver: webdriver.Chrome) -> WebElement | bool:
            for label in driver.find_elements(By.TAG_NAME, "label"):
                if label.text.strip() == text and label.get_attribute("for"):
                    return driver.find_element(By.ID, label.get_attribute("for"))
            return False

        return self.wait(find)

    def button(self, text: str) -> WebElement:
        def find(driver: webdriver.Chrome) -> WebElement | bool:
            for button in driver.find_elements(By.TAG_NAME, "button"):
                if button.text.strip() == text and button.is_displayed():
                    return button
            return False

        return self.wait(find)

    def buttons(self) -> list[str]:
        return [b.text.strip() for b in self.driver.find_elements(By.TAG_NAME, "button") if b.is_displayed()]

    def nav(self) -> list[str]:
        self.wait(lambda d: d.find_elements(By.CSS_SELECTOR, "#nav a"))
        return [a.text for a in self.driver.find_elements(By.CSS_SELECTOR, "#nav a")]

    def go(self, title: str) -> None:
        self.wait(lambda d: [a for a in d.find_elements(By.CSS_SELECTOR, "#nav a") if a.text == title])[0].click()
        self.wait(lambda d: d.find_element(By.TAG_NAME, "h1").text != "" and not d.find_elements(By.CSS_SELECTOR, "main .loading"))

    def fill(self, label: str, value: str) -> None:
        control = self.by_label(label)
        control.clear()
        control.send_keys(value)

    def text_of(self, css: str) -> str:
        return self.find(css).text

    def settle(self) -> None:
        """Until no page shows "Loading…" any more."""
        self.wait(lambda d: d.find_element(By.TAG_NAME, "h1") and not d.find_elements(By.CSS_SELECTOR, "main .loading"))

    def alerts_fired(self) -> bool:
        try:
            self.driver.switch_to.alert
        except Exception:
            return False
        return True
