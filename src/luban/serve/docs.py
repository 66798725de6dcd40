"""/docs without a network: Swagger UI from the `swagger-ui-bundle-v2` wheel, served by the app itself.

FastAPI's default /docs page loads Swagger UI from a CDN, so on an air-gapped host it renders blank. When the
bundle is installed (it is in luban[serve]) its files are mounted under /docs/assets; without it the CDN page is
the fallback.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

ASSETS = "/docs/assets"


def bundle_path():
    try:
        from swagger_ui_bundle import swagger_ui_path
    except ImportError:
        return None
    path = swagger_ui_path
    return path if (path / "swagger-ui-bundle.js").is_file() else None


def install(app, title: str) -> None:
    """Add /docs (and its OAuth2 redirect page) to `app`, from local assets when the bundle is installed."""
    from fastapi.staticfiles import StaticFiles

    local = bundle_path()
    app.state.docs = {"title": f"{title} — API"}
    if local is not None:
        app.mount(ASSETS, StaticFiles(directory=str(local)), name="docs-assets")
        app.state.docs.update(swagger_js_url=f"{ASSETS}/swagger-ui-bundle.js",
                              swagger_css_url=f"{ASSETS}/swagger-ui.css",
                              swagger_favicon_url=f"{ASSETS}/favicon-32x32.png")
    app.include_router(router)


router = APIRouter(include_in_schema=False)


@router.get("/docs")
async def docs(request: Request):
    from fastapi.openapi.docs import get_swagger_ui_html

    return get_swagger_ui_html(openapi_url=request.app.openapi_url, oauth2_redirect_url="/docs/oauth2-redirect",
                               **request.app.state.docs)


@router.get("/docs/oauth2-redirect")
async def oauth2_redirect():
    from fastapi.openapi.docs import get_swagger_ui_oauth2_redirect_html

    return get_swagger_ui_oauth2_redirect_html()
