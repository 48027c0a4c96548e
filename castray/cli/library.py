"""Local files and folders named on the command line, into the server's library: ``send``
and ``pin`` take a path on this machine as well as a library name."""

from __future__ import annotations

from pathlib import Path

from castray.chunks import file_blake3
from castray.cli.output import err
from castray.cli.progress import transfer_progress
from castray.client import Client


def library_name(client: Client, file: str, quiet: bool) -> str:
    """Upload a local file unless the library has it already (same name, same BLAKE3); a
    local folder is uploaded whole, as ``NAME/``."""
    path = Path(file).expanduser()
    if path.is_dir():
        if not quiet:
            err.print(f"uploading folder {path} …", highlight=False, markup=False)
        with transfer_progress(err, len(path.name) + 1, disable=quiet) as progress:
            task = progress.add_task(f"{path.name}/", total=None, status="uploading")
            stored = client.upload_folder(path, lambda n: progress.advance(task, n))
            progress.update(task, status="uploaded")
        return stored.file
    if not path.is_file():
        return file
    known = {f.name: f.blake3 for f in client.files()}
    if path.name in known and known[path.name] == file_blake3(path):
        return path.name
    if not quiet:
        err.print(f"uploading {path} …", highlight=False, markup=False)
    with transfer_progress(err, len(path.name), disable=quiet) as progress:
        task = progress.add_task(path.name, total=path.stat().st_size, status="uploading")
        stored = client.upload(path, lambda n: progress.advance(task, n))
        progress.update(task, status="uploaded")
    if stored.replaced and not quiet:
        err.print(
            f"replaced the library's earlier {stored.file} (a different file of that name)",
            highlight=False,
            markup=False,
        )
    return stored.file
