"""The ops console at /ui, in a real headless chromium (Debian's, driven by selenium through
chromium-driver) against a real server process and a real registry.

Screenshots of every page go to the test's temporary directory; with UPDATE_CONSOLE_SCREENSHOTS=1
they also replace the ones in docs/console/.
"""

from __future__ import annotations

import io
import os
import shutil
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import Backend, _sqlite_backend
from tests.images import solid
from tests.onnx_models import color_classifier, color_metadata
from tests.server import ROOT, Server, server_process

webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import TimeoutException  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.remote.webdriver import WebDriver  # noqa: E402
from selenium.webdriver.remote.webelement import WebElement  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

pytestmark = pytest.mark.slow

TOKEN = "console-admin-token-5f2c9a1e7b"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
SCREENSHOTS = ROOT / "docs" / "console"
LABELS = ["red", "green", "blue"]


# -- the registry and the server --------------------------------------------------------------------


def plot_png(path: Path, seed: int) -> Path:
    """A stand-in for a training plot: a real PNG the version detail must show."""
    rng = np.random.default_rng(seed)
    pixels = np.full((120, 200, 3), 255, dtype=np.uint8)
    ys = (60 + 40 * np.sin(np.linspace(0, 6, 200) + seed) + rng.normal(0, 3, 200)).astype(int).clip(0, 119)
    pixels[ys, np.arange(200)] = (31, 95, 191)
    Image.fromarray(pixels).save(path)
    return path


def rich_metadata(accuracy: float, matrix: list[list[int]], *, size: int = 16) -> dict[str, Any]:
    meta = color_metadata(accuracy=accuracy, size=size)
    per_class = {}
    for i, label in enumerate(LABELS):
        predicted = sum(row[i] for row in matrix)
        actual = sum(matrix[i])
        per_class[label] = {"precision": matrix[i][i] / predicted, "recall": matrix[i][i] / actual, "support": actual}
    meta["metrics"] = {
        "accuracy": accuracy,
        "loss": round(1 - accuracy, 3),
        "confusion_matrix": matrix,
        "per_class": per_class,
    }
    meta["dataset_fingerprint"] = f"sha256:{'ab' * 8}{size}"
    meta["description"] = f"colors at {size}x{size}"
    return meta


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Backend:
    """`colors`: v1 (production), v2 (better, same contract), v3 (another input size); `big`: 200 versions."""
    tmp = tmp_path_factory.mktemp("console-registry")
    backend = _sqlite_backend(tmp)
    extras = {"curves.png": plot_png(tmp / "curves.png", 1), "confusion_matrix.png": plot_png(tmp / "cm.png", 2)}
    with backend.registry() as reg:
        reg.register(
            name="colors",
            onnx_path=color_classifier(tmp / "v1.onnx"),
            metadata=rich_metadata(0.9, [[9, 1, 0], [1, 8, 1], [0, 0, 10]]),
            extras=extras,
        )
        reg.register(
            name="colors",
            onnx_path=color_classifier(tmp / "v2.onnx", gain=12.0),
            metadata=rich_metadata(0.97, [[10, 0, 0], [0, 9, 1], [0, 0, 10]]),
            extras=extras,
        )
        reg.register(
            name="colors",
            onnx_path=color_classifier(tmp / "v3.onnx", size=24),
            metadata=rich_metadata(0.95, [[10, 0, 0], [1, 9, 0], [0, 1, 9]], size=24),
            allow_contract_change=True,
        )
        reg.promote(name="colors", version=1, actor="ci", reason="first release")
        small = color_classifier(tmp / "big.onnx")
        for i in range(200):
            reg.register(
                name="big", onnx_path=small, metadata=rich_metadata(0.5 + i / 500, [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
            )
        reg.promote(name="big", version=200, actor="ci", reason="the newest")
    return backend


@pytest.fixture(scope="module")
def server(registry: Backend) -> Iterator[Server]:
    env = {
        **registry.env,
        "SERVE_ADMIN_TOKENS": f"ops:{TOKEN}",
        "SERVE_WARMUP_BATCH_SIZES": "[1]",
        "SERVE_POLL_INTERVAL_S": "0.5",
    }
    with server_process(env, workers=1, log_level="info") as running:
        yield running


# -- the browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (Path(CHROMIUM).exists() and Path(CHROMEDRIVER).exists()):
        reason = "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("REQUIRE_BROWSER") == "1":
            pytest.fail(f"{reason} (REQUIRE_BROWSER=1 forbids skipping)")
        pytest.skip(reason)
    os.environ["SE_OFFLINE"] = "true"  # selenium must never fetch a browser or a driver
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
    ):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def open_page(driver: WebDriver, server: Server, route: str = "#/", *, token: str | None = None) -> None:
    """Load the console at ``route`` in a fresh tab state (no token unless given) and wait until it rendered."""
    driver.get_log("browser")  # what earlier tests left in the log is theirs
    driver.get(f"{server.url}/ui/")
    wait_ready(driver, "#/")
    driver.execute_script("sessionStorage.clear()")
    if token is not None:
        driver.find_element(By.ID, "token").send_keys(token, Keys.ENTER)
    if route != "#/":
        go(driver, route)


def go(driver: WebDriver, route: str) -> None:
    driver.execute_script("document.body.dataset.ready = ''; location.hash = arguments[0]", route)
    wait_ready(driver, route)


def wait_ready(driver: WebDriver, route: str) -> None:
    WebDriverWait(driver, 15).until(lambda d: d.execute_script("return document.body.dataset.ready") == route)


def until(driver: WebDriver, check: Callable[[WebDriver], Any], timeout: float = 15) -> Any:
    return WebDriverWait(driver, timeout).until(check)


def visible(driver: WebDriver, css: str) -> WebElement:
    element = until(driver, lambda d: d.find_element(By.CSS_SELECTOR, css))
    assert element.is_displayed(), f"{css} is not visible"
    return element


def screenshot(driver: WebDriver, tmp_path: Path, name: str) -> Path:
    """Save the page; it must show something (not a blank or one-colour page)."""
    path = tmp_path / f"{name}.png"
    driver.save_screenshot(str(path))
    pixels = np.asarray(Image.open(path).convert("L"))
    assert pixels.std() > 10, f"{name}: the screenshot is nearly blank"
    if os.environ.get("UPDATE_CONSOLE_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(exist_ok=True)
        shutil.copy(path, SCREENSHOTS / f"{name}.png")
    return path


def no_console_errors(driver: WebDriver) -> None:
    """No script errors and no Content-Security-Policy violations in the browser's log."""
    errors = [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def served_version(server: Server, name: str = "colors") -> int:
    return int(httpx.get(f"{server.url}/v1/models/{name}").json()["serving_version"])


def promote_over_api(server: Server, version: int) -> None:
    """Put `colors` production back at ``version`` (tests share the server), unless it is there."""
    if served_version(server) == version:
        return
    response = httpx.put(
        f"{server.url}/v1/models/colors/aliases/production",
        json={"version": version, "reason": "reset by the test"},
        headers={"authorization": f"Bearer {TOKEN}"},
    )
    assert response.status_code == 200, response.text


# -- the tests ----------------------------------------------------------------------------------------


def test_every_page_renders_without_a_token(browser: WebDriver, server: Server, tmp_path: Path) -> None:
    """Read-only pages need no token; each shows its key elements, checked on a screenshot."""
    for _ in range(20):  # traffic for the live figures
        httpx.post(
            f"{server.url}/v1/models/colors/predict", content=solid("red"), headers={"content-type": "image/png"}
        )
    open_page(browser, server)
    row = visible(browser, '#models tr[data-model="colors"]')
    assert "production → v1" in row.text
    assert "v1" in row.find_element(By.CSS_SELECTOR, ".serving").text
    assert "CPUExecutionProvider" in row.text
    assert "none" in row.text  # no load error
    live = row.find_element(By.CSS_SELECTOR, "[data-live]")
    for _ in range(10):  # traffic between two scrapes of /metrics
        httpx.post(
            f"{server.url}/v1/models/colors/predict", content=solid("red"), headers={"content-type": "image/png"}
        )
    until(browser, lambda d: "/s" in live.text and "p99" in live.text)
    screenshot(browser, tmp_path, "models")

    go(browser, "#/models/colors")
    rows = browser.find_elements(By.CSS_SELECTOR, "#versions .rows [role=row]")
    assert [r.get_attribute("data-version") for r in rows] == ["3", "2", "1"]
    first = browser.find_element(By.CSS_SELECTOR, '#versions [role=row][data-version="1"]').text
    assert "production" in first and "served" in first and "0.9" in first and "passed" not in first
    assert visible(browser, "#serving-version").text == "v1"
    screenshot(browser, tmp_path, "model")

    go(browser, "#/models/colors/versions/1")
    visible(browser, "dl.facts")
    assert "precision" in browser.find_element(By.TAG_NAME, "main").text
    images = browser.find_elements(By.CSS_SELECTOR, "figure img")
    assert len(images) == 2
    until(browser, lambda d: all(d.execute_script("return arguments[0].naturalWidth", img) == 200 for img in images))
    screenshot(browser, tmp_path, "version")

    go(browser, "#/models/colors/compare/1/3")
    metrics = visible(browser, "#compare-metrics").text
    assert "accuracy" in metrics and "0.9" in metrics and "0.95" in metrics and "+0.0500" in metrics
    diff = visible(browser, "#contract-diff").text
    assert "preprocessing.size" in diff and "[16,16]" in diff and "[24,24]" in diff
    screenshot(browser, tmp_path, "compare")

    go(browser, "#/models/colors/history")
    assert "first release" in visible(browser, "#history").text
    screenshot(browser, tmp_path, "history")

    go(browser, "#/models/colors/try")
    visible(browser, "#try-form")
    screenshot(browser, tmp_path, "try")
    no_console_errors(browser)


def test_compare_two_versions_then_promote_with_a_token(browser: WebDriver, server: Server, tmp_path: Path) -> None:
    promote_over_api(server, 1)
    open_page(browser, server, "#/models/colors")
    compare = browser.find_element(By.ID, "compare")
    assert not compare.is_enabled()
    browser.find_element(By.CSS_SELECTOR, '.pick[value="1"]').click()
    browser.find_element(By.CSS_SELECTOR, '.pick[value="2"]').click()
    assert compare.is_enabled()
    compare.click()
    wait_ready(browser, "#/models/colors/compare/1/2")
    assert "+0.0700" in visible(browser, "#compare-metrics").text  # accuracy 0.90 -> 0.97
    assert "The same contract" in browser.find_element(By.ID, "contract-diff").text

    go(browser, "#/models/colors")
    browser.find_element(By.ID, "token").send_keys(TOKEN, Keys.ENTER)
    assert browser.find_element(By.ID, "token-state").text == "token set for this tab"
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="promote"][data-version="2"]').click()
    dialog = visible(browser, "dialog#confirm")
    assert "production: v1 → v2" in dialog.text  # what will change, before anything does
    assert served_version(server) == 1
    screenshot(browser, tmp_path, "promote-confirm")
    browser.find_element(By.ID, "confirm-reason").send_keys("v2 is better on green")
    browser.find_element(By.ID, "confirm-ok").click()
    notice = until(browser, lambda d: d.find_element(By.ID, "notice").text and d.find_element(By.ID, "notice"))
    assert "this server now serves v2" in notice.text
    wait_ready(browser, "#/models/colors")
    assert browser.find_element(By.ID, "serving-version").text == "v2"
    assert served_version(server) == 2
    answer = httpx.post(
        f"{server.url}/v1/models/colors/predict", content=solid("red"), headers={"content-type": "image/png"}
    )
    assert answer.json()["version"] == 2

    go(browser, "#/models/colors/history")
    newest = browser.find_element(By.CSS_SELECTOR, "#history li")
    assert "production promoted: v1 → v2" in newest.text
    assert "ops" in newest.find_element(By.CLASS_NAME, "actor").text  # the token's name
    assert "v2 is better on green" in newest.text

    # The token stays in this tab's sessionStorage: never in a URL, local storage or the server's log.
    assert browser.execute_script("return sessionStorage.getItem('imgserve.admin-token')") == TOKEN
    assert browser.execute_script("return localStorage.length") == 0
    assert TOKEN not in browser.current_url
    assert TOKEN not in server.log_text()
    no_console_errors(browser)


def test_a_wrong_token_shows_the_apis_own_error(browser: WebDriver, server: Server) -> None:
    promote_over_api(server, 1)
    expected = httpx.put(
        f"{server.url}/v1/models/colors/aliases/production",
        json={"version": 2},
        headers={"authorization": "Bearer not-the-token"},
    )
    assert expected.status_code == 401
    open_page(browser, server, "#/models/colors", token="not-the-token")
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="promote"][data-version="2"]').click()
    browser.find_element(By.ID, "confirm-ok").click()
    error = until(
        browser,
        lambda d: d.find_element(By.ID, "confirm-error").is_displayed() and d.find_element(By.ID, "confirm-error"),
    )
    assert error.text == expected.json()["error"]
    assert served_version(server) == 1  # nothing moved

    browser.find_element(By.ID, "confirm-cancel").click()
    browser.find_element(By.ID, "token-forget").click()
    browser.find_element(By.CSS_SELECTOR, 'button[data-action="archive"][data-version="3"]').click()
    browser.find_element(By.ID, "confirm-ok").click()
    error = until(
        browser,
        lambda d: d.find_element(By.ID, "confirm-error").is_displayed() and d.find_element(By.ID, "confirm-error"),
    )
    assert "paste an admin token" in error.text


def test_try_it_gives_the_same_top1_as_v1(browser: WebDriver, server: Server, tmp_path: Path) -> None:
    promote_over_api(server, 1)
    image = tmp_path / "blue.png"
    image.write_bytes(solid("blue"))
    open_page(browser, server, "#/models/colors/try")
    browser.find_element(By.ID, "try-file").send_keys(str(image))
    browser.find_element(By.CSS_SELECTOR, "#try-form button[type=submit]").click()
    until(browser, lambda d: d.find_element(By.ID, "try-result").text not in ("", "Classifying…"))
    assert browser.find_elements(By.CSS_SELECTOR, "#try-top"), browser.find_element(By.ID, "try-result").text
    top1 = browser.find_element(By.CSS_SELECTOR, "#try-top .top1 .label")
    expected = httpx.post(
        f"{server.url}/v1/models/colors/predict", files={"images": ("b.png", image.read_bytes(), "image/png")}
    )
    assert top1.text == expected.json()["predictions"][0]["label"] == "blue"
    assert browser.find_element(By.ID, "try-version-used").text == "v1"

    # A chosen version: v3 takes 24x24 input, and it is the one that answers.
    select = browser.find_element(By.ID, "try-version")
    select.find_element(By.CSS_SELECTOR, 'option[value="3"]').click()
    browser.find_element(By.CSS_SELECTOR, "#try-form button[type=submit]").click()
    until(browser, lambda d: d.find_element(By.ID, "try-version-used").text == "v3")
    expected = httpx.post(
        f"{server.url}/v1/models/colors/predict?version=3", files={"images": ("b.png", image.read_bytes(), "image/png")}
    )
    assert (
        browser.find_element(By.CSS_SELECTOR, "#try-top .top1 .label").text
        == expected.json()["predictions"][0]["label"]
    )
    screenshot(browser, tmp_path, "try-result")


def tab_to(driver: WebDriver, css: str, limit: int = 300) -> WebElement:
    """Press Tab until the element matching ``css`` has the focus: it is reachable from the keyboard.
    The element is looked up again on each press: a page drawn again meanwhile replaces it with an
    equal one, and the old one never gets the focus."""
    for _ in range(limit):
        active = driver.switch_to.active_element
        if active in driver.find_elements(By.CSS_SELECTOR, css):
            return active
        webdriver.ActionChains(driver).send_keys(Keys.TAB).perform()
    raise AssertionError(f"{css} cannot be reached with Tab")


def test_every_action_works_from_the_keyboard(browser: WebDriver, server: Server) -> None:
    promote_over_api(server, 1)
    open_page(browser, server)
    # The token, from the keyboard.
    tab_to(browser, "#token").send_keys(TOKEN, Keys.ENTER)
    # Into a model, pick two versions with the space bar and compare.
    tab_to(browser, '#models a[href="#/models/colors"]').send_keys(Keys.ENTER)
    wait_ready(browser, "#/models/colors")
    tab_to(browser, '.pick[value="1"]').send_keys(Keys.SPACE)
    tab_to(browser, '.pick[value="3"]').send_keys(Keys.SPACE)
    tab_to(browser, "#compare").send_keys(Keys.ENTER)
    wait_ready(browser, "#/models/colors/compare/1/3")
    browser.back()
    wait_ready(browser, "#/models/colors")
    # Promote: the dialog takes the focus, Tab reaches its buttons, Enter confirms.
    tab_to(browser, 'button[data-action="promote"][data-version="2"]').send_keys(Keys.ENTER)
    assert browser.switch_to.active_element.get_attribute("id") == "confirm-reason"
    browser.switch_to.active_element.send_keys("from the keyboard")
    tab_to(browser, "#confirm-ok").send_keys(Keys.ENTER)
    wait_ready(browser, "#/models/colors")
    assert served_version(server) == 2
    # Roll back, cancelled with Escape first, then done.
    tab_to(browser, "#rollback").send_keys(Keys.ENTER)
    until(browser, lambda d: d.find_element(By.ID, "confirm").is_displayed())
    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    until(browser, lambda d: not d.find_element(By.ID, "confirm").is_displayed())
    assert served_version(server) == 2
    tab_to(browser, "#rollback").send_keys(Keys.ENTER)
    until(browser, lambda d: d.find_element(By.ID, "confirm").is_displayed())
    tab_to(browser, "#confirm-ok").send_keys(Keys.ENTER)
    wait_ready(browser, "#/models/colors")
    assert served_version(server) == 1
    # Archive and try it are buttons and links like the rest: reachable the same way.
    tab_to(browser, 'button[data-action="archive"][data-version="3"]')
    tab_to(browser, 'a[href="#/models/colors/try"]').send_keys(Keys.ENTER)
    wait_ready(browser, "#/models/colors/try")
    tab_to(browser, "#try-file")
    tab_to(browser, "#try-form button[type=submit]")
    # Nothing clickable is a bare element: every control is a native, focusable one.
    for route in ("#/", "#/models/colors", "#/models/colors/compare/1/3", "#/models/colors/history"):
        go(browser, route)
        bare = browser.execute_script(
            "return [...document.querySelectorAll('[data-action], [onclick], [tabindex]')]"
            ".filter(e => !['BUTTON', 'A', 'INPUT', 'SELECT', 'TEXTAREA', 'MAIN'].includes(e.tagName)"
            " || e.tabIndex < -1)"
            ".map(e => e.outerHTML.slice(0, 80))"
        )
        assert bare == [], bare


def test_page_weight_and_content_security_policy(server: Server) -> None:
    page = httpx.get(f"{server.url}/ui/")
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "unsafe-inline" not in policy and "unsafe-eval" not in policy
    assert "<script>" not in page.text and "<script " in page.text  # scripts only by src
    total = 0
    for asset in ("console.js", "console.css"):
        response = httpx.get(f"{server.url}/ui/static/{asset}")
        assert response.status_code == 200
        assert response.headers["content-security-policy"] == policy
        again = httpx.get(f"{server.url}/ui/static/{asset}", headers={"if-none-match": response.headers["etag"]})
        assert again.status_code == 304
        total += len(response.content)
    print(f"\nconsole JS + CSS: {total / 1024:.1f} KB (limit 100 KB)")
    assert total <= 100 * 1024
    missing = httpx.get(f"{server.url}/ui/static/nothing.js")
    assert missing.status_code == 404 and "nothing.js" in missing.json()["error"]
    assert httpx.get(f"{server.url}/ui").headers["location"] == "/ui/"


def load_model_page(driver: WebDriver, model: str, rows: int) -> tuple[float, list[str]]:
    """Open ``model``'s page from the model list; the time in the browser from the route change to
    the first frame painted with all ``rows`` rows (fetches, rendering, style, layout and paint), and
    the API paths the page fetched meanwhile, sorted."""
    go(driver, "#/")
    elapsed, fetched = driver.execute_async_script(
        """
        const [model, rows, done] = arguments;
        const started = performance.now();
        new MutationObserver((changes, observer) => {
          if (document.querySelectorAll('#versions .rows [role=row]').length === rows) {
            observer.disconnect();
            // The next frame lays out and paints the rows; the one after starts once it is done.
            requestAnimationFrame(() => requestAnimationFrame(() => done([
              performance.now() - started,
              performance.getEntriesByType('resource')
                .filter(entry => entry.startTime >= started)  // not what the model list had under way
                .map(entry => new URL(entry.name).pathname)
                .filter(path => path.startsWith('/v1/'))  // the model list polls /metrics until it is gone
                .sort(),
            ])));
          }
        }).observe(document.getElementById('main'), {childList: true, subtree: true});
        location.hash = '#/models/' + model;
        """,
        model,
        rows,
    )
    return elapsed, fetched


def test_a_model_page_of_200_versions_costs_a_few_times_one_of_3(browser: WebDriver, server: Server) -> None:
    """The page of `big` (200 versions) against the page of `colors` (3), loaded in turns, 7 times
    each, fastest against fastest. Here 200 rows cost 3.2-4.7 times 3 rows on an idle machine
    (108-167 ms against 33-38) and 3.5-5.6 times beside `stress-ng --cpu 2`: the longer page loses
    more to a busy machine. The limit, 10 times, is a guard against a page that spends a few ms
    or more per version, not the goal: the goal in docs/console.md (300 ms) is a figure of an idle
    machine, and a limit on the clock failed once beside other work with the page unchanged
    (338 ms). Smaller costs pass it: a forced layout of every row measured 4.4 times, and rows
    without `content-visibility` 4.7. A request per version fails it at once."""
    open_page(browser, server)
    big, small = [], []
    for _ in range(7):
        elapsed, fetched_big = load_model_page(browser, "big", 200)
        big.append(elapsed)
        elapsed, fetched_small = load_model_page(browser, "colors", 3)
        small.append(elapsed)
    ratio = min(big) / min(small)
    print(
        f"\nmodel page of 200 versions: fastest {min(big):.0f} ms, median {statistics.median(big):.0f} ms; "
        f"of 3 versions: fastest {min(small):.0f} ms, median {statistics.median(small):.0f} ms; ratio {ratio:.1f}"
    )
    assert fetched_big == ["/v1/models/big", "/v1/models/big/versions"]  # one list, not a request per version
    assert [path.replace("colors", "big") for path in fetched_small] == fetched_big
    assert ratio <= 10


def test_extras_are_served_safely(server: Server) -> None:
    png = httpx.get(f"{server.url}/v1/models/colors/versions/1/extras/curves.png")
    assert png.status_code == 200 and png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (200, 120)
    assert png.headers["x-content-type-options"] == "nosniff"
    missing = httpx.get(f"{server.url}/v1/models/colors/versions/3/extras/curves.png")
    assert missing.status_code == 404 and "curves.png" in missing.json()["error"]


def test_the_console_works_behind_a_path_prefix(registry: Backend, browser: WebDriver, tmp_path: Path) -> None:
    """A proxy serves the server under /ops and strips the prefix; the console's links follow."""
    from tests.ui.proxy import prefix_proxy

    env = {**registry.env, "SERVE_ROOT_PATH": "/ops", "SERVE_WARMUP_BATCH_SIZES": "[1]"}
    with server_process(env, workers=1) as upstream, prefix_proxy("/ops", upstream.url) as proxied:
        assert httpx.get(f"{proxied}/ui", follow_redirects=False).headers["location"] == "/ops/ui/"
        browser.get_log("browser")
        browser.get(f"{proxied}/ui/")
        try:
            wait_ready(browser, "#/")
        except TimeoutException:
            raise AssertionError(browser.page_source[:2000]) from None
        assert visible(browser, '#models tr[data-model="colors"]')
        go(browser, "#/models/colors/versions/1")
        images = browser.find_elements(By.CSS_SELECTOR, "figure img")
        assert all(img.get_attribute("src").startswith(f"{proxied}/v1/models/colors/") for img in images)
        until(browser, lambda d: all(d.execute_script("return arguments[0].naturalWidth", i) == 200 for i in images))
        no_console_errors(browser)
