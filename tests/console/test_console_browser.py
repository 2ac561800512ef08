"""The web console in a real browser (Debian Chromium, headless, via Selenium) against a real service.

Issue 12's scenarios: sign in; a sandbox made through the API appears live; create one from the form;
``echo hi`` in the terminal reads ``hi`` back; upload a file (drag and drop) and see it listed; pause and
resume; remove; a wrong token is refused. Each page is saved as a screenshot under the test output dir.
Plus the CSRF rules of the cookie, checked with a plain HTTP client.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from console_env import LABELS, Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

# Bounds on waiting for the page (not timing assertions): a create may build nothing but still start a container.
PAGE = 30
SANDBOX = 180


def wait(driver: Any, limit: float = PAGE) -> WebDriverWait[Any]:
    return WebDriverWait(driver, limit, poll_frequency=0.1)


def sign_in(driver: Any, svc: Service, token: str) -> None:
    driver.get(svc.url + "/signin")
    field = wait(driver).until(ec.element_to_be_clickable((By.ID, "token")))
    field.send_keys(token)
    field.send_keys(Keys.ENTER)


def row(driver: Any, sandbox_id: str) -> Any:
    return driver.find_elements(By.CSS_SELECTOR, f'#sandboxes tr[data-id="{sandbox_id}"]')


def terminal_text(driver: Any) -> str:
    return str(driver.execute_script(
        "const r = document.querySelector('#terminal .xterm-rows'); return r ? r.innerText : '';"
    ))


def test_a_wrong_token_is_refused(svc: Service, driver: Any, shots: Any) -> None:
    sign_in(driver, svc, "abx_not-a-token")
    error = wait(driver).until(ec.visibility_of_element_located((By.ID, "token-error")))
    assert "Unknown or revoked token" in error.text
    shots(driver, "signin-refused")
    driver.get(svc.url + "/")
    assert driver.current_url.startswith(svc.url + "/signin"), "no cookie, no console"


def test_console_scenario(svc: Service, driver: Any, shots: Any) -> None:
    sign_in(driver, svc, svc.admin_token)
    wait(driver).until(lambda d: d.find_element(By.ID, "live").text == "live")
    shots(driver, "list-empty")

    # A sandbox made through the API shows up on the open page, pushed by the event stream.
    with svc.client() as api:
        made = api.post("/v1/sandboxes", json={"labels": {**LABELS, "name": "from-the-api"}})
        assert made.status_code == 201, made.text
        api_id = made.json()["id"]
    wait(driver, SANDBOX).until(lambda d: row(d, api_id) and row(d, api_id)[0].get_attribute("data-state") == "running")
    assert "from-the-api" in row(driver, api_id)[0].text
    shots(driver, "list-live")
    with svc.client() as api:  # the engine's stats behind the CPU and memory columns
        first, second = (api.get(f"/v1/sandboxes/{api_id}/stats").json() for _ in range(2))
    assert first["memory_bytes"] > 0 and first["memory_limit_bytes"] >= first["memory_bytes"]
    assert second["cpu_percent"] is not None and second["cpu_percent"] >= 0

    # Create from the form: a bad value is shown next to its field, then a good create opens the sandbox page.
    driver.find_element(By.LINK_TEXT, "New sandbox").click()
    form = wait(driver).until(ec.visibility_of_element_located((By.ID, "create")))
    driver.find_element(By.ID, "f-cpus").send_keys("-1")
    labels = "\n".join(f"{k}={v}" for k, v in {**LABELS, "name": "from-the-form"}.items())
    driver.find_element(By.ID, "f-labels").send_keys(labels)
    form.find_element(By.ID, "create-button").click()
    cpus_error = wait(driver).until(lambda d: d.find_element(By.ID, "e-cpus").text and d.find_element(By.ID, "e-cpus"))
    assert driver.find_element(By.ID, "f-cpus").get_attribute("aria-invalid") == "true"
    shots(driver, "create-error")
    assert cpus_error.text
    driver.find_element(By.ID, "f-cpus").clear()
    form.find_element(By.ID, "create-button").click()
    wait(driver, SANDBOX).until(lambda d: "/sandboxes/" in d.current_url)
    form_id = driver.current_url.rsplit("/", 1)[1]

    # The terminal: a real PTY through the service's proxy.
    wait(driver, PAGE).until(lambda d: d.execute_script("return document.body.dataset.terminal") == "open")
    wait(driver).until(lambda d: "$" in terminal_text(d) or "#" in terminal_text(d))
    driver.find_element(By.CSS_SELECTOR, "#terminal .xterm-helper-textarea").send_keys("echo hi" + Keys.ENTER)
    wait(driver).until(lambda d: "hi" in [line.strip() for line in terminal_text(d).splitlines()])

    # Upload by drag and drop (a real drop event carrying a File), then it is listed.
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#files li"))
    driver.execute_script("""
        const data = new DataTransfer();
        data.items.add(new File(["dropped by the browser test\\n"], "dropped.txt", {type: "text/plain"}));
        document.getElementById("drop").dispatchEvent(new DragEvent("drop", {dataTransfer: data, bubbles: true}));
    """)
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#files [data-path$="/dropped.txt"]'))
    driver.find_element(By.CSS_SELECTOR, '#files [data-path$="/dropped.txt"]').click()
    editor = wait(driver).until(ec.visibility_of_element_located((By.ID, "editor")))
    assert editor.get_attribute("value") == "dropped by the browser test\n"
    shots(driver, "sandbox")

    # Pause and resume, from the page; the badge follows the event stream.
    driver.find_element(By.CSS_SELECTOR, '[data-action="pause"]').click()
    wait(driver).until(lambda d: d.find_element(By.ID, "state").text == "paused")
    shots(driver, "sandbox-paused")
    with svc.client() as api:
        refused = api.get(f"/v1/sandboxes/{form_id}/stats")
        assert refused.status_code == 409 and "paused" in refused.json()["error"]["message"]
    driver.find_element(By.CSS_SELECTOR, '[data-action="resume"]').click()
    wait(driver).until(lambda d: d.find_element(By.ID, "state").text == "running")

    # Admin pages, and the list at phone width.
    driver.get(svc.url + "/admin")
    wait(driver).until(lambda d: d.find_elements(By.CSS_SELECTOR, '#tokens tr[data-name="admin"]'))
    shots(driver, "admin")
    driver.get(svc.url + "/new")
    shots(driver, "create")
    driver.set_window_size(360, 800)
    driver.get(svc.url + "/")
    wait(driver).until(lambda d: row(d, form_id))
    shots(driver, "list-360px")
    width = driver.execute_script("return document.documentElement.scrollWidth")
    assert width <= 360 + 1, f"the list page scrolls sideways at 360 px ({width} px wide)"
    driver.set_window_size(1280, 900)

    # Remove, with the confirmation; the row goes away live.
    for sandbox_id in (form_id, api_id):
        wait(driver).until(lambda d, s=sandbox_id: row(d, s))  # type: ignore[misc]
        row(driver, sandbox_id)[0].find_element(By.CSS_SELECTOR, '[data-action="remove"]').click()
        wait(driver).until(ec.alert_is_present()).accept()
        wait(driver, SANDBOX).until(lambda d, s=sandbox_id: not row(d, s))  # type: ignore[misc]
    with svc.client() as api:
        assert api.get(f"/v1/sandboxes/{form_id}").status_code == 404


def _signed_in_cookies(svc: Service) -> tuple[httpx.Client, str]:
    client = httpx.Client(base_url=svc.url, timeout=30)
    client.get("/signin")
    csrf = client.cookies["agentbox_csrf"]
    signed = client.post("/signin", data={"csrf": csrf, "token": svc.admin_token, "next": "/"})
    assert signed.status_code == 303 and "agentbox_token" in client.cookies
    return client, csrf


def test_the_cookie_needs_its_csrf_proof(svc: Service) -> None:
    client, csrf = _signed_in_cookies(svc)
    try:
        assert client.get("/v1/sandboxes").status_code == 403, "a cookie alone (a forged request) is refused"
        assert client.get("/v1/sandboxes", headers={"x-agentbox-csrf": "wrong"}).status_code == 403
        assert client.get("/v1/sandboxes", headers={"x-agentbox-csrf": csrf}).status_code == 200
        # A cross-site form post carries no CSRF field: neither sign-out nor sign-in happens.
        assert client.post("/signout", data={}).status_code == 403
        other = client.post("/signin", data={"csrf": csrf, "token": svc.admin_token},
                            headers={"origin": "https://evil.example"})
        assert other.status_code == 403
        out = client.post("/signout", data={"csrf": csrf})
        assert out.status_code == 303
        assert client.get("/v1/sandboxes", headers={"x-agentbox-csrf": csrf}).status_code == 401
    finally:
        client.close()


def test_a_console_websocket_from_another_origin_is_refused(svc: Service) -> None:
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect
    from websockets.typing import Origin

    client, _csrf = _signed_in_cookies(svc)
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    client.close()
    ws_url = svc.url.replace("http://", "ws://") + "/v1/sandboxes/any/runtime/pty"

    def refusals_by_auth() -> float:  # the auth middleware counts its refusals; the route's 404 is not one
        text = httpx.get(svc.url + "/metrics").text
        key = 'agentbox_api_errors_total{code="forbidden"}'
        line = next((ln for ln in text.splitlines() if ln.startswith(key)), "")
        return float(line.split()[-1]) if line else 0.0

    before = refusals_by_auth()
    with pytest.raises(InvalidStatus) as refused:
        connect(ws_url, additional_headers={"cookie": cookie}, origin=Origin("https://evil.example"))
    assert refused.value.response.status_code == 403
    assert refusals_by_auth() == before + 1
    # Same origin: past the auth check (the sandbox does not exist: refused by the route, not the middleware).
    with pytest.raises(InvalidStatus):
        connect(ws_url, additional_headers={"cookie": cookie}, origin=svc.url)
    assert refusals_by_auth() == before + 1
