"""Benchmark of the web console: time from opening a sandbox's page to a usable terminal prompt.

Run ``python bench/bench_console.py [--json OUT]``; ``make bench`` calls :func:`run`. A real service
(its own process) on the real engine, one running sandbox made through the API, and headless Debian
Chromium signed in to the console. Each sample loads ``/sandboxes/{id}`` afresh; the page marks
(``performance.mark("terminal-prompt")``) the arrival of the PTY's first output, bash's prompt, and the
sample is that mark's time since the navigation started: page, scripts, xterm.js, the WebSocket through
the service's proxy, the PTY and bash's start-up, all in the browser's own clock.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "console"))

OPENS = 10
# Bounds on waiting (not measurements): a page load, a sandbox start.
PAGE_S = 30
SANDBOX_S = 180


def run(json_path: str | None = None, opens: int = OPENS) -> dict[str, Any]:
    """Open the sandbox page ``opens`` times; returns (and with ``json_path`` writes) p50/p99/max in ms."""
    from console_env import LABELS, browser, browser_available, console_image, service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    from agentbox.engine import docker_client

    if not browser_available():
        raise SystemExit("no chromium/chromedriver: run `agentbox doctor --fix --browser`")
    client = docker_client()
    result: dict[str, Any] = {"opens": opens}
    try:
        with console_image(client) as image, tempfile.TemporaryDirectory() as tmp, \
                service(Path(tmp), image, client) as svc:
            with svc.client() as api:
                made = api.post("/v1/sandboxes", json={"labels": LABELS})
                made.raise_for_status()
                sandbox_id = made.json()["id"]
            driver = browser()
            try:
                driver.get(svc.url + "/signin")
                field = driver.find_element(By.ID, "token")
                field.send_keys(svc.admin_token + Keys.ENTER)
                WebDriverWait(driver, PAGE_S).until(lambda d: "/signin" not in d.current_url)
                samples: list[float] = []
                for i in range(opens + 1):  # the first open warms the browser's cache and the proxy
                    driver.get(f"{svc.url}/sandboxes/{sandbox_id}")
                    mark = WebDriverWait(driver, SANDBOX_S, poll_frequency=0.05).until(lambda d: d.execute_script(
                        "const m = performance.getEntriesByName('terminal-prompt'); return m.length && m[0].startTime;"
                    ))
                    if i:
                        samples.append(float(mark))
            finally:
                driver.quit()
        ordered = sorted(samples)
        result["page_to_prompt_ms"] = {
            "p50": round(statistics.median(ordered), 1),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 1),
            "max": round(ordered[-1], 1),
            "n": len(ordered),
        }
    finally:
        client.close()
    result["measured_at"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--opens", type=int, default=OPENS)
    args = parser.parse_args()
    print(json.dumps(run(args.json, args.opens), indent=2))


if __name__ == "__main__":
    main()
