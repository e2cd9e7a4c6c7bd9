"""`make screenshot`: the loop's status page (tideline.app.api) over the registry `make demo` left, photographed by
Debian's headless chromium (selenium), for the README.

    .venv/bin/python scripts/status_screenshot.py [--registry URI] [--out docs/images/status-page.png]

The registry defaults to the demo's (<home>/demo/registry). The page is served on loopback with a throw-away token,
entered through the page's own form, exactly as a person would; the picture is taken once the page has drawn its
tables and the live-accuracy plot.
"""

from __future__ import annotations

import argparse
import secrets
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--registry", default=None, help="registry URI (default: the demo's, <home>/demo/registry)")
    p.add_argument("--out", default=str(ROOT / "docs" / "images" / "status-page.png"))
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--height", type=int, default=1500)
    args = p.parse_args(argv)

    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    from tideline.app.api import create_app, serve_in_thread
    from tideline.config import load_settings
    from tideline.registry import open_registry

    settings = load_settings()
    uri = args.registry or (Path(settings.home) / "demo" / "registry").resolve().as_uri()
    if args.registry is None and not (Path(settings.home) / "demo" / "registry").is_dir():
        print(f"error: no demo registry at {uri}: run `make demo` first (or pass --registry)", file=sys.stderr)
        return 2
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if binary is None or driver is None:
        print("error: chromium and chromedriver are needed: apt-get install -y chromium chromium-driver",
              file=sys.stderr)
        return 2
    registry = open_registry(uri, endpoint_url=settings.endpoint_url())
    token = secrets.token_hex(16)
    server, port = serve_in_thread(create_app(registry, settings, token=token), 0)
    opts = Options()
    opts.binary_location = binary
    profile = tempfile.mkdtemp(prefix="tideline-chromium-")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--no-first-run", "--hide-scrollbars", f"--window-size={args.width},{args.height}",
                f"--user-data-dir={profile}"):
        opts.add_argument(arg)
    browser = webdriver.Chrome(service=Service(executable_path=driver), options=opts)
    try:
        browser.get(f"http://127.0.0.1:{port}/?refresh=60")
        wait = WebDriverWait(browser, 60)
        wait.until(lambda b: b.find_element(By.ID, "login").is_displayed())
        browser.find_element(By.ID, "token").send_keys(token)
        browser.find_element(By.ID, "use").click()
        wait.until(lambda b: b.find_element(By.ID, "page").is_displayed())
        wait.until(lambda b: b.execute_script("return !!window.Plotly && "
                                              "document.querySelectorAll('#live .main-svg').length > 0"))
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(out))
    finally:
        browser.quit()
        server.should_exit = True
        shutil.rmtree(profile, ignore_errors=True)
    print(f"{out} ({out.stat().st_size // 1024} KiB) of the status page over {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
