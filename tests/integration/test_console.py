"""The web console (`/`, `/console`) and Swagger UI (`/docs`) of a query node, in a real browser.

Headless Chromium from Debian's packages (`apt-get install chromium chromium-driver`; .ci/run installs
them) driven by Selenium. The browser tests skip, saying why, where no browser is installed; the checks of
headers and assets run everywhere.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import requests
from conftest import Api, start_fleet

from appliance.fleet import Fleet
from appliance.query.auth import hash_key
from appliance.query.console import ring_shares
from appliance.routing.ring import HashRing

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
READER_KEY = "reader-key-for-the-console-test"  # a data key from api_keys_file: not the admin key
WAIT = 90  # seconds: the machine running the suite may be busy


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """A fleet whose main key is the admin key, plus a read-only data key from an API keys file."""
    root = tmp_path_factory.mktemp("console")
    keys = root / "keys"
    keys.write_text(hash_key(READER_KEY) + " reader\n")
    f = start_fleet(root / "data", root / "logs", api_keys_file=str(keys))
    yield f
    f.stop()


def test_pages_are_public_with_a_strict_csp_and_only_local_assets(fleet: Fleet) -> None:
    for path in ("/", "/console", "/docs"):
        resp = requests.get(fleet.url + path, timeout=30)
        assert resp.status_code == 200, f"{path}: {resp.status_code} {resp.text[:200]}"
        assert resp.headers["content-type"].startswith("text/html")
        csp = resp.headers["content-security-policy"]
        assert "default-src 'self'" in csp and "script-src 'self';" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp and "unsafe-eval" not in csp
        html = resp.text
        assert "<style" not in html and " style=" not in html  # no inline style
        assert not re.search(r"<script(?![^>]*\bsrc=)[^>]*>", html), "an inline script"
        assert not re.search(r"\bon\w+=", html), "an inline event handler"
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs and all(r.startswith("/") and not r.startswith("//") for r in refs), refs
        for ref in refs:  # every asset loads from the node itself, with the same policy
            asset = requests.get(fleet.url + ref, timeout=30)
            assert asset.status_code == 200, f"{path} -> {ref}: {asset.status_code}"
            assert "default-src 'self'" in asset.headers["content-security-policy"]
    for asset in ("/console/console.js", "/console/console.css", "/console/docs.js"):
        assert not re.search(r"https?://", requests.get(fleet.url + asset, timeout=30).text), asset


def test_stats_need_the_admin_key(fleet: Fleet) -> None:
    assert requests.get(fleet.url + "/admin/stats", headers={"x-api-key": READER_KEY}, timeout=30).status_code == 401
    Api(fleet.url, READER_KEY).get("/api/v1/tables").raise_for_status()  # the reader's key is a data key
    stats = requests.get(fleet.url + "/admin/stats", headers={"x-api-key": fleet.api_key}, timeout=30).json()
    assert set(stats) >= {"pid", "time", "search", "queue", "ring"}
    assert sum(stats["ring"].values()) == pytest.approx(1.0, abs=0.01)
    assert stats["search"]["buckets"][-1][0] is None  # +Inf, written as null
    cache = requests.get(fleet.url + "/admin/cache", headers={"x-api-key": fleet.api_key}, timeout=30).json()
    for executor in cache["executors"]:  # the console's load column
        assert set(executor["stats"]["load"]) == {"batches_in_flight", "cpu_seconds", "time"}
        assert executor["stats"]["load"]["cpu_seconds"] > 0


def test_ring_shares_are_the_keys_each_executor_owns() -> None:
    nodes = [f"http://127.0.0.1:{port}" for port in (9001, 9002, 9003)]
    ring = HashRing(nodes)
    shares = ring_shares(ring)
    owners = Counter(ring.preference(f"fragment-{i}")[0] for i in range(30_000))
    for node in nodes:
        assert shares[node] == pytest.approx(owners[node] / 30_000, abs=0.015)


def _browser_missing() -> str | None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -r requirements-test.txt)"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not path.exists() and not shutil.which(path.name):
            return f"no {path} (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    missing = _browser_missing()
    if missing:
        pytest.skip(f"no headless browser: {missing}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM if CHROMIUM.exists() else shutil.which("chromium"))
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER if CHROMEDRIVER.exists()
                                                  else shutil.which("chromedriver"))), options=options)
    driver.set_page_load_timeout(WAIT)
    yield driver
    driver.quit()


def _sign_in(driver, url: str, key: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(url + "/console")
    driver.execute_script("sessionStorage.clear()")
    driver.get(url + "/console")
    driver.find_element(By.ID, "key").send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "main").is_displayed())


def _csp_violations(driver) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if "Content Security Policy" in e["message"] or "Refused to" in e["message"]]


def test_console_shows_a_new_table_and_searches_it(fleet: Fleet, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    driver = browser
    _sign_in(driver, fleet.url, fleet.api_key)
    assert driver.execute_script("return sessionStorage.getItem('appliance.apiKey')") == fleet.api_key
    assert driver.execute_script("return localStorage.length") == 0  # the key stays in this tab's session
    assert "admin" in driver.find_element(By.ID, "who").text
    # the admin panels fill in: executors with their ring share, the cache tiers
    WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "fleet").text.count("healthy") == 2)
    WebDriverWait(driver, WAIT).until(lambda d: "RAM" in d.find_element(By.ID, "cache").text)

    api = Api(fleet.url, fleet.api_key)
    rng = np.random.default_rng(7)
    vectors = rng.random((50, 8), dtype=np.float32)
    api.create("console_docs", 8, schema={"title": "string"})
    api.insert("console_docs", [{"vector": v.tolist(), "title": f"doc {i}"} for i, v in enumerate(vectors)])
    row = WebDriverWait(driver, WAIT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#tables tr[data-table='console_docs']"))[0]
    assert row.find_elements(By.TAG_NAME, "td")[1].text == "50"  # rows

    # a pasted vector, a filter: the results come back with their payload
    WebDriverWait(driver, WAIT).until(lambda d: "console_docs" in [
        o.get_attribute("value") for o in Select(d.find_element(By.ID, "s-table")).options])
    Select(driver.find_element(By.ID, "s-table")).select_by_value("console_docs")
    k = driver.find_element(By.ID, "s-k")
    k.clear()
    k.send_keys("3")
    driver.find_element(By.ID, "s-vector").send_keys(", ".join(f"{x:.6f}" for x in vectors[17]))
    driver.find_element(By.ID, "s-filter").send_keys("title != 'doc 3'")
    driver.find_element(By.CSS_SELECTOR, "#search button").click()
    WebDriverWait(driver, WAIT).until(lambda d: "results" in d.find_element(By.ID, "s-status").text)
    cells = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
    assert len(cells) == 3
    first = cells[0].text
    assert "doc 17" in first, first
    assert "3 results" in driver.find_element(By.ID, "s-status").text

    # a row's own vector, by row id: that row comes first, at distance 0
    driver.find_element(By.ID, "s-vector").clear()
    driver.find_element(By.ID, "s-filter").clear()
    driver.find_element(By.ID, "s-row").send_keys("42")
    driver.find_element(By.CSS_SELECTOR, "#search button").click()
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        and "doc 42" in d.find_elements(By.CSS_SELECTOR, "#results tbody tr")[0].text)
    head = [th.text for th in driver.find_elements(By.CSS_SELECTOR, "#results thead th")]
    first = [td.text for td in driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")[0].find_elements(
        By.TAG_NAME, "td")]
    assert float(first[head.index("_distance")]) == 0.0

    # text, on a table with a full-text index: the matching rows with their score
    resp = api.post("/v1/table/console_docs/create_index/", {"column": "title", "index_type": "FTS"})
    assert resp.status_code == 200, resp.text
    driver.find_element(By.ID, "s-row").clear()
    driver.find_element(By.ID, "s-text").send_keys("17")
    driver.find_element(By.CSS_SELECTOR, "#search button").click()
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        and "_score" in [th.text for th in d.find_elements(By.CSS_SELECTOR, "#results thead th")])
    rows = [r.text for r in driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")]
    assert rows and all("doc 17" in r for r in rows), rows
    driver.find_element(By.ID, "s-text").clear()

    # the charts get a point once a search lands between two polls
    WebDriverWait(driver, WAIT).until(lambda d: "searches so far" in d.find_element(By.ID, "traffic-now").text)
    # each executor's load: its CPU share between two polls and the batches it runs
    WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "fleet").text.count("% CPU, ") == 2)
    assert re.search(r"\d+\.\d% CPU, \d+ in flight", driver.find_element(By.ID, "fleet").text)
    assert _csp_violations(driver) == []


def test_a_data_key_sees_tables_but_not_admin_panels(fleet: Fleet, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    Api(fleet.url, fleet.api_key).create("console_reader", 4)
    _sign_in(driver, fleet.url, READER_KEY)
    assert "read-only" in driver.find_element(By.ID, "who").text
    WebDriverWait(driver, WAIT).until(
        lambda d: d.find_elements(By.CSS_SELECTOR, "#tables tr[data-table='console_reader']"))
    for panel in ("fleet", "cache", "traffic", "queue"):
        WebDriverWait(driver, WAIT).until(lambda d, p=panel: "needs the admin key" in d.find_element(By.ID, p).text)
    assert _csp_violations(driver) == []


def test_wrong_key_is_refused_and_not_kept(fleet: Fleet, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(fleet.url + "/")
    driver.execute_script("sessionStorage.clear()")
    driver.get(fleet.url + "/")
    driver.find_element(By.ID, "key").send_keys("not-a-key")
    driver.find_element(By.CSS_SELECTOR, "#signin button").click()
    WebDriverWait(driver, WAIT).until(lambda d: "invalid" in d.find_element(By.ID, "signin-error").text)
    assert driver.execute_script("return sessionStorage.getItem('appliance.apiKey')") is None
    assert not driver.find_element(By.ID, "main").is_displayed()


def test_swagger_ui_renders_the_api_offline(fleet: Fleet, browser) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser
    driver.get(fleet.url + "/docs")
    WebDriverWait(driver, WAIT).until(
        lambda d: any("/api/v1/tables/{name}/search" in e.text for e in d.find_elements(By.CSS_SELECTOR,
                                                                                      ".opblock-summary-path")))
    assert "vector-appliance" in driver.find_element(By.CSS_SELECTOR, ".title").text
    assert _csp_violations(driver) == []
