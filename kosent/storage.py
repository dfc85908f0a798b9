"""Every path or URI kosent reads or writes: a local path, or object storage (``s3://bucket/key``, ``gs://``).

Multi-node runs keep their run folders, checkpoints, manifests and sweeps on object storage; one process
writes there and another, on another node, reads. Everything here goes through ``pyarrow.fs`` as Ray's own
storage does, so credentials and endpoint come from the same environment (``AWS_*``). A location without
a scheme is a local path. ``pyarrow.fs`` is imported where a file is touched, not at import: every entry point
imports :func:`is_uri` (through ``kosent.config``), and most never open storage.

    is_uri, absolute, join      naming a location
    read_text, write_text       one small file (JSON, a manifest), local or in storage
    open_input                  a file to read in chunks or at random (data files, Parquet)
    exists, kind, is_empty, list_files, delete_file
    check_writable              write, read back and delete a probe file: fail before a run starts
    copy_files                  a file or a folder (a checkpoint, a run's outputs), anywhere to anywhere
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal

if TYPE_CHECKING:
    import pyarrow.fs

Skip = Callable[[str], bool]
"""``skip(relative_path)`` returning True leaves that file out of a copy (``"training_state/state.json"``)."""


def is_uri(location: str | os.PathLike) -> bool:
    """``s3://bucket/key`` and the like (anything with a scheme); a plain path is local."""
    return "://" in str(location)


def absolute(location: str | os.PathLike) -> str:
    """A URI unchanged; a local path made absolute (Ray jobs and workers change their working directory)."""
    if is_uri(location):
        return str(location)
    return str(Path(location).expanduser().resolve())


def join(base: str | os.PathLike, *parts: str) -> str:
    """``base/part/...`` for a URI or a local path."""
    if is_uri(base):
        return "/".join([str(base).rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(base, *parts))


def filesystem(location: str | os.PathLike) -> tuple[pyarrow.fs.FileSystem, str]:
    """The pyarrow filesystem that holds ``location``, and the path within it (local paths made absolute)."""
    import pyarrow.fs

    if is_uri(location):
        return pyarrow.fs.FileSystem.from_uri(str(location))
    return pyarrow.fs.LocalFileSystem(), absolute(location)


def read_text(location: str | os.PathLike) -> str:
    """A local file or an object in storage, as UTF-8 text; FileNotFoundError names the location."""
    if not is_uri(location):
        return Path(location).read_text(encoding="utf-8")
    fs, path = filesystem(location)
    try:
        with fs.open_input_stream(path) as f:
            return f.read().decode("utf-8")
    except FileNotFoundError as e:
        raise FileNotFoundError(f"{location}: not found") from e


def open_input(location: str | os.PathLike) -> BinaryIO:
    """A seekable binary file to read (a context manager): large data files are read through this in chunks,
    never whole, and Parquet reads only the row groups it needs."""
    if not is_uri(location):
        return open(location, "rb")
    fs, path = filesystem(location)
    return fs.open_input_file(path)


def write_text(location: str | os.PathLike, text: str) -> None:
    """Write a local file (making its folder) or an object in storage."""
    if not is_uri(location):
        Path(location).parent.mkdir(parents=True, exist_ok=True)
        Path(location).write_text(text, encoding="utf-8")
        return
    fs, path = filesystem(location)
    with fs.open_output_stream(path) as f:
        f.write(text.encode("utf-8"))


def kind(location: str | os.PathLike) -> Literal["file", "folder"] | None:
    """What is at ``location``: a file, a folder (in storage: a non-empty prefix), or nothing (None)."""
    import pyarrow.fs

    fs, path = filesystem(location)
    found = fs.get_file_info(path).type
    if found == pyarrow.fs.FileType.File:
        return "file"
    if found == pyarrow.fs.FileType.Directory:
        return "folder"
    return None


def exists(location: str | os.PathLike) -> bool:
    """A local path, or an object / a non-empty prefix in storage."""
    return kind(location) is not None


def is_empty(location: str | os.PathLike) -> bool:
    """A folder with nothing in it, or nothing there at all."""
    import pyarrow.fs

    fs, path = filesystem(location)
    return not fs.get_file_info(pyarrow.fs.FileSelector(path, allow_not_found=True))


def list_files(location: str | os.PathLike) -> list[str]:
    """The files directly in the folder ``location`` (not in its subfolders), sorted by name, as locations."""
    import pyarrow.fs

    fs, path = filesystem(location)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(path.rstrip("/"), allow_not_found=True))
    names = sorted(i.base_name for i in infos if i.type == pyarrow.fs.FileType.File)
    return [join(location, name) for name in names]


def delete_file(location: str | os.PathLike) -> None:
    """Remove a file if it is there (local or in storage)."""
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
    elif exists(location):
        fs, path = filesystem(location)
        fs.delete_file(path)


def check_writable(location: str | os.PathLike) -> None:
    """Create the folder ``location`` and write, read back and delete a probe file there; raise what failed.

    A run that cannot write its checkpoints should fail before its workers start, not after an epoch."""
    fs, path = filesystem(location)
    fs.create_dir(path, recursive=True)
    probe = path.rstrip("/") + f"/.kosent-write-probe-{os.getpid()}-{time.time_ns()}"
    with fs.open_output_stream(probe) as f:
        f.write(b"ok")
    with fs.open_input_stream(probe) as f:
        if f.read() != b"ok":
            raise OSError(f"{location}: a probe file read back differently")
    fs.delete_file(probe)


def copy_files(source: str | os.PathLike, dest: str | os.PathLike, skip: Skip | None = None) -> list[str]:
    """Copy a file to ``dest``, or every file under the folder ``source`` to the same relative place under
    ``dest``; either may be a URI (upload, download, or a copy within one side).

    ``skip(relative_path)`` returning True leaves a file of a folder out (a checkpoint's ``training_state/``,
    say). Files are streamed in 1 MiB chunks, never read whole; files already at ``dest`` are overwritten.
    Returns the locations written. A missing source, or an empty folder, is a FileNotFoundError naming it.
    """
    import pyarrow.fs

    src_fs, root = filesystem(source)
    dst_fs, dest_root = filesystem(dest)
    if src_fs.get_file_info(root).type == pyarrow.fs.FileType.File:
        pairs = [(root, dest_root, str(dest))]
    else:
        root = root.rstrip("/")
        infos = src_fs.get_file_info(pyarrow.fs.FileSelector(root, recursive=True, allow_not_found=True))
        pairs = []
        for info in sorted(infos, key=lambda i: i.path):
            rel = info.path[len(root) + 1:]
            if info.type == pyarrow.fs.FileType.File and not (skip is not None and skip(rel)):
                pairs.append((info.path, f"{dest_root.rstrip('/')}/{rel}", join(dest, rel)))
        if not infos:
            raise FileNotFoundError(f"{source}: nothing there to copy")
    for src_path, dest_path, _ in pairs:
        if isinstance(dst_fs, pyarrow.fs.LocalFileSystem):
            Path(dest_path).parent.mkdir(parents=True, exist_ok=True)
        with src_fs.open_input_stream(src_path) as src, dst_fs.open_output_stream(dest_path) as out:
            shutil.copyfileobj(src, out, 1 << 20)
    return [named for _, _, named in pairs]
