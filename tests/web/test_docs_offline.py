"""/docs and /redoc make no request off the host: not their pages, and not the files they load
(Swagger UI's and ReDoc's bundles fetch images of their own, unless told otherwise)."""

from __future__ import annotations

import re

import httpx
import pytest

from shared.runtime import Runtime
from shared.web.app_factory import create_app

# An absolute URL (or a protocol-relative one) to a file a browser fetches to show the page: an
# image, a script, a style sheet, a font.
FETCHED_FILE = re.compile(
    r"""(?:https?:)?//[A-Za-z0-9.-]+\.[A-Za-z]{2,}(?::\d+)?/[^\s"'`()<>\\]*?"""
    r"""\.(?:svg|png|jpe?g|gif|ico|webp|avif|bmp|js|mjs|css|woff2?|ttf|otf|eot)"""
    r"""(?=[?#"'`)\s\\]|$)""",
    re.IGNORECASE,
)
# Hosts that serve what a page loads whatever the path looks like: CDNs, web fonts, and Swagger
# UI's online validator (its badge is an <img> of validator.swagger.io).
FETCHED_HOST = re.compile(
    r"(?:https?:)?//(?:cdn\.|[a-z0-9-]+\.cdn\.|fonts\.googleapis\.com|fonts\.gstatic\.com|"
    r"unpkg\.com|cdnjs\.|validator\.swagger\.io)[^\s\"'`)]*",
    re.IGNORECASE,
)
# Where a style sheet fetches: url(...) and @import of anything absolute.
CSS_FETCH = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"]?)(?:https?:)?//[^\s"')]*""")


def _fetched_from_elsewhere(text: str, *, css: bool = False) -> list[str]:
    found = FETCHED_FILE.findall(text) + FETCHED_HOST.findall(text)
    if css:
        found += CSS_FETCH.findall(text)
    return sorted(set(found))


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_no_docs_page_or_asset_fetches_anything_from_another_host(
    runtime: Runtime, page: str
) -> None:
    """GIVEN the app's /docs or /redoc page
    WHEN the page and every asset it loads are read as a browser would get them
    THEN none names an image, script, style or font on another host (plain links to licences
    and to the projects' sites are text, not fetched, and may stay)."""
    app = create_app(runtime=runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        html = await client.get(page)
        assert html.status_code == 200
        assert _fetched_from_elsewhere(html.text, css=True) == [], page
        assets = re.findall(r"(?:src|href)=['\"]([^'\"]+)['\"]", html.text)
        assert any(asset.endswith(".js") for asset in assets), assets
        for asset in assets:
            assert asset.startswith("/"), f"{page} loads {asset} from elsewhere"
            fetched = await client.get(asset)
            assert fetched.status_code == 200, asset
            css = fetched.headers["content-type"].startswith("text/css")
            assert _fetched_from_elsewhere(fetched.text, css=css) == [], asset


async def test_redocs_logo_is_served_by_the_app(runtime: Runtime) -> None:
    """GIVEN ReDoc's bundle, which shows a logo in its side bar
    WHEN the bundle is served
    THEN the logo it names is an asset of this app, and that asset is served as an image."""
    app = create_app(runtime=runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://testserver"
    ) as client:
        bundle = await client.get("/docs/assets/redoc.standalone.js")
        assert bundle.status_code == 200
        assert bundle.headers["content-type"].startswith("text/javascript")
        [logo] = re.findall(r'alt:"redocly logo",onError:[^,]+,src:"([^"]+)"', bundle.text)
        assert logo.startswith("/docs/assets/"), logo
        image = await client.get(logo)
        assert image.status_code == 200
        assert image.headers["content-type"] == "image/png"


async def test_the_docs_assets_follow_the_apps_root_path(runtime: Runtime) -> None:
    """GIVEN the app mounted under a prefix (an API Gateway stage)
    WHEN ReDoc's bundle is read there
    THEN the logo it names is under the same prefix."""
    app = create_app(runtime=runtime)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, root_path="/stage"),
        base_url="http://testserver",
    ) as client:
        bundle = await client.get("/stage/docs/assets/redoc.standalone.js")
        assert bundle.status_code == 200
        [logo] = re.findall(r'alt:"redocly logo",onError:[^,]+,src:"([^"]+)"', bundle.text)
        assert logo == "/stage/docs/assets/favicon.png"
