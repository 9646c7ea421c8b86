"""One writer per folder: a lock file that says who holds it.

    from vesselseg.locks import FolderBusyError, hold_folder

    with hold_folder(folder, command="train"):
        ...  # no other vesselseg process writes into `folder` meanwhile

`hold_folder` creates FOLDER/.vesselseg.lock atomically (the complete file appears at once, or
not at all), holding JSON {"pid", "host", "command", "started", "token"}. While it exists, any
other `hold_folder` of that folder, from another process or from the same one, raises
`FolderBusyError`, whose message names the holder (command, pid, host) and since when. The lock
is removed when the block ends, also through an exception or Ctrl-C; a folder the lock had to
create is removed again if it is left empty.

A lock whose process is gone (killed: SIGKILL, a crash, a reboot) is *stale*: on the same host,
a pid that no longer runs (or now belongs to a process started after the lock) shows it, and the
next `hold_folder` takes the lock over with a note on stderr. A lock from another host is never
taken over, since its process cannot be checked from here: the message says which file to delete
once nothing runs there.

`lock_holder(folder)` reads the current holder without taking the lock (None when free).
"""
from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from .errors import VesselsegError

#: The lock file's name inside the held folder.
LOCK_NAME = ".vesselseg.lock"
#: A lock file that cannot be read (a writer killed while writing it, with no hard links
#: available) counts as stale after this many seconds; a writer needs microseconds.
UNREADABLE_GRACE_SECONDS = 60.0

#: Tokens of the locks this process holds (a lock with our pid but an unknown token was left by
#: an earlier process that had the same pid, as after a container restart).
_HELD: set[str] = set()


class FolderBusyError(VesselsegError):
    """Another process (or another part of this one) holds the folder's lock; the message names
    the holder and since when, and what to do."""

    def __init__(self, folder: str | Path, holder: dict, lock: str | Path):
        self.folder, self.holder, self.lock = Path(folder), holder, Path(lock)
        if "unreadable" in holder:
            who = f"another vesselseg process (its lock file is being written: {lock})"
            advice = f"try again; if nothing else runs, delete {lock}"
        else:
            who = (f"vesselseg {holder.get('command', '?')} (pid {holder.get('pid', '?')} on "
                   f"{holder.get('host', '?')}) since {holder.get('started', '?')}")
            advice = ("wait for it to finish or stop it" if holder.get("host") == _host()
                      else f"wait for it to finish; if nothing runs there any more, delete "
                           f"{lock}")
        super().__init__(f"{folder}: in use by {who}; {advice}")


@contextlib.contextmanager
def hold_folder(folder: str | Path, command: str) -> Iterator[Path]:
    """Hold `folder`'s lock for the block (creating the folder if needed); yields the lock
    file's path. Raises FolderBusyError while someone else holds it."""
    folder = Path(folder)
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    lock = folder / LOCK_NAME
    try:
        token = _acquire(folder, lock, command)
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    try:
        yield lock
    finally:
        _release(lock, token)
        if created:
            with contextlib.suppress(OSError):  # not empty: the block wrote something, keep it
                folder.rmdir()


def lock_holder(folder: str | Path) -> dict | None:
    """The lock's record ({"pid", "host", "command", "started", ...}) of `folder`, None when no
    one holds it, {"unreadable": reason} when the file cannot be read."""
    return _read(Path(folder) / LOCK_NAME)


# -- internals -------------------------------------------------------------------------------
def _host() -> str:
    return socket.gethostname()


def _acquire(folder: Path, lock: Path, command: str) -> str:
    token = secrets.token_hex(8)
    record = {"pid": os.getpid(), "host": _host(), "command": command,
              "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "token": token}
    for _ in range(5):
        if _create(lock, record):
            _HELD.add(token)
            return token
        holder = _read(lock)
        if holder is None:
            continue  # released in the meantime: try again
        if not _is_stale(holder, lock):
            raise FolderBusyError(folder, holder, lock)
        _take_over(folder, lock, holder)
    raise FolderBusyError(folder, _read(lock) or {"unreadable": "changing"}, lock)


def _create(lock: Path, record: dict) -> bool:
    """Create the lock file with its content in one step; False when it exists already."""
    data = (json.dumps(record, indent=1) + "\n").encode()
    tmp = lock.with_name(f"{lock.name}.{record['token']}.new")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        try:
            os.link(tmp, lock)  # fails if the lock exists: the complete file appears at once
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: exclusive create, then write
            pass
    finally:
        tmp.unlink(missing_ok=True)
    try:
        handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        os.write(handle, data)
        os.fsync(handle)
    finally:
        os.close(handle)
    return True


def _read(lock: Path) -> dict | None:
    try:
        text = lock.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        return {"unreadable": str(exc)}
    try:
        record = json.loads(text)
    except ValueError as exc:
        return {"unreadable": str(exc)}
    return record if isinstance(record, dict) else {"unreadable": "not a JSON object"}


def _is_stale(holder: dict, lock: Path) -> bool:
    """True when the holder's process is gone (see the module's docstring)."""
    if "unreadable" in holder:
        try:
            return time.time() - lock.stat().st_mtime > UNREADABLE_GRACE_SECONDS
        except FileNotFoundError:
            return False
    if holder.get("host") != _host():
        return False
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return True
    if pid == os.getpid():
        return holder.get("token") not in _HELD
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        pass
    except OSError:
        return False
    return _started_after(pid, holder.get("started"))


def _started_after(pid: int, started: str | None) -> bool:
    """True when process `pid` started after the lock was taken (the lock's own process is gone
    and its pid was reused); False when unknown (not Linux, no /proc)."""
    try:
        taken = datetime.fromisoformat(str(started)).timestamp()
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        ticks = int(fields[19])  # field 22 of stat: start time in clock ticks after boot
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK") > taken + 2.0
    except (OSError, ValueError, IndexError, StopIteration):
        return False


def _describe(holder: dict) -> str:
    if "unreadable" in holder:
        return "an unreadable lock file"
    return (f"vesselseg {holder.get('command', '?')} (pid {holder.get('pid', '?')}, since "
            f"{holder.get('started', '?')})")


def _take_over(folder: Path, lock: Path, holder: dict) -> None:
    """Remove a stale lock, unless another process replaced it meanwhile (then it is put back
    and the next attempt reports that holder)."""
    aside = lock.with_name(f"{lock.name}.stale-{secrets.token_hex(4)}")
    try:
        os.rename(lock, aside)
    except FileNotFoundError:
        return  # someone else removed it first
    try:
        if _read(aside) != holder:  # a fresh lock was moved aside: give it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, lock)
            return
    finally:
        aside.unlink(missing_ok=True)
    print(f"note: {folder}: taking over the lock of {_describe(holder)}, whose process no longer "
          f"runs", file=sys.stderr)


def _release(lock: Path, token: str) -> None:
    _HELD.discard(token)
    holder = _read(lock)
    if holder and holder.get("token") == token and holder.get("pid") == os.getpid():
        lock.unlink(missing_ok=True)
