"""The admin dashboard in a real browser: Debian's Chromium, driven by Selenium, against the
local app on a real port with seeded data. Screenshots go to test-artifacts/."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from pydantic import SecretStr
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from shared.access.principals import Scope
from shared.access.service import AccessService
from shared.config import REPOSITORY_ROOT, Settings
from shared.db.database import Database
from shared.keys.domain import Owner
from shared.keys.service import KeyLifecycleService
from shared.openrouter.client import OpenRouterClient
from shared.openrouter.emulator import Emulator
from shared.runtime import EMULATOR_BASE_URL, Runtime
from shared.usage.service import UsageService
from shared.usage.tier_policies import TierPolicyService
from shared.web.app_factory import create_app
from tests.conftest import BOOTSTRAP_ADMIN_TOKEN
from tests.serving import served

pytestmark = pytest.mark.integration  # real processes or long campaigns: `-m integration`

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
ARTIFACTS = REPOSITORY_ROOT / "test-artifacts"
# tier, user, spend: $58.50 in all; free $9.50 (95 %) is near its limit, standard $12 is not.
SEED = [("free", "fiona", "9.5"), ("standard", "sam", "12"), ("micro", "mia", "37")]


@pytest.fixture
def seeded(runtime: Runtime) -> dict[str, str]:
    """Three users with keys and spend, and two credentials: an admin's and a mere service's."""

    async def seed() -> dict[str, str]:
        keys = KeyLifecycleService(runtime)
        for tier, user, _ in SEED:
            await keys.create_key(Owner.user(user), actor="seed", tier=tier)
        await UsageService(runtime).log(
            [
                {
                    "user_id": user,
                    "generation_id": f"g-{user}",
                    "model": "openai/gpt-4o",
                    "cost_usd": cost,
                }
                for _, user, cost in SEED
            ],
            actor="seed",
        )
        access = AccessService(runtime)
        admin = await access.issue_token(
            issued_by="seed", name="ops", scopes=[Scope.ADMIN], expires_at=None
        )
        agent = await access.issue_token(
            issued_by="seed", name="agent", scopes=[Scope.USAGE_WRITE], expires_at=None
        )
        await runtime.database().close()
        return {"admin": admin.token, "agent": agent.token}

    return asyncio.run(seed())


@pytest.fixture
def server(settings: Settings, database_dsn: str, emulator: Emulator) -> Iterator[str]:
    """The local app on a real port, in a thread with its own loop and connections."""
    database = Database(database_dsn)
    client = OpenRouterClient(
        management_key=SecretStr(emulator.management_key),
        base_url=EMULATOR_BASE_URL,
        transport=emulator.transport(),
    )
    app = create_app(
        runtime=Runtime(settings, database=database, openrouter=client, emulator=emulator)
    )
    with served(app) as url:
        yield url


@pytest.fixture
def browser() -> Iterator[WebDriver]:
    # Selenium logs each WebDriver call's body at DEBUG, a typed credential included: the
    # whole-run log scan caught it.
    logging.getLogger("selenium").setLevel(logging.WARNING)
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "Chromium is missing: scripts/test installs Debian's chromium and chromium-driver"
    )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1280,1700",
        # offline: every name but the loopback server's fails to resolve
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for errors
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


def sign_in(browser: WebDriver, url: str, token: str) -> None:
    browser.get(f"{url}/admin")
    WebDriverWait(browser, 10).until(
        expected_conditions.visibility_of_element_located((By.ID, "token"))
    )
    browser.find_element(By.ID, "token").send_keys(token)
    browser.find_element(By.ID, "sign-in-button").click()


def screenshot(browser: WebDriver, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / f"{name}.png"))


def test_the_dashboard_refuses_a_credential_that_is_not_an_admins(
    seeded: dict[str, str], server: str, browser: WebDriver
) -> None:
    # WHEN a service without the admin scope signs in
    sign_in(browser, server, seeded["agent"])

    # THEN the page says it was refused and shows no figure
    refused = WebDriverWait(browser, 10).until(
        expected_conditions.visibility_of_element_located((By.ID, "refused"))
    )
    assert refused.text.startswith("refused: ")
    assert not browser.find_element(By.ID, "dashboard").is_displayed()
    screenshot(browser, "dashboard-refused")


def test_the_dashboard_draws_the_seeded_month(
    seeded: dict[str, str], server: str, browser: WebDriver
) -> None:
    # WHEN an admin signs in
    sign_in(browser, server, seeded["admin"])
    WebDriverWait(browser, 10).until(
        expected_conditions.visibility_of_element_located((By.ID, "dashboard"))
    )
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "spent").text != "")

    # THEN the totals, the tier chart's bars and the users near their limit are the seed's
    assert browser.find_element(By.ID, "spent").text == "$58.50"
    bars = browser.find_elements(By.CSS_SELECTOR, "#chart-tier rect")
    drawn = {
        bar.get_attribute("data-name"): Decimal(bar.get_attribute("data-cost") or "")
        for bar in bars
    }
    assert drawn == {tier: Decimal(cost) for tier, _, cost in SEED}
    widths = {
        bar.get_attribute("data-name"): float(bar.get_attribute("width") or 0) for bar in bars
    }
    assert widths["micro"] > widths["standard"] > widths["free"]
    near = browser.find_element(By.ID, "near-limit").text
    assert "fiona" in near and "sam" not in near
    states = browser.find_element(By.ID, "keys-by-state").text
    assert "current 3" in states
    screenshot(browser, "dashboard")


def test_an_emergency_rotation_started_from_the_page_shows_progress_and_completes(
    seeded: dict[str, str], server: str, browser: WebDriver, emulator: Emulator
) -> None:
    # GIVEN an admin on the dashboard
    sign_in(browser, server, seeded["admin"])
    WebDriverWait(browser, 10).until(
        expected_conditions.visibility_of_element_located((By.ID, "dashboard"))
    )
    before = {key.hash for key in emulator.user_keys()}

    # WHEN they start an emergency rotation with a reason, and confirm it
    browser.find_element(By.ID, "action-reason").send_keys("leaked in a log")
    browser.find_element(By.ID, "emergency").click()
    WebDriverWait(browser, 5).until(expected_conditions.alert_is_present())
    browser.switch_to.alert.accept()

    # THEN the progress reaches every key, and OpenRouter holds only new keys
    WebDriverWait(browser, 30).until(
        lambda b: "(completed)" in b.find_element(By.ID, "emergency-status").text
    )
    assert browser.find_element(By.ID, "emergency-status").text.startswith("3 / 3 replaced")
    assert browser.find_element(By.ID, "emergency-bar").get_attribute("value") == "3"
    assert {key.hash for key in emulator.user_keys()}.isdisjoint(before)
    assert "leaked in a log" in browser.find_element(By.ID, "emergencies").text
    screenshot(browser, "dashboard-emergency-rotation")


def test_the_api_docs_render_offline_and_offer_to_authorize(
    server: str, browser: WebDriver
) -> None:
    # WHEN a new user opens /docs with no way to reach any CDN
    browser.get(f"{server}/docs")

    # THEN Swagger UI renders the document, with the Authorize button for a bearer token,
    # and everything it loaded came from the app itself
    title = WebDriverWait(browser, 20).until(
        expected_conditions.visibility_of_element_located(
            (By.CSS_SELECTOR, ".swagger-ui .info .title")
        )
    )
    assert title.text.startswith("openrouter-agent")
    assert browser.find_element(By.CSS_SELECTOR, "button.authorize").is_displayed()
    loaded = browser.execute_script(
        "return performance.getEntriesByType('resource').map(entry => entry.name)"
    )
    assert loaded and all(url.startswith(server) for url in loaded), loaded
    screenshot(browser, "api-docs")

    # and ReDoc renders too
    browser.get(f"{server}/redoc")
    WebDriverWait(browser, 20).until(
        expected_conditions.visibility_of_element_located((By.CSS_SELECTOR, ".api-content h1"))
    )


LONG_MODEL = "openrouter/some-provider/an-extremely-long-model-name-with-a-dated-suffix-2026-11-30"


def _rect(browser: WebDriver, element: object) -> dict[str, float]:
    return dict(
        browser.execute_script("return arguments[0].getBoundingClientRect().toJSON()", element)
    )


def test_the_dashboard_reads_true_on_a_wide_screen_and_on_a_phone(
    seeded: dict[str, str], server: str, browser: WebDriver, runtime: Runtime
) -> None:
    # GIVEN a month with a model of a very long name, and a user whose usage was reset
    async def more() -> None:
        await UsageService(runtime).log(
            [{"user_id": "mia", "generation_id": "g-long", "model": LONG_MODEL, "cost_usd": "2"}],
            actor="seed",
        )
        await runtime.database().close()

    asyncio.run(more())

    # WHEN an admin signs in, and resets fiona's usage from the page
    sign_in(browser, server, seeded["admin"])
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "spent").text != "")
    near = browser.find_element(By.ID, "near-limit").text
    browser.find_element(By.ID, "action-user").send_keys("fiona")
    browser.find_element(By.ID, "action-reason").send_keys("support ticket 12")
    browser.find_element(By.ID, "reset-user").click()
    WebDriverWait(browser, 5).until(expected_conditions.alert_is_present())
    browser.switch_to.alert.accept()
    WebDriverWait(browser, 10).until(
        lambda b: b.find_element(By.ID, "adjustments").text == "-$9.50"
    )

    # THEN the totals say net, gross and adjustments, as every report does
    assert browser.find_element(By.ID, "spent").text == "$51.00"
    assert browser.find_element(By.ID, "events-cost").text == "$60.50"
    # fiona was near her limit: her tier's budget and her key's own limit, both shown
    assert "fiona free $9.50 $10.00 $10.00 95 near" in near, near
    # the long model name sits on its own line, above its bar, never across it
    bars = {
        b.get_attribute("data-name"): b
        for b in browser.find_elements(By.CSS_SELECTOR, "#chart-model rect")
    }
    labels = browser.find_elements(By.CSS_SELECTOR, "#chart-model text")
    label = next(t for t in labels if t.text.startswith("openrouter/some-provider"))
    assert _rect(browser, label)["bottom"] <= _rect(browser, bars[LONG_MODEL])["top"] + 0.5
    # empty tables say so; the actor of the reset is the token's name
    assert browser.find_element(By.ID, "drift").text.endswith("nothing yet")
    assert browser.find_element(By.ID, "jobs").text.endswith("nothing yet")
    assert "ops (token)" in browser.find_element(By.ID, "audit").text
    screenshot(browser, "dashboard-wide")

    # AND at 420 px wide nothing leaves the page and the charts' text stays readable
    browser.set_window_size(420, 1700)
    WebDriverWait(browser, 5).until(lambda b: b.execute_script("return window.innerWidth") <= 420)
    overflow = browser.execute_script(
        "return document.documentElement.scrollWidth - window.innerWidth"
    )
    assert overflow <= 0, f"the page is {overflow} px wider than the screen"
    labels = browser.find_elements(By.CSS_SELECTOR, "#chart-model text")
    smallest = min(_rect(browser, t)["height"] for t in labels)
    assert smallest >= 11, f"chart text {smallest:.1f} px high"
    chart = _rect(browser, browser.find_element(By.ID, "chart-model"))
    for text in labels:
        assert _rect(browser, text)["right"] <= chart["right"] + 0.5, text.text
    screenshot(browser, "dashboard-420px")

    # and the console holds no error (a missing favicon was one)
    console = browser.execute("getLog", {"type": "browser"})["value"]
    errors = [e for e in console if e["level"] == "SEVERE"]
    assert errors == [], errors


def _rows(browser: WebDriver, table_id: str) -> list[list[str]]:
    return [
        [td.text for td in tr.find_elements(By.TAG_NAME, "td")]
        for tr in browser.find_elements(By.CSS_SELECTOR, f"#{table_id} tbody tr")
    ]


def test_the_dashboard_shows_tier_policies_and_the_users_held_by_their_daily_cap(
    seeded: dict[str, str], server: str, browser: WebDriver, runtime: Runtime
) -> None:
    """GIVEN the seeded month (fiona free $9.50, sam standard $12, mia micro $37, all today)
    WHEN an admin signs in, then the free tier is capped at $5 a day to two models and micro at
    $30 a day to one provider, and the page is loaded again
    THEN at first no one is held and every tier is unrestricted; then both policies show, with
    the tiers' monthly budgets, and mia and fiona are held, highest spend first, until the next
    UTC midnight (sam's tier has no cap)."""
    sign_in(browser, server, seeded["admin"])
    WebDriverWait(browser, 10).until(lambda b: b.find_element(By.ID, "spent").text != "")
    before_capped = _rows(browser, "daily-capped")
    before_policies = {row[0]: row for row in _rows(browser, "tier-policies")}

    async def policies() -> None:
        service = TierPolicyService(runtime)
        for tier, cap, models, providers in (
            ("free", Decimal(5), ["openai/gpt-4o", "openai/gpt-4o-mini"], None),
            ("micro", Decimal(30), None, ["OpenAI"]),
        ):
            await service.set_policy(
                tier,
                daily_cap_usd=cap,
                allowed_models=models,
                allowed_providers=providers,
                actor="seed",
                reason=None,
                request_id=None,
            )
        await runtime.database().close()

    asyncio.run(policies())
    browser.refresh()  # the credential stays in the tab: the page loads again by itself
    WebDriverWait(browser, 10).until(
        lambda b: "$30.00" in b.find_element(By.ID, "tier-policies").text
    )
    resets = (datetime.now(UTC) + timedelta(days=1)).strftime("%Y-%m-%d 00:00:00Z")

    assert before_capped == [["nothing yet"]]
    assert before_policies["free"] == [
        "free",
        "$10.00",
        "unlimited",
        "unrestricted",
        "unrestricted",
    ]
    assert _rows(browser, "daily-capped") == [
        ["mia", "micro", "$37.00", "$30.00", resets],
        ["fiona", "free", "$9.50", "$5.00", resets],
    ]
    after = {row[0]: row for row in _rows(browser, "tier-policies")}
    assert after["free"] == [
        "free",
        "$10.00",
        "$5.00",
        "openai/gpt-4o, openai/gpt-4o-mini",
        "unrestricted",
    ]
    assert after["micro"] == ["micro", "$100.00", "$30.00", "unrestricted", "OpenAI"]
    assert after["admin"] == ["admin", "unlimited", "unlimited", "unrestricted", "unrestricted"]
    screenshot(browser, "dashboard-tier-policies")


@pytest.fixture
def server_without_database(settings: Settings, emulator: Emulator) -> Iterator[str]:
    """The app on a real port whose database cannot be reached: every read answers 503."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        dead_port = closed.getsockname()[1]
    database = Database(f"postgresql://nobody@127.0.0.1:{dead_port}/none?connect_timeout=1")
    app = create_app(runtime=Runtime(settings, database=database, emulator=emulator))
    with served(app) as url:
        yield url


def test_an_outage_shows_an_error_and_keeps_the_admin_signed_in(
    server_without_database: str, browser: WebDriver
) -> None:
    """GIVEN the service's database is down WHEN an admin signs in THEN the dashboard says it
    could not load and keeps the credential (only a refusal forgets it)."""
    sign_in(browser, server_without_database, BOOTSTRAP_ADMIN_TOKEN)

    error = WebDriverWait(browser, 20).until(
        expected_conditions.visibility_of_element_located((By.ID, "load-error"))
    )
    assert error.text.startswith("could not load: ")
    assert browser.execute_script(
        "return sessionStorage.getItem('openrouter-agent-admin-token') !== null"
    )
    assert browser.find_element(By.ID, "sign-out").is_displayed()
    assert not browser.find_element(By.ID, "refused").is_displayed()
