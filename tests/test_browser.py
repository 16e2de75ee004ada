"""The user-study sheet in a real browser: Debian's headless Chromium driven by Selenium opens the page from
disk, answers every question as two participants, downloads the answers (JSON and CSV), and the tally of those
files must give the percentages the answers imply. A prompt containing HTML must show as text, not run.

Needs `chromium` and `chromium-driver` (.ci/run installs them with apt-get) and selenium (the dev extra);
skipped without them, except where ASYRP_REQUIRE_BROWSER=1 (CI), where their absence fails.
"""

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from asyrp.study import Condition, build_study, tally

EVIL = 'smiling <img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'
FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--disable-default-apps",
    "--metrics-recording-only",
    "--no-proxy-server",
]


def _find(*names):
    for n in names:
        path = shutil.which(n) or (f"/usr/bin/{n}" if Path(f"/usr/bin/{n}").exists() else None)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    problems = []
    try:
        import selenium  # noqa: F401
    except ImportError:
        problems.append("selenium (pip install -e '.[dev]')")
    chromium, driver_bin = _find("chromium", "chromium-browser"), _find("chromedriver")
    if not chromium:
        problems.append("chromium (apt-get install chromium)")
    if not driver_bin:
        problems.append("chromedriver (apt-get install chromium-driver)")
    if problems:
        msg = "browser test needs " + ", ".join(problems)
        if os.environ.get("ASYRP_REQUIRE_BROWSER") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for drivers online
    downloads = tmp_path_factory.mktemp("downloads")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in [*FLAGS, f"--user-data-dir={tmp_path_factory.mktemp('profile')}"]:
        opts.add_argument(flag)
    opts.add_experimental_option(
        "prefs", {"download.default_directory": str(downloads), "download.prompt_for_download": False}
    )
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(driver_bin))
    driver.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    driver.set_page_load_timeout(30)
    yield driver, downloads
    driver.quit()


def images(folder: Path, seed: int, n: int = 6) -> Path:
    folder.mkdir(parents=True)
    g = np.random.default_rng(seed)
    for i in range(n):
        Image.fromarray(g.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(folder / f"img{i}.png")
    return folder


def wait_for(predicate, what: str, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def answer(driver, key: dict, pick) -> None:
    """Click, for every set and question, the side where ``pick(set, question)`` ('A' or 'B') is shown."""
    from selenium.webdriver.common.by import By

    for s in key["sets"]:
        for q in s["questions"]:
            side = "left" if s["left"] == pick(s, q) else "right"
            driver.find_element(
                By.CSS_SELECTOR, f'input[data-set="{s["set"]}"][data-question="{q}"][value="{side}"]'
            ).click()


def export(driver, downloads: Path, button: str, suffix: str) -> Path:
    from selenium.webdriver.common.by import By

    before = set(downloads.iterdir())
    driver.find_element(By.ID, button).click()
    new = wait_for(lambda: [p for p in set(downloads.iterdir()) - before
                            if p.suffix == suffix and p.stat().st_size > 0], f"the {suffix} download")  # fmt: skip
    return new[0]


def test_participants_answer_export_and_tally_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    driver, downloads = browser
    study = build_study(
        [
            Condition(
                "smiling",
                EVIL,
                images(tmp_path / "o", 0),
                images(tmp_path / "a", 1),
                images(tmp_path / "b", 2),
                group="in-domain",
                n_images=4,
            ),
            Condition(
                "temple",
                "temple",
                tmp_path / "o",
                tmp_path / "a",
                tmp_path / "b",
                group="church",
                n_images=4,
                group_size=2,
            ),
        ],
        tmp_path / "study",
        methods=("Asyrp", "DiffusionCLIP"),
        seed=7,
    )
    key = json.loads(study.key.read_text())
    url = study.sheet.resolve().as_uri()
    driver.get(url)
    wait_for(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", "the page script")

    # the prompt's markup is shown as text and never runs
    assert driver.execute_script("return window.__xss") is None
    assert (
        not driver.find_elements(By.CSS_SELECTOR, "img[src='x']")
        and len(driver.find_elements(By.TAG_NAME, "script")) == 2
    )
    legends = [e.text for e in driver.find_elements(By.TAG_NAME, "legend")]
    assert any(EVIL in t for t in legends)
    assert len(driver.find_elements(By.CSS_SELECTOR, "input[type=radio]")) == 2 * study.n_questions

    # exporting before answering is refused, with a message; nothing is downloaded
    driver.find_element(By.ID, "export-json").click()
    assert "participant ID" in driver.find_element(By.ID, "status").text and not list(downloads.iterdir())

    # participant 1 prefers Asyrp everywhere except on quality; exports JSON and CSV
    driver.find_element(By.ID, "participant").send_keys("p1")
    driver.find_element(By.ID, "export-json").click()
    assert "answer every question" in driver.find_element(By.ID, "status").text
    plan1 = lambda s, q: "B" if q == "quality" else "A"  # noqa: E731
    answer(driver, key, plan1)
    assert (
        driver.find_element(By.ID, "progress").text == f"{study.n_questions} of {study.n_questions} questions answered"
    )
    p1_json = export(driver, downloads, "export-json", ".json")
    assert json.loads(driver.find_element(By.ID, "export-text").get_attribute("value")) == json.loads(
        p1_json.read_text()
    )
    p1_csv = export(driver, downloads, "export-csv", ".csv")

    # answers survive a reload (kept in the browser until downloaded); then participant 2 starts afresh
    driver.get(url)
    wait_for(lambda: driver.find_element(By.TAG_NAME, "body").get_attribute("data-ready") == "1", "the reload")
    assert driver.find_element(By.ID, "progress").text.startswith(f"{study.n_questions} of")
    assert driver.find_element(By.ID, "participant").get_attribute("value") == "p1"
    driver.find_element(By.ID, "clear").click()
    driver.switch_to.alert.accept()
    assert driver.find_element(By.ID, "progress").text.startswith("0 of")
    driver.find_element(By.ID, "participant").send_keys("p2")
    plan2 = lambda s, q: "A" if s["group"] == "church" else "B"  # noqa: E731
    answer(driver, key, plan2)
    p2_json = export(driver, downloads, "export-json", ".json")

    severe = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not severe, severe  # no CSP violation, no script error

    # tally the downloaded files: p1's CSV is the same participant again -> rejected as a duplicate
    res = tally([p1_json, p1_csv, p2_json], study.key)
    assert [r.participant for r in res.accepted] == ["p1", "p2"]
    assert [(Path(r.path).name, r.kind) for r in res.rejected] == [(p1_csv.name, "duplicate")]
    got = {(r["group"], r["question"]): r["percent"]["Asyrp"] for r in res.rows}
    expect = {}
    for s in key["sets"]:
        for q in s["questions"]:
            votes = expect.setdefault((s["group"], q), [])
            votes += [plan1(s, q) == "A", plan2(s, q) == "A"]
    assert got == {cell: pytest.approx(100 * sum(v) / len(v)) for cell, v in expect.items()}
    assert got[("in-domain", "quality")] == 0 and got[("in-domain", "attribute")] == 50
    assert got[("church", "diversity")] == 100
    # and the CSV export alone is a valid response with the same answers
    only_csv = tally([p1_csv], study.key)
    assert only_csv.accepted[0].answers == res.accepted[0].answers
