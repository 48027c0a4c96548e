"""``/api/groups``: named sets of endpoints for multicast."""

from __future__ import annotations

from fastapi import APIRouter, status

from castray.models import Group, GroupMembers
from castray.server.deps import GroupsDep

router = APIRouter(prefix="/groups", tags=["groups"])


@router.post("", status_code=status.HTTP_201_CREATED)
async def create_group(body: Group, groups: GroupsDep) -> Group:
    return await groups.create(body)


@router.get("")
async def list_groups(groups: GroupsDep) -> list[Group]:
    return groups.all()


@router.get("/{name}")
async def get_group(name: str, groups: GroupsDep) -> Group:
    return groups.get(name)


@router.put("/{name}")
async def replace_group(name: str, body: GroupMembers, groups: GroupsDep) -> Group:
    return await groups.replace(name, body.members)


@router.delete("/{name}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_group(name: str, groups: GroupsDep) -> None:
    await groups.delete(name)
