"""``/api/transfers``, and the prototype's ``/api/file-transfers`` endpoints."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from pydantic import BaseModel, ConfigDict, Field

from castray.models import (
    Transfer,
    TransferAccepted,
    TransferCreate,
    TransferMode,
    TransferPage,
)
from castray.server.deps import AutopilotDep, TransfersDep

router = APIRouter(tags=["transfers"])


@router.post("/transfers", status_code=status.HTTP_202_ACCEPTED)
async def start_transfer(body: TransferCreate, transfers: TransfersDep) -> TransferAccepted:
    """Start sending a file; follow it with ``GET /api/transfers/{transfer_id}``."""
    started = await transfers.start(body)
    return TransferAccepted(transfer_id=started.id, status=started.status)


@router.get("/transfers")
async def list_transfers(
    transfers: TransfersDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> TransferPage:
    """Transfers, newest first, from the history (in-flight ones live)."""
    return await transfers.page(limit, offset)


@router.get("/transfers/{transfer_id}")
async def get_transfer(transfer_id: str, transfers: TransfersDep) -> Transfer:
    return await transfers.get(transfer_id)


@router.delete("/transfers/{transfer_id}")
async def cancel_transfer(transfer_id: str, transfers: TransfersDep) -> Transfer:
    """Cancel a transfer in flight and remove its partial files. Of an ended one, remove what
    its recipients kept for a resume (its copies and its history stay)."""
    return await transfers.cancel(transfer_id)


@router.post("/transfers/{transfer_id}/resume", status_code=status.HTTP_202_ACCEPTED)
async def resume_transfer(transfer_id: str, transfers: TransfersDep) -> TransferAccepted:
    """Run an interrupted, failed or partially failed transfer again for the recipients that
    did not complete it: each gets only the chunks it lacks. 409 if the source file changed."""
    resumed = await transfers.resume(transfer_id)
    return TransferAccepted(transfer_id=resumed.id, status=resumed.status)


# ---- the prototype's endpoints ------------------------------------------------------------


class ManualTransfer(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sender_id: str
    file_name: str
    recipients: list[str] = Field(min_length=1)


class ManualAccepted(BaseModel):
    success: bool = True
    transfer_id: str
    status: str
    message: str


class AutoToggle(BaseModel):
    model_config = ConfigDict(extra="forbid")

    node_id: str
    enabled: bool


class AutoToggled(BaseModel):
    success: bool = True
    node_id: str
    enabled: bool


class FileTransferStatus(BaseModel):
    active_transfers: list[Transfer]
    recent_transfers: list[Transfer]
    auto_transfer: dict[str, bool]


@router.post("/file-transfers/manual", status_code=status.HTTP_202_ACCEPTED)
async def manual_transfer(body: ManualTransfer, transfers: TransfersDep) -> ManualAccepted:
    mode = TransferMode.UNICAST if len(body.recipients) == 1 else TransferMode.MULTICAST
    started = await transfers.start(
        TransferCreate(
            source_node=body.sender_id, file=body.file_name, mode=mode, recipients=body.recipients
        )
    )
    return ManualAccepted(
        transfer_id=started.id,
        status=started.status.value,
        message=f"sending {body.file_name} from {body.sender_id} to {len(body.recipients)} node(s)",
    )


@router.get("/file-transfers/status")
async def file_transfer_status(
    transfers: TransfersDep, autopilot: AutopilotDep
) -> FileTransferStatus:
    recent = await transfers.page(20, 0)
    return FileTransferStatus(
        active_transfers=transfers.live(),
        recent_transfers=recent.transfers,
        auto_transfer=autopilot.enabled(),
    )


@router.post("/file-transfers/auto/toggle")
async def toggle_auto(body: AutoToggle, autopilot: AutopilotDep) -> AutoToggled:
    autopilot.set(body.node_id, body.enabled)
    return AutoToggled(node_id=body.node_id, enabled=body.enabled)
