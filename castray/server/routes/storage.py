"""``/api/storage``: what each endpoint keeps of what it received, and sweeps by
``received_retention`` and ``storage_quota_bytes``."""

from __future__ import annotations

from fastapi import APIRouter

from castray.models import StorageReport
from castray.server.deps import StorageDep

router = APIRouter(tags=["storage"])


@router.get("/storage", response_model=StorageReport)
async def get_storage(storage: StorageDep) -> StorageReport:
    """Usage per endpoint (counted by each endpoint now), the limits, the latest removals."""
    return await storage.report()


@router.post("/storage/sweep", response_model=StorageReport)
async def sweep_storage(storage: StorageDep) -> StorageReport:
    """Sweep now instead of at the next ``storage_sweep_interval``: received copies past
    ``received_retention``, then the oldest past ``storage_quota_bytes``, are removed."""
    return await storage.sweep()
