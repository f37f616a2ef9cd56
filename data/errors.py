"""Typed errors raised by data/ and model/; app/ maps them to HTTP status codes in one place."""


class SlicewiseError(Exception):
    status = 400


class InvalidInput(SlicewiseError):
    """The user sent something we cannot use (corrupt file, wrong shape, bad label value)."""

    status = 422


class NotFound(SlicewiseError):
    status = 404


class Conflict(SlicewiseError):
    """A save based on a stale version, or a state that forbids the request."""

    status = 409


class TooLarge(SlicewiseError):
    status = 413
