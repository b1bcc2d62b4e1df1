"""Named crash points for crash tests: when IRONCORE_CRASH_AT names a point
(optionally `name:N` for its N-th passage), the process SIGKILLs itself there.
Inert otherwise; the check is one dictionary lookup."""
import os
import signal

_spec = os.environ.get("IRONCORE_CRASH_AT", "")
_name, _, _count = _spec.partition(":")
_left = int(_count or 1)


def crashpoint(name: str) -> None:
    global _left
    if name == _name:
        _left -= 1
        if _left <= 0:
            os.kill(os.getpid(), signal.SIGKILL)


def armed(name: str) -> bool:
    """True when a crash is set for this point (tests make timing-dependent work settle first)."""
    return name == _name
