"""Write a file so that a crash or Ctrl-C never leaves a half-written one
under its final name: write a temp file in the same folder, then rename.

The file gets the permissions an ordinary open() would give it (0o666 less
the umask), not the owner-only 0o600 of the temp file it starts as."""
import os
import tempfile
from contextlib import contextmanager


def current_umask():
    """The process's umask. Read from /proc on Linux; elsewhere set and
    restored at once (os.umask has no read-only form)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_write(path, mode="wb"):
    """with atomic_write(path, "w") as f: ... -> path appears only once f is complete."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=os.path.splitext(path)[1])
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o666 & ~current_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
