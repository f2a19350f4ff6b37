"""Writing files without losing anything: guarded outputs, atomic writes and swaps, locks.

Every file edgeexit writes goes through this module, which keeps four promises
(docs/design.md, "Files and trust"; the README, *What edgeexit guarantees*):

- **Nothing that is not ours is replaced.** An output path that exists must be an edgeexit
  artifact of the same kind (a bundle for a bundle, a profile for a profile...) or an empty
  folder; the working directory, an input, and a folder holding an input are refused.
  ``check_output`` records what was there (``Output``), and the writers act on that at the
  moment of writing: a path that was new is *created* (a rename that refuses to replace, or
  a hard link), so whatever appeared there during the run is left as it is and refused; a
  path that held our artifact is checked again right before it is replaced.
- **No half-written file and no missing one.** Files are written to a temporary name beside
  the target and renamed over it; a directory is swapped with ``renameat2(RENAME_EXCHANGE)``
  where Linux offers it, so the path always holds the old or the new bundle. Elsewhere the
  swap takes two renames, and the old bundle, parked under a name this module knows, is put
  back by the next run if a crash fell between them.
- **No litter.** Temporary names carry the writer's process id; a later run removes those
  whose process is gone (``kill -9``), and nothing else.
- **One writer at a time.** ``locked`` takes an advisory lock on a bundle directory, so a
  second calibrate or export on it is refused instead of silently losing one result. A
  command that reads a bundle, measures and writes back holds it from its start to its
  write; an export onto an existing folder holds it from its start to the swap, and
  ``check_output`` refuses a locked folder at once.

Permissions follow the user's umask, as for any file they create; a replaced file keeps its
mode. Stdlib only: the device writes profiles through it.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import json
import os
import re
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgeexit.errors import EdgeExitError, OutputError

# Written into each kind of artifact, so that a path can be recognised as ours.
BUNDLE_FORMAT_PREFIX = "edgeexit.bundle/"
PROFILE_FORMAT_PREFIX = "edgeexit.profile/"
DEMO_MARKER = ".edgeexit-demo"  # a file in every folder `edgeexit demo` writes
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PNG_SOFTWARE = "edgeexit"  # the tEXt "Software" value of every plot edgeexit saves

_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<role>tmp|old)-(?P<pid>\d+)-[0-9a-f]{8}$")


# -- recognising our own artifacts ---------------------------------------------------------


def is_bundle(path: Path) -> bool:
    return _json_format(path / "manifest.json", BUNDLE_FORMAT_PREFIX)


def is_profile(path: Path) -> bool:
    return _json_format(path, PROFILE_FORMAT_PREFIX)


def is_demo_folder(path: Path) -> bool:
    """Marked as a demo's, or laid out like one written before the marker existed."""
    if (path / DEMO_MARKER).is_file():
        return True
    return is_bundle(path / "bundle") and is_profile(path / "profile.json")


def is_plot(path: Path) -> bool:
    """A PNG that edgeexit wrote (its tEXt chunks name edgeexit as the software)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head.startswith(PNG_MAGIC) and b"Software\x00" + PNG_SOFTWARE.encode() in head


def _json_format(path: Path, prefix: str) -> bool:
    try:
        if path.stat().st_size > 64 << 20:
            return False
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return False
    return isinstance(doc, dict) and str(doc.get("format", "")).startswith(prefix)


KINDS: dict[str, tuple[str, Callable[[Path], bool], bool]] = {
    # kind: (what it is called in messages, recogniser, is a directory)
    "bundle": ("an edgeexit bundle", is_bundle, True),
    "demo": ("an edgeexit demo folder", is_demo_folder, True),
    "profile": ("an edgeexit profile", is_profile, False),
    "plot": ("a plot edgeexit wrote", is_plot, False),
}


# -- guarding an output path ---------------------------------------------------------------


@dataclass(frozen=True)
class Output:
    """An output path ``check_output`` accepted, and whether something was there then.

    The writers (``replacing``, ``write_bytes_atomic``, ``Staged``, ``atomic_dir``) act on
    it at the moment of writing: where the path was new they create it and refuse whatever
    appeared meanwhile; where it held our own artifact they check that again, then replace
    it. A plain path given to a writer instead is replaced unchecked: only for files inside
    a folder edgeexit is writing (a bundle's temporary folder, a bundle it holds locked).
    """

    path: Path
    kind: str
    existed: bool
    inputs: tuple[str | os.PathLike, ...] = ()
    recognise: Callable[[Path], bool] | None = None

    def __fspath__(self) -> str:
        return os.fspath(self.path)

    def __str__(self) -> str:
        return str(self.path)

    def recheck(self) -> None:
        """Refuse, as ``check_output`` would, what is at the path now (a foreign file that
        appeared, a bundle swapped for a folder of the user's...)."""
        _checked(self.path, self.kind, self.inputs, self.recognise)


def check_output(
    path: str | os.PathLike,
    kind: str,
    *,
    inputs: tuple[str | os.PathLike, ...] = (),
    recognise: Callable[[Path], bool] | None = None,
) -> Output:
    """Refuse ``path`` as an output of ``kind`` unless writing it loses nothing; return it
    as an ``Output`` for the writers.

    Refused: the working directory or a folder holding it; an input, or a folder holding
    one; a symbolic link; an existing path that is not ``kind`` (a non-empty folder, a
    file of another sort); for a file, a missing parent folder; a folder another edgeexit
    process holds locked (``locked``: a calibrate writing into it), at once rather than
    after the work. ``recognise`` overrides the kind's recogniser (checkpoints are
    recognised by the torch side).
    """
    out = _checked(path, kind, inputs, recognise)
    existed = os.path.lexists(out)
    if existed and out.is_dir():
        with locked(out, "replace"):  # only a probe: atomic_dir takes it for its whole block
            pass
    return Output(out, kind, existed, tuple(inputs), recognise)


def _checked(
    path: str | os.PathLike,
    kind: str,
    inputs: tuple[str | os.PathLike, ...],
    recognise: Callable[[Path], bool] | None,
) -> Path:
    """``check_output``'s checks of what is at ``path`` now; the path, or OutputError."""
    what, known, is_dir = KINDS.get(kind, (f"an edgeexit {kind}", None, False))
    known = recognise or known
    out = Path(path)
    if str(path) == "":
        raise OutputError(f"output path is empty; give a path for the {kind}")
    resolved = _resolve(out)
    cwd = _resolve(Path.cwd())
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(
            f"output {out} is the working directory or holds it; writing there would "
            f"replace it: give a new path for the {kind}"
        )
    if out.name in ("", ".", ".."):
        raise OutputError(f"output path {str(path)!r} names no new {kind}; give a new path")
    for given in inputs:
        source = _resolve(Path(given))
        if source == resolved or resolved in source.parents:
            raise OutputError(
                f"output {out} is an input of this command or holds one ({given}); "
                f"give another path for the {kind}"
            )
    ancestor = next((a for a in out.absolute().parents if a.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise OutputError(f"{ancestor} is a file, not a folder; give another path for the {kind}")
    if out.is_symlink():
        raise OutputError(f"output {out} is a symbolic link; give the real path for the {kind}")
    if not out.exists():
        if not is_dir and not out.parent.is_dir():
            raise OutputError(f"folder {out.parent} does not exist; create it first")
        return out
    if is_dir and out.is_dir() and not any(out.iterdir()):
        return out  # an empty folder: nothing to lose
    if is_dir and not out.is_dir():
        raise OutputError(f"output {out} is a file, not {what}; give a new path for the {kind}")
    if not is_dir and out.is_dir():
        raise OutputError(f"output {out} is a directory; expected a file path for the {kind}")
    if known is None or not known(out):
        raise OutputError(
            f"output {out} exists and is not {what}; edgeexit replaces only its own "
            f"artifacts: give a new path, or move it away yourself"
        )
    return out


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (OSError, RuntimeError):  # a symlink loop: compare the path as written
        return path.absolute()


# -- temporary names and their clean-up ----------------------------------------------------


def temp_name(target: Path, role: str = "tmp") -> Path:
    """A name beside ``target`` that ``clean_stale`` recognises as this process's."""
    return target.with_name(f".{target.name}.{role}-{os.getpid()}-{secrets.token_hex(4)}")


def clean_stale(target: Path) -> None:
    """Remove what a killed edgeexit process left beside ``target`` (temporaries whose
    process is gone), and put back a bundle parked by an interrupted two-rename swap."""
    parent = target.parent
    try:
        entries = list(parent.iterdir())
    except OSError:
        return
    for entry in entries:
        match = _TEMP.match(entry.name)
        if match is None or match["name"] != target.name or _alive(int(match["pid"])):
            continue
        if match["role"] == "old" and not os.path.lexists(target):
            with contextlib.suppress(OSError):
                os.rename(entry, target)  # the swap died between its renames: undo it
            continue
        _remove(entry)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # someone else's live process
    return True


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink()


# -- atomic files --------------------------------------------------------------------------


@contextlib.contextmanager
def replacing(target: str | os.PathLike | Output, *, what: str = "file") -> Iterator[Path]:
    """A temporary path beside ``target`` for the block to write; put in place when the
    block succeeds (a crash leaves the old file or the new one), removed otherwise.

    An ``Output`` (``check_output``) that was new is created, never replaced: a file that
    appeared there during the run is refused and left as it is; one that held our artifact
    is checked again, then replaced. A plain path is replaced (a file inside a folder
    edgeexit is writing). An existing file keeps its permission bits; a new one gets the
    umask's. OS errors (full disk, read-only, permissions) become one OutputError."""
    path = _path_of(target)
    clean_stale(path)
    tmp = temp_name(path)
    try:
        yield tmp
        _put(tmp, target, what)
    except OSError as err:
        raise OutputError(f"cannot write {what} {path}: {os_reason(err)}") from err
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_bytes_atomic(
    target: str | os.PathLike | Output, data: bytes, *, what: str = "file"
) -> None:
    """Write ``data`` to ``target`` atomically (``replacing``)."""
    with replacing(target, what=what) as tmp:
        _write_synced(tmp, data)


def _write_synced(path: Path, data: bytes) -> None:
    """A new file holding ``data``, on disk when this returns."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _path_of(target: str | os.PathLike | Output) -> Path:
    return target.path if isinstance(target, Output) else Path(target)


def _put(tmp: Path, target: str | os.PathLike | Output, what: str) -> None:
    """Move the written file ``tmp`` to ``target``: created if the ``Output`` was new (or
    has gone since), else replaced, keeping the old file's permission bits."""
    path = _path_of(target)
    if isinstance(target, Output):
        if not target.existed or not os.path.lexists(path):
            create(tmp, path, what)  # whatever is there now appeared during the run
            return
        target.recheck()  # still ours: a file of the user's put there meanwhile is refused
    if path.is_file():
        os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)


def create(new: Path, path: Path, what: str) -> None:
    """Rename ``new`` (a file or folder) to ``path`` only if nothing is there, in one step:
    OutputError, and nothing touched, if anything appeared there since it was checked."""
    try:
        if _renameat2(new, path, _RENAME_NOREPLACE):
            return
        if new.is_dir():
            # rename(2) moves a folder only onto nothing or an empty folder: nothing to lose
            if os.path.lexists(path):
                raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(path))
            os.rename(new, path)
        else:
            os.link(new, path)  # fails with EEXIST whatever is there (POSIX, NTFS)
            os.unlink(new)
    except FileExistsError as err:
        raise OutputError(
            f"{path} appeared while edgeexit was working; it was left as it is and no "
            f"{what} was written: move it away or give another path"
        ) from err


class Staged:
    """A file written under a temporary name now, and put in place in two steps around
    the step it must follow: ``claim`` (which can fail: the path taken meanwhile) before
    it, ``commit`` (which cannot) after it; ``discard`` undoes both instead.

    A new ``Output`` is created by ``claim`` (so a file that appeared is refused before the
    step); one that held our artifact is checked by ``claim`` and replaced by ``commit``."""

    def __init__(
        self, target: str | os.PathLike | Output, data: bytes, *, what: str = "file"
    ) -> None:
        self.target, self.what = target, what
        self.path = _path_of(target)
        self.tmp = temp_name(self.path)
        self._created: int | None = None  # the inode created at the path by claim
        try:
            _write_synced(self.tmp, data)
        except OSError as err:
            self.discard()
            raise OutputError(f"cannot write {what} {self.path}: {os_reason(err)}") from err

    def claim(self) -> None:
        target = self.target
        if not isinstance(target, Output):
            return
        if target.existed and os.path.lexists(self.path):
            target.recheck()  # replaced by commit: still ours
            return
        inode = os.stat(self.tmp).st_ino
        try:
            create(self.tmp, self.path, self.what)
        except OSError as err:
            raise OutputError(f"cannot write {self.what} {self.path}: {os_reason(err)}") from err
        self._created = inode

    def commit(self) -> None:
        if self._created is None:
            os.replace(self.tmp, self.path)

    def discard(self) -> None:
        with contextlib.suppress(OSError):
            os.unlink(self.tmp)
        if self._created is not None:  # created by claim: ours to remove, if still ours
            with contextlib.suppress(OSError):
                if os.lstat(self.path).st_ino == self._created:
                    os.unlink(self.path)
            self._created = None


def write_json_atomic(target: str | os.PathLike | Output, doc: Any, *, what: str = "file") -> None:
    """``doc`` as strict JSON (no NaN or Infinity, which strict parsers reject)."""
    write_bytes_atomic(target, (dumps_json(doc) + "\n").encode(), what=what)


def dumps_json(doc: Any) -> str:
    try:
        return json.dumps(doc, indent=2, allow_nan=False)
    except ValueError as err:  # a NaN or an infinity reached an output: a bug, not input
        raise EdgeExitError(f"refusing to write a non-finite number as JSON: {err}") from err


# -- atomic directories --------------------------------------------------------------------


@contextlib.contextmanager
def atomic_dir(
    out_dir: str | os.PathLike, kind: str, *, inputs: tuple[str | os.PathLike, ...] = ()
) -> Iterator[Path]:
    """Yield a new temporary folder that replaces ``out_dir`` only if the block succeeds.

    ``out_dir`` is checked (``check_output``) before and again at the swap. A folder that
    was there is locked (``locked``) from the start to the swap: a calibrate writing into
    it refuses this at once, and one starting meanwhile is refused; one that was not there
    is created, so a folder that appeared meanwhile is refused and left as it is. A
    failure, ``Ctrl-C`` included, leaves ``out_dir`` as it was and removes the temporary
    folder and any parent folders made for it.
    """
    clean_stale(Path(out_dir))  # a swap a crash interrupted: the old folder put back first
    out = check_output(out_dir, kind, inputs=inputs)
    with locked(out.path, "replace") if out.existed else contextlib.nullcontext() as held:
        yield from _into_dir(out, held)


def _into_dir(out: Output, held: Held | None) -> Iterator[Path]:
    """``atomic_dir``'s body, with the old folder (if any) locked by the caller."""
    path = out.path
    made = _make_parents(path.parent)
    tmp = temp_name(path)
    try:
        os.mkdir(tmp)  # 0o777 less the umask, like any folder the user makes
        yield tmp
        _place_dir(tmp, out, held)
    except OSError as err:
        raise OutputError(f"cannot write {out.kind} {path}: {os_reason(err)}") from err
    except BaseException:
        for folder in reversed(made):
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _place_dir(tmp: Path, out: Output, held: Held | None) -> None:
    """Put the written folder ``tmp`` at ``out``: created if it was new (or has gone since),
    else swapped with the old one, which must still be ours and the one locked (``held``)."""
    path = out.path
    if held is None or not os.path.lexists(path):
        create(tmp, path, out.kind)  # whatever is there now appeared during the run
        return
    out.recheck()
    held.check()
    _swap(tmp, path)


def _make_parents(folder: Path) -> list[Path]:
    """Make ``folder`` and its missing parents; return those made, outermost first."""
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    made = []
    try:
        for each in reversed(missing):
            os.mkdir(each)
            made.append(each)
    except OSError as err:
        for each in reversed(made):
            with contextlib.suppress(OSError):
                each.rmdir()
        raise OutputError(f"cannot make folder {each}: {os_reason(err)}") from err
    return made


def _swap(new: Path, out: Path) -> None:
    """Put ``new`` at ``out`` and the old ``out`` at ``new`` (then removed by the caller)."""
    if exchange(new, out):
        return
    parked = temp_name(out, "old")
    os.rename(out, parked)  # a crash here: clean_stale renames it back on the next run
    os.rename(new, out)
    shutil.rmtree(parked, ignore_errors=True)


_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux renameat2); False where the platform cannot."""
    return _renameat2(a, b, _RENAME_EXCHANGE)


def _renameat2(a: Path, b: Path, flags: int) -> bool:
    """Linux ``renameat2(a, b, flags)``: True when done, False where the platform, the
    kernel or the filesystem lacks it; any other failure is raised (FileExistsError for
    ``RENAME_NOREPLACE`` onto an existing path)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # glibc < 2.28, musl
        return False
    renameat2.argtypes = (
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    )
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):  # kernel or filesystem lacks it
        return False
    raise OSError(code, os.strerror(code), str(b))


# -- locks ---------------------------------------------------------------------------------


class Held:
    """The lock ``locked`` holds on a folder. ``check``, right before a write into the
    folder, refuses a path that no longer names the folder locked: replaced by a process
    that ignores the lock, or with a folder holding it (a demo folder swapped around its
    bundle), so that a result measured on one bundle is never written into another."""

    def __init__(self, folder: Path, identity: tuple[int, int] | None) -> None:
        self.folder, self.identity = folder, identity

    def check(self) -> None:
        if self.identity is None:  # no locks on this platform
            return
        try:
            now = os.stat(self.folder)
        except OSError:
            now = None
        if now is None or (now.st_dev, now.st_ino) != self.identity:
            raise OutputError(
                f"{self.folder} was replaced by another process during this run; nothing was "
                "written to it: run again"
            )


@contextlib.contextmanager
def locked(folder: str | os.PathLike, action: str) -> Iterator[Held]:
    """Hold an advisory lock on ``folder`` (a bundle) for ``action``, or refuse at once
    when another edgeexit process holds it. Where there is no ``fcntl`` (Windows), no lock.
    """
    folder = Path(folder)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield Held(folder, None)
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError as err:
        raise OutputError(f"cannot open {folder} to {action} it: {os_reason(err)}") from err
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise OutputError(
                f"{folder} is being changed by another edgeexit process; run one export or "
                f"calibrate on it at a time, and try again when that one finishes"
            ) from err
        opened = os.fstat(fd)
        held = Held(folder, (opened.st_dev, opened.st_ino))
        held.check()  # replaced between the open and the lock
        yield held
    finally:
        os.close(fd)


def os_reason(err: OSError) -> str:
    """'No space left on device' rather than '[Errno 28] No space left on device: path'."""
    return err.strerror or str(err) or type(err).__name__
