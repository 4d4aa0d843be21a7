"""Helper processes that must not outlive the training process that started them.

Standard library only: a spawned process imports this module by name to run `die_with_parent` as its
initializer, and should not pay for importing torch to do so.
"""
import ctypes
import os
import signal

_PR_SET_PDEATHSIG = 1


def die_with_parent(parent_pid: int) -> None:
    """Ask Linux to SIGKILL this process when the thread that started it exits (no-op elsewhere).

    `parent_pid` is the starting process's pid, taken before the fork or spawn: if it died between
    then and the prctl call, the signal will never come, and the reparented process exits at once."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent_pid:
        os._exit(1)
