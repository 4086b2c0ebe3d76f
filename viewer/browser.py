"""The viewer page in headless Chromium, for the browser test and ``bench/viewer.py``.

Debian's ``chromium`` + ``chromium-driver`` driven by selenium; a wav file stands in for the
microphone (``--use-file-for-fake-audio-capture``), autoplay is allowed, and the page's
``window.avatar3dStats`` is read back. :func:`browser_unavailable_reason` says why it cannot run
here (no Chromium, no chromedriver, no selenium) so callers can skip with that reason.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--autoplay-policy=no-user-gesture-required", "--window-size=1000,760",
    # keep timers and rendering running at full rate in a headless, unfocused window
    "--disable-background-timer-throttling", "--disable-renderer-backgrounding",
    "--disable-backgrounding-occluded-windows",
)


def _binaries() -> tuple[str | None, str | None]:
    browser = next((shutil.which(b) for b in CHROMIUM if shutil.which(b)), None)
    return browser, shutil.which("chromedriver")


def browser_unavailable_reason() -> str | None:
    """None when headless Chromium can be driven here, else why not (one line)."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    browser, driver = _binaries()
    if browser is None:
        return "no Chromium on PATH (Debian: apt-get install chromium chromium-driver)"
    if driver is None:
        return "no chromedriver on PATH (Debian: apt-get install chromium-driver)"
    return None


@contextmanager
def chromium(fake_mic: Path | None = None):
    """A selenium WebDriver on headless Chromium; ``fake_mic``: a wav played once as the microphone."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    browser, driver_path = _binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    for flag in FLAGS:
        options.add_argument(flag)
    if fake_mic is not None:
        options.add_argument(f"--use-file-for-fake-audio-capture={Path(fake_mic).resolve()}%noloop")
    profile = tempfile.mkdtemp(prefix="avatar3d-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def stats(driver) -> dict:
    """The page's ``window.avatar3dStats`` (a copy)."""
    return driver.execute_script("return JSON.parse(JSON.stringify(window.avatar3dStats || null))")


def wait_for(driver, predicate, timeout: float, what: str, every: float = 0.25) -> dict:
    """Poll the stats until ``predicate(stats)``; TimeoutError naming ``what`` and the last stats."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = stats(driver)
        if last and predicate(last):
            return last
        time.sleep(every)
    brief = {k: v for k, v in (last or {}).items() if k not in ("codes", "drift_log", "motion")}
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}; page stats: {brief}")


def console_errors(driver) -> list[str]:
    """Severe messages from the page's console."""
    try:
        return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
    except Exception:  # noqa: BLE001 - not every driver keeps logs
        return []


@contextmanager
def viewer_server(run: Path, *args: str, timeout: float = 120.0):
    """``avatar3d view RUN --port 0 ARGS`` in a child process; yields the URL it prints."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "import sys; from avatar3d.cli import main; sys.exit(main())",
           "view", str(run), "--port", "0", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    try:
        deadline = time.monotonic() + timeout
        line = ""
        while time.monotonic() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
            if " at http" in line:
                break
        if " at http" not in line:
            proc.kill()
            raise RuntimeError(f"avatar3d view did not start: {line.strip()} {proc.stderr.read()[-2000:]}")
        yield line.strip().rsplit(" at ", 1)[1]
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


def canvas_png(driver):
    """The picture the page shows now: ``[H, W, 3] uint8`` RGB (numpy)."""
    import base64

    import cv2
    import numpy as np

    url = driver.execute_script("return document.getElementById('view').toDataURL('image/png')")
    img = cv2.imdecode(np.frombuffer(base64.b64decode(url.split(",", 1)[1]), np.uint8), cv2.IMREAD_COLOR)
    return np.ascontiguousarray(img[..., ::-1])
