"""The web UI: static files shipped in the package, no CDN, no build step."""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter
from fastapi.responses import HTMLResponse, RedirectResponse

router = APIRouter(include_in_schema=False)


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/ui")


@router.get("/ui")
async def ui() -> HTMLResponse:
    page = files("castray").joinpath("web/index.html").read_text(encoding="utf-8")
    return HTMLResponse(page)
