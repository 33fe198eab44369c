"""/docs: Swagger UI from local files, so the API description renders where the machine
has no internet (FastAPI's own /docs loads Swagger UI from a CDN); /openapi.json is the
schema either way."""

from __future__ import annotations

import functools
import importlib.util
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, Response

from serving.responses import ApiError, error_response

# Swagger UI's files as the swagger-ui-py package ships them (Swagger UI 5: OpenAPI 3.1,
# which FastAPI writes); found without importing the package, which we do not use.
SWAGGER_UI_PACKAGE = "swagger_ui"
SWAGGER_UI_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
DOCS_ASSETS = "/docs/assets"

router = APIRouter(include_in_schema=False)


@functools.cache
def swagger_ui_dir() -> Path | None:
    spec = importlib.util.find_spec(SWAGGER_UI_PACKAGE)
    if spec is None or spec.origin is None:
        return None
    folder = Path(spec.origin).parent / "static"
    return folder if all((folder / name).is_file() for name in SWAGGER_UI_FILES) else None


@router.get("/docs")
async def docs(request: Request) -> Response:
    app = request.app
    if swagger_ui_dir() is None:
        return error_response(
            503,
            "docs_unavailable",
            f"Swagger UI's files are not installed (package "
            f"swagger-ui-py, see requirements.lock); the schema is at {app.openapi_url}",
        )
    return get_swagger_ui_html(
        openapi_url=app.openapi_url,
        title=f"{app.title} - API docs",
        swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
        swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
        swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png",
    )


@router.get(DOCS_ASSETS + "/{name}")
async def docs_asset(name: str) -> Response:
    folder = swagger_ui_dir()
    if folder is None or name not in SWAGGER_UI_FILES:
        raise ApiError(404, "not_found", f"no docs asset {name!r}")
    return FileResponse(folder / name, media_type=SWAGGER_UI_FILES[name], headers={"Cache-Control": "max-age=86400"})
