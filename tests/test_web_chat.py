"""The web chat page at `/`: self-contained (works offline), and in a real headless Chromium it streams a reply from
the server's API, folds the thinking, keeps the conversation and starts a new one. The browser only ever talks to
127.0.0.1 (every other host name resolves to nothing)."""

import re
import shutil

import pytest
from helpers import ScriptedGenerator, raw_request, running_server, wait_until

from modeling_miniminds.tokenizer import load_tokenizer

pytest.importorskip("uvicorn", reason="the server needs its extra: pip install -e '.[serve]'")
pytest.importorskip("fastapi", reason="the server needs its extra: pip install -e '.[serve]'")

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
    "--window-size=1000,800",
]


@pytest.fixture(scope="module")
def served(tiny_tokenizer_dir):
    generator = ScriptedGenerator(load_tokenizer(tiny_tokenizer_dir), pieces=12, delay=0.05)
    with running_server(generator) as served:
        yield served


def test_page_loads_nothing_from_other_hosts(served):
    status, page = raw_request(served, "GET", "/")
    assert status == 200 and "<title>MiniMinds chat</title>" in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page), "the page must work offline"


@pytest.fixture
def browser(tmp_path, monkeypatch):
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")
    from selenium.webdriver.chrome.service import Service

    monkeypatch.setenv("SE_OFFLINE", "true")  # Selenium Manager must never look for drivers online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in BROWSER_FLAGS + [f"--user-data-dir={tmp_path / 'profile'}"]:
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_browser_streams_a_reply_folds_thinking_keeps_history_and_starts_over(served, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(served.url + "/")
    wait_until(lambda: "tiny" in browser.find_element(By.ID, "title").text, "the page did not load the model list")
    browser.find_element(By.ID, "input").send_keys("hello", Keys.ENTER)
    done = "#messages .msg.assistant[data-state=done]"
    wait_until(lambda: browser.find_elements(By.CSS_SELECTOR, done), "no streamed reply finished", timeout=30)

    reply = browser.find_element(By.CSS_SELECTOR, done)
    assert int(reply.get_attribute("data-chunks")) > 3  # the reply arrived in pieces
    assert reply.get_attribute("data-finish") == "tool_calls"
    assert reply.find_element(By.CLASS_NAME, "content").text == "Checking."
    assert reply.find_element(By.CLASS_NAME, "tool").text == 'get_weather({"city": "Paris"})'
    thinking = reply.find_element(By.CSS_SELECTOR, "details.thinking")
    assert thinking.get_attribute("open") is None  # folded
    assert browser.execute_script("return arguments[0].textContent", thinking).endswith("The user wants weather.")
    browser.save_screenshot(str(tmp_path / "web_chat.png"))
    assert (tmp_path / "web_chat.png").stat().st_size > 1000

    browser.find_element(By.ID, "input").send_keys("and tomorrow?", Keys.ENTER)
    wait_until(lambda: len(browser.find_elements(By.CSS_SELECTOR, done)) == 2, "no second reply", timeout=30)
    second_prompt = served.server.tokenizer.decode(served.server.worker.generator.prompts[-1])
    assert "hello" in second_prompt and "Checking." in second_prompt and "and tomorrow?" in second_prompt

    browser.find_element(By.ID, "new-chat").click()
    assert browser.find_elements(By.CSS_SELECTOR, "#messages .msg") == []
