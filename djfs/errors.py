"""The exceptions djfs raises: one base class, so callers can catch everything of ours at once."""


class DjfsError(Exception):
    """Base of every error djfs raises on purpose."""


class DeclarationError(DjfsError):
    """A table definition is malformed; the message quotes the offending line."""


class QueryError(DjfsError):
    """A query failed: it names something the table does not have, or the server refused it.

    ``code`` is the server's error number when the server refused it (e.g. 1146: no such table)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class DataError(DjfsError, ValueError):
    """A value to insert does not fit its attribute (type, missing, unknown)."""


class DuplicateError(DjfsError):
    """A row with the same primary key exists already."""


class IntegrityError(DjfsError):
    """A foreign-key constraint would be violated."""


class BlobError(DjfsError, ValueError):
    """Bytes are not a valid serialized blob (truncated, wrong header, hostile lengths)."""


class StoreError(DjfsError, OSError):
    """An external store failed or is misconfigured."""


class MissingObjectError(StoreError):
    """An object the database refers to is not in its store."""


class CorruptObjectError(StoreError):
    """An object's bytes don't match its hash (in the store or in the cache)."""


class InvalidHashError(DjfsError, ValueError):
    """A hash read from the database is not a well-formed djfs hash: refused before any store is touched."""


class ConnectionLostError(DjfsError, ConnectionError):
    """The database can't be reached (or dropped us inside a transaction, which was rolled back)."""
