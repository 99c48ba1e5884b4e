"""The errors of reading data files: one class per thing that can be wrong with a file (all user errors)."""

from __future__ import annotations

from aff_app.errors import AFFError


# -- errors ----------------------------------------------------------------------
class DataError(AFFError, ValueError):
    """A file or upload that cannot be turned into a trajectory (message says why)."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """The data file does not exist."""


class UnsupportedFormatError(DataError):
    """A file extension or format name the loaders do not handle."""


class MissingKeyError(DataError):
    """A key (array, info entry, calculator result) the file does not have."""


class PickledDataError(DataError):
    """An ``.npz`` holding pickled Python objects (never unpickled: unsafe)."""


class FrameSelectionError(DataError):
    """A frame selection that cannot be parsed or selects no frames."""


class LabelSetError(DataError):
    """A label set the file does not provide."""


class EmptyFileError(DataError):
    """A file or upload of zero bytes."""


class UploadTooLargeError(DataError):
    """An upload above :data:`MAX_UPLOAD_MB`."""


class WrongFormatError(DataError):
    """Content that does not match the format its extension (or ``fmt``) names."""


class CorruptFileError(DataError):
    """A file of the right kind that is truncated or damaged."""


class UnexpectedReadError(DataError):
    """A parser failed in a way no check foresaw (the last line of defence; the fuzz tests expect none)."""


class NonFiniteDataError(DataError):
    """NaN or infinite positions, energies or forces (the message names the first frame and atom)."""


#: What :func:`load_trajectory` does with frames holding NaN/inf: refuse them or drop those frames.
NONFINITE_POLICIES: tuple[str, ...] = ("error", "drop")


