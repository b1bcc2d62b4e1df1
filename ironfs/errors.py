"""Typed errors. Inside the code we raise these; the CLIs print `message` and `hint`
without a traceback and exit with `exit_code`. Anything else escaping is a bug."""


class IroncoreError(Exception):
    """An error a user can act on: a plain message plus the next step."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n{self.hint}"


class UsageError(IroncoreError):
    exit_code = 2


class WrongSecret(IroncoreError):
    """No key slot of the volume opens with the secret given."""

    exit_code = 3


class VolumeFormatError(IroncoreError):
    """volume.json, a commit or a pack is not what format 1 says it must be."""


class CorruptData(IroncoreError):
    """Stored bytes failed their hash or authentication check."""


class MissingData(IroncoreError):
    """A blob, pack or commit that the catalog names is not there."""


class DamagedLog(IroncoreError):
    """The commit log does not verify (a commit is missing, cut short or altered):
    nothing may be committed on top of it until it is repaired."""


class VolumeBusy(IroncoreError):
    """Another writer holds the volume."""

    exit_code = 4


class DiskFull(IroncoreError):
    """The destination ran out of space; the failed run's writes were removed."""

    exit_code = 5


class NotFound(IroncoreError):
    """A named set, snapshot or path does not exist."""


class Forbidden(IroncoreError):
    """Authenticated, but this account may not do that."""

    exit_code = 3
