"""The status page in a real headless browser: Debian's chromium driven by Playwright."""

from __future__ import annotations

import shutil

import httpx
import pytest

from tests.control.support import chat, full_gateway
from tests.waiting import eventually

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.browser


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (make browser)")
async def test_status_page_shows_a_row_per_backend(sims, tmp_path):
    from playwright.async_api import async_playwright

    # Slow polls: chromium starting on a shared 2-core machine must not make a healthy backend look stale.
    async with full_gateway(backend=sims.urls, admin_token="page-token", poll_interval=1.0,
                            poll_timeout=1.0) as gateway, \
            httpx.AsyncClient(timeout=30) as client:
        await sims.set_fault(1, "metrics_fail")
        sick = sims.urls[1].removeprefix("http://")
        await eventually(lambda: not gateway.fleet.get(sick).healthy, "backend 1 unhealthy")
        proxy = f"http://127.0.0.1:{gateway.proxy.port}/v1/chat/completions"
        for i in range(3):
            await client.post(proxy, content=chat(text=f"page {i}"), headers={"content-type": "application/json"})
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            try:
                page = await browser.new_page()
                await page.goto(f"http://127.0.0.1:{gateway.admin.port}/#token=page-token")
                await page.wait_for_selector("body[data-loaded=true]", timeout=20_000)
                rows = page.locator("#backends tbody tr")
                assert await rows.count() == 2
                healthy = sims.urls[0].removeprefix("http://")
                health = page.locator(f'tr[data-backend="{healthy}"] [data-field=health]')
                assert await health.inner_text() == "healthy"
                assert await page.locator(f'tr[data-backend="{sick}"] [data-field=health]').inner_text() == "unhealthy"
                kv = await page.locator(f'tr[data-backend="{healthy}"] [data-field=kv_usage]').inner_text()
                assert kv.endswith("%")
                # A second refresh draws the charts (they plot differences between refreshes).
                await page.wait_for_function("document.getElementById('rate-now').textContent !== '-'",
                                             timeout=20_000)
                await page.screenshot(path=str(tmp_path / "status.png"), full_page=True)
                # Without the token the page asks for one instead of showing data.
                await page.evaluate("sessionStorage.clear()")
                await page.goto(f"http://127.0.0.1:{gateway.admin.port}/")
                await page.wait_for_selector("#auth", state="visible", timeout=20_000)
            finally:
                await browser.close()
        assert (tmp_path / "status.png").stat().st_size > 0
