"""Whole folders as one transfer: a folder travels as one bundle (an uncompressed tar), so ten
thousand small files cost one stream, not ten thousand round trips; the bundle is verified
whole (BLAKE3) like any file, so every file in it is, and each recipient unpacks it with every
file committed atomically.

``rules`` says what a bundle may hold (checked where it is made, uploaded and unpacked),
``bundle`` makes and indexes one, ``unpack`` puts one in place on a recipient.
"""

from castray.folders.bundle import FolderIndex, check_folder_name, index, pack
from castray.folders.unpack import unpack

BUNDLE_SUFFIX = ".castray-folder"
"""The name a bundle has on a recipient until it is unpacked (after a leading dot)."""

__all__ = ["BUNDLE_SUFFIX", "FolderIndex", "check_folder_name", "index", "pack", "unpack"]
