"""A real browser for the web console tests: Debian's headless Chromium driven by Selenium
through Debian's chromedriver (no driver download, no network).

The tests need the `chromium` and `chromium-driver` packages and the `selenium` Python
package; tests/run installs them. A missing one is a failure with that explanation, not a
skip: a console nobody has loaded in a browser is not tested.

`Browser` wraps one driver with the few things the tests do: open a console path, wait for
an element (never a blind sleep), fill and click, save a screenshot per screen, and read
the browser's console log (SEVERE entries are errors; CSP violations land there too).
"""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
WIDTH, HEIGHT = 1280, 900  # the window
INSTALL_HINT = ("Install them with: apt-get install -y chromium chromium-driver && "
                "python3 -m pip install selenium (tests/run does this)")

try:
    from selenium import webdriver
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait
    SELENIUM_ERROR = None
except ImportError as e:  # reported by start_chromium, as a test failure
    SELENIUM_ERROR = e

ROOT = pathlib.Path(__file__).resolve().parents[3]


def artifacts_dir(name: str) -> pathlib.Path:
    """Where a test keeps its screenshots: $CORVUS_TEST_ARTIFACTS/NAME, else
    tests/e2e/artifacts/NAME; made if missing."""
    base = os.environ.get("CORVUS_TEST_ARTIFACTS")
    d = pathlib.Path(base) / name if base else ROOT / "tests" / "e2e" / "artifacts" / name
    d.mkdir(parents=True, exist_ok=True)
    return d


def missing_requirements() -> list[str]:
    missing = []
    if SELENIUM_ERROR is not None:
        missing.append(f"the selenium Python package ({SELENIUM_ERROR})")
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"{CHROMIUM} (Debian package chromium)")
    if not os.access(CHROMEDRIVER, os.X_OK):
        missing.append(f"{CHROMEDRIVER} (Debian package chromium-driver)")
    return missing


class Browser:
    """Headless Chromium with a fresh profile; `shots` is the screenshot directory."""

    def __init__(self, shots: pathlib.Path, timeout: float = 20):
        missing = missing_requirements()
        if missing:
            pytest.fail("the console test needs a real browser; missing: " + "; ".join(missing)
                        + ". " + INSTALL_HINT, pytrace=False)
        self.shots = shots
        shots.mkdir(parents=True, exist_ok=True)
        for old in shots.glob("*.png"):  # a previous run's
            old.unlink()
        self.timeout = timeout
        self.shot_count = 0
        self.profile = tempfile.mkdtemp(prefix="corvus-chromium-")
        opts = webdriver.ChromeOptions()
        opts.binary_location = CHROMIUM
        for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                     "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     "--disable-dev-shm-usage", f"--window-size={WIDTH},{HEIGHT}",
                     f"--user-data-dir={self.profile}"):
            opts.add_argument(flag)
        opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        service = Service(executable_path=CHROMEDRIVER, log_output=str(shots / "chromedriver.log"))
        try:
            self.driver = webdriver.Chrome(service=service, options=opts)
        except Exception:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(30)
        self.log: list[dict] = []  # every console entry read so far

    def quit(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)

    # --- finding and waiting -------------------------------------------------------------

    def wait(self, cond, what: str, timeout: float | None = None):
        """WebDriverWait until `cond(driver)` is truthy; a timeout names `what` and keeps a
        screenshot of the moment."""
        try:
            return WebDriverWait(self.driver, timeout or self.timeout).until(cond)
        except TimeoutException:
            path = self.screenshot("timeout")
            raise AssertionError(f"timed out waiting for {what} (screenshot {path}); "
                                 f"console log: {self.read_log()}") from None

    def visible(self, css: str, timeout: float | None = None):
        """The element matching `css` once it is displayed."""
        return self.wait(EC.visibility_of_element_located((By.CSS_SELECTOR, css)), f"{css} visible", timeout)

    def gone(self, css: str, timeout: float | None = None):
        """Wait until nothing matches `css` (or nothing matching is displayed)."""
        self.wait(EC.invisibility_of_element_located((By.CSS_SELECTOR, css)), f"{css} gone", timeout)

    def text_in(self, css: str, text: str, timeout: float | None = None):
        """Wait until the element matching `css` contains `text`; return the element."""
        self.wait(EC.text_to_be_present_in_element((By.CSS_SELECTOR, css), text), f"{text!r} in {css}", timeout)
        return self.driver.find_element(By.CSS_SELECTOR, css)

    def find(self, css: str, within=None):
        return (within or self.driver).find_element(By.CSS_SELECTOR, css)

    def find_all(self, css: str, within=None) -> list:
        return (within or self.driver).find_elements(By.CSS_SELECTOR, css)

    def ready(self, view: str):
        """The section #view-VIEW shown and done loading (aria-busy="false")."""
        return self.visible(f'#view-{view}[aria-busy="false"]')

    # --- acting ----------------------------------------------------------------------------

    def open(self, url: str):
        self.driver.get(url)

    def fill(self, css: str, text: str):
        e = self.visible(css)
        e.clear()
        e.send_keys(text)
        return e

    def click(self, css: str, within=None):
        if within is None:
            e = self.wait(EC.element_to_be_clickable((By.CSS_SELECTOR, css)), f"{css} clickable")
        else:
            e = self.find(css, within)
        e.click()
        return e

    def screenshot(self, name: str) -> pathlib.Path:
        """Save the whole page as NN-name.png in the screenshot directory (the window grows
        to the page's height for the shot)."""
        self.shot_count += 1
        path = self.shots / f"{self.shot_count:02d}-{name}.png"
        height, chrome = self.js("return [document.documentElement.scrollHeight, "
                                 "window.outerHeight - window.innerHeight]")
        self.driver.set_window_size(WIDTH, min(max(HEIGHT, int(height) + int(chrome)), 6000))
        try:
            self.driver.save_screenshot(str(path))
        finally:
            self.driver.set_window_size(WIDTH, HEIGHT)
        return path

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    # --- the browser's console log ------------------------------------------------------------

    def read_log(self) -> list[dict]:
        """The console entries since the last read (the driver hands each out once); all of
        them stay in `self.log`."""
        entries = self.driver.get_log("browser")
        self.log.extend(entries)
        return entries

    def assert_clean_log(self, allowed=lambda entry: False):
        """No SEVERE console entry since the last read, except those `allowed` accepts; no
        CSP violation at any level."""
        entries = self.read_log()
        csp = [e for e in entries if "Content Security Policy" in e.get("message", "")]
        assert not csp, f"CSP violations in the browser console: {csp}"
        severe = [e for e in entries if e.get("level") == "SEVERE" and not allowed(e)]
        assert not severe, f"errors in the browser console: {severe}"
        return entries
