"""Drives the upload page in headless Chromium (Debian's chromium + chromedriver) with Selenium.

Usage: upload_page.py '<json>' where the JSON names chromium, chromedriver, the scenario and its inputs:
- "upload": open `url`, pick `picked` with the file input, drop `dropped` on the drop zone (a synthetic
  drop event carrying a real File), wait until every file is done, save a screenshot to `screenshot`,
  then open `expired_url` and read its refusal page.
- "reload": open `url`, pick `file`, reload the page once the gateway holds between `reload_from` and
  `reload_until` of it, pick the same file again, wait until it is done.
Prints one JSON object of what the page showed; the Rust test (tests/api/page.rs) asserts on it.
"""
import json
import shutil
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1000,1000",
]

FILES_JS = """
return Array.from(document.querySelectorAll('#list li')).map(li => ({
  name: li.querySelector('.file-name').textContent,
  state: li.dataset.state,
  offset: Number(li.dataset.offset),
  file_id: li.dataset.fileId || null,
  result: li.querySelector('.result').textContent,
  percent: li.querySelector('progress').value,
}));
"""

# A drop as a person makes it: dragenter, dragover and drop on the zone, carrying the Files that a
# helper input (filled by send_keys, as a browser cannot read a path otherwise) holds.
DROP_JS = """
const source = document.getElementById('drop-source');
const dt = new DataTransfer();
for (const f of source.files) dt.items.add(f);
const zone = document.getElementById('drop');
for (const type of ['dragenter', 'dragover', 'drop']) {
  zone.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: dt}));
}
source.remove();
"""


# What a screen reader and a keyboard need: every control named, the live region, the viewport, and
# the file input reachable with Tab (it is visually hidden behind its label).
A11Y_JS = """
const unnamed = Array.from(document.querySelectorAll('button, input, progress')).filter(el => {
  if (el.closest('[hidden]')) return false;
  const byLabel = el.id && document.querySelector('label[for="' + el.id + '"]');
  return !(el.getAttribute('aria-label') || el.getAttribute('aria-labelledby') || byLabel ||
           (el.textContent || '').trim());
}).map(el => el.outerHTML);
document.body.focus();
const input = document.getElementById('files');
return {
  unnamed: unnamed,
  live: document.getElementById('status').getAttribute('aria-live'),
  viewport: (document.querySelector('meta[name=viewport]') || {}).content || '',
  lang: document.documentElement.lang,
  input_tabbable: input.tabIndex >= 0 && !input.disabled && getComputedStyle(input).display !== 'none',
};
"""


def browser(cfg):
    options = webdriver.ChromeOptions()
    options.binary_location = cfg["chromium"]
    for flag in FLAGS:
        options.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="upload-page-chromium-")
    options.add_argument("--user-data-dir=" + profile)
    driver = webdriver.Chrome(service=Service(cfg["chromedriver"]), options=options)
    driver.set_page_load_timeout(60)
    return driver, profile


def files(driver):
    return driver.execute_script(FILES_JS)


def wait_done(driver, count, deadline_secs):
    deadline = time.monotonic() + deadline_secs
    while time.monotonic() < deadline:
        now = files(driver)
        if len(now) == count and all(f["state"] in ("done", "error") for f in now):
            return now
        time.sleep(0.1)
    raise SystemExit("the uploads did not finish in time: %s" % json.dumps(files(driver)))


def upload(driver, cfg):
    driver.get(cfg["url"])
    out = {"title": driver.title, "note": driver.find_element(By.ID, "note").text,
           "limits": driver.find_element(By.ID, "limits").text}
    driver.find_element(By.ID, "files").send_keys(cfg["picked"])
    source = driver.execute_script(
        "const i = document.createElement('input'); i.type = 'file'; i.multiple = true; i.id = 'drop-source';"
        "i.style.opacity = '0'; document.body.appendChild(i); return i;")
    source.send_keys(cfg["dropped"])
    driver.execute_script(DROP_JS)
    out["files"] = wait_done(driver, 2, 240)
    out["overall"] = driver.execute_script("return document.getElementById('overall-bar').value")
    out["overall_text"] = driver.find_element(By.ID, "overall-text").text
    out["live"] = driver.find_element(By.ID, "status").get_attribute("textContent")
    out["stored"] = driver.execute_script("return Object.keys(localStorage).length")
    driver.execute_script("window.scrollTo(0, 0)")
    driver.save_screenshot(cfg["screenshot"])
    out["a11y"] = driver.execute_script(A11Y_JS)
    # On a phone's screen: nothing wider than the screen.
    driver.set_window_size(390, 844)
    out["phone_overflow"] = driver.execute_script(
        "return document.documentElement.scrollWidth - document.documentElement.clientWidth")
    driver.get(cfg["expired_url"])
    out["expired"] = {
        "title": driver.title,
        "heading": driver.find_element(By.TAG_NAME, "h1").text,
        "code": driver.find_element(By.ID, "refused").get_attribute("data-code"),
    }
    return out


def reload(driver, cfg):
    size = cfg["size"]
    driver.get(cfg["url"])
    driver.find_element(By.ID, "files").send_keys(cfg["file"])
    deadline = time.monotonic() + 120
    offset_before = None
    while time.monotonic() < deadline:
        now = files(driver)
        if now and now[0]["state"] == "done":
            raise SystemExit("the upload finished before the page could be reloaded: slow it down")
        if now and cfg["reload_from"] * size <= now[0]["offset"]:
            offset_before = now[0]["offset"]
            break
        time.sleep(0.02)
    if offset_before is None:
        raise SystemExit("the upload never got far enough to reload: %s" % json.dumps(files(driver)))
    stored_before = driver.execute_script(
        "return Object.values(localStorage).map(v => JSON.parse(v).url)")
    driver.refresh()
    # The unfinished upload is listed (its HEAD answered), until its file is chosen again.
    deadline = time.monotonic() + 20
    unfinished = ""
    while time.monotonic() < deadline:
        unfinished = driver.find_element(By.ID, "unfinished-list").text
        if "sent" in unfinished:
            break
        time.sleep(0.1)
    stored_after = driver.execute_script(
        "return Object.values(localStorage).map(v => JSON.parse(v).url)")
    driver.find_element(By.ID, "files").send_keys(cfg["file"])
    # The first offset the page shows after choosing the file again is HEAD's.
    first_offset = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and first_offset is None:
        now = files(driver)
        if now and now[0]["offset"] > 0:
            first_offset = now[0]["offset"]
        time.sleep(0.01)
    # Pause: nothing moves until Resume.
    driver.find_element(By.CSS_SELECTOR, "#list li .pause").click()
    time.sleep(0.5)
    paused = files(driver)[0]
    time.sleep(1.0)
    still = files(driver)[0]
    driver.find_element(By.CSS_SELECTOR, "#list li .pause").click()
    # The network lost (DevTools' offline emulation): the page retries with backoff, then goes on.
    driver.execute_cdp_cmd("Network.enable", {})
    offline = {"offline": True, "latency": 0, "downloadThroughput": -1, "uploadThroughput": -1}
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", offline)
    retrying = None
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and retrying is None:
        now = files(driver)[0]
        if now["state"] == "retrying":
            retrying = now
        elif now["state"] == "done":
            break
        time.sleep(0.02)
    time.sleep(2)
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", dict(offline, offline=False))
    done = wait_done(driver, 1, 240)
    return {
        "paused": paused,
        "paused_later": still,
        "retrying": retrying,
        "offset_before_reload": offset_before,
        "first_offset_after_reload": first_offset,
        "unfinished": unfinished,
        "stored_before": stored_before,
        "stored_after": stored_after,
        "stored_at_end": driver.execute_script("return Object.keys(localStorage).length"),
        "files": done,
    }


def main():
    cfg = json.loads(sys.argv[1])
    driver, profile = browser(cfg)
    try:
        out = {"upload": upload, "reload": reload}[cfg["scenario"]](driver, cfg)
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
