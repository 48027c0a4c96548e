"""The web UI: static files shipped in the package, no CDN, no build step."""

from __future__ import annotations

from importlib.resources import files
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui")
async def ui() -> HTMLResponse:
    page = files("castray").joinpath("web/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page, headers={"Cache-Control": "no-cache"})


class _Assets(StaticFiles):
    """Static files that browsers revalidate, so an upgraded CastRay serves its new scripts."""

    def file_response(self, *args: Any, **kwargs: Any) -> Response:
        response = super().file_response(*args, **kwargs)
        response.headers["Cache-Control"] = "no-cache"
        return response


def mount(app: FastAPI) -> None:
    """The page, and its scripts and styles under ``/ui/assets``."""
    app.include_router(router)
    assets = _Assets(packages=[("castray", "web")])
    app.mount("/ui/assets", assets, name="ui-assets")
