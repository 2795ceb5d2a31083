"""The engine's errors. Each carries a stable ``code`` that the CLI prints and the API maps to problem+json."""

from __future__ import annotations


class BdiaError(Exception):
    """Base class: a request the engine refuses, with a one-line message."""

    code = "bdia_error"


class InvalidParameter(BdiaError, ValueError):
    code = "invalid_parameter"


class GammaUnstable(InvalidParameter):
    """γ^−(K−1) exceeds the configured bound: the inverted latent would be useless (docs/numerics.md)."""

    code = "gamma_unstable"


class UnknownModel(BdiaError, LookupError):
    code = "unknown_model"


class InvalidImage(BdiaError, ValueError):
    code = "invalid_image"


class InvalidInversion(BdiaError, ValueError):
    """Serialized inversion bytes that cannot be read back."""

    code = "invalid_inversion"


class Canceled(BdiaError):
    code = "canceled"
