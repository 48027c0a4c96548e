"""``/api/pins``: library files kept present and verified on a set of nodes, present and
future (see ``castray.server.pins``)."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from castray.models import Pin, PinCreate, PinList
from castray.server.deps import PinsDep

router = APIRouter(prefix="/pins", tags=["pins"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    responses={200: {"description": "That file was pinned to those nodes already: that pin."}},
)
async def create_pin(body: PinCreate, pins: PinsDep, response: Response) -> Pin:
    """Keep a library file (or folder) on these nodes, and on every node that joins them."""
    pin, new = await pins.create(body)
    if not new:
        response.status_code = status.HTTP_200_OK
    return pin


@router.get("")
async def list_pins(pins: PinsDep) -> PinList:
    return PinList(pins=pins.all())


@router.get("/{pin_id}")
async def get_pin(pin_id: str, pins: PinsDep) -> Pin:
    """The pin with each node's copy: verified, receiving, pending, failed (why), waiting."""
    return pins.get(pin_id)


@router.post("/{pin_id}/verify")
async def verify_pin(pin_id: str, pins: PinsDep) -> Pin:
    """Read every copy's BLAKE3 from disk now; one that is not the pinned version is sent
    again."""
    return await pins.verify(pin_id)


@router.delete("/{pin_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_pin(pin_id: str, pins: PinsDep, remove_copies: bool = False) -> None:
    """Unpin: the copies stay where they are, unless ``remove_copies``."""
    await pins.delete(pin_id, remove_copies)
