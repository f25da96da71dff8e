"""Browser tests' common parts: Debian's Chromium through Playwright (never a downloaded
browser), logging in through a console's login page, and screenshots for the README."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

CHROMIUM = "/usr/bin/chromium"
DOCS = Path(__file__).resolve().parent.parent / "docs"

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists() and shutil.which("chromium") is None,
    reason="Debian's chromium is not installed (scripts/setup.sh test installs it)",
)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Browser]:
    """Headless Chromium; alarm sounds may play without a click (as on a console PC)."""
    args = ["--autoplay-policy=no-user-gesture-required"]
    if os.geteuid() == 0:
        args.append("--no-sandbox")
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=args)
        try:
            yield browser
        finally:
            await browser.close()


async def login(
    browser: Browser,
    base: str,
    user: str,
    password: str,
    lands: str,
    *,
    viewport: tuple[int, int] = (1440, 900),
    **ctx: Any,
) -> tuple[BrowserContext, Page]:
    """A new browser context logged in through ``base``/login, on the page ``lands``."""
    context = await browser.new_context(
        viewport={"width": viewport[0], "height": viewport[1]}, **ctx
    )
    page = await context.new_page()
    await page.goto(base + "/login")
    await page.fill("input[name=user]", user)
    await page.fill("input[name=password]", password)
    await page.click("button[type=submit]")
    await page.wait_for_url(f"**{lands}")
    return context, page


async def shot(page: Page, name: str, full: bool = False) -> None:
    DOCS.mkdir(exist_ok=True)
    await page.screenshot(path=str(DOCS / name), full_page=full)
