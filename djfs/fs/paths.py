"""Primary-key values as directory names, and back.

A row's directory is ``<attribute>=<value>``.  The value is percent-encoded with ``urllib.parse.quote`` so that
nothing in it can break the tree: ``/``, ``%``, NUL, control characters and every non-ASCII byte (as UTF-8) are
escaped, all other printable ASCII is kept so names stay readable (``subject=m%2F12``, ``date=2024-01-31``).
``.`` and ``..`` can't arise as names because of the ``<attribute>=`` prefix.

Each value has exactly one spelling: a name is accepted only if re-encoding the value the database returns
for it gives the same name back (``id=007`` or ``s=%41`` are not aliases of ``id=7`` or ``s=A``), so a path
names one row and one row has one path.
"""

from __future__ import annotations

import datetime
import decimal
import string
import uuid
from typing import Any
from urllib.parse import quote, quote_from_bytes, unquote, unquote_to_bytes

from ..relational.heading import Attribute

#: printable ASCII that stays as is; '/' and '%' are escaped (so are controls, NUL and non-ASCII)
SAFE = "".join(c for c in string.punctuation + " " if c not in "/%")
MAX_NAME = 255  # bytes: the kernel's limit on one path component


class BadName(ValueError):
    """A path component that can't name anything: the caller answers ENOENT."""


def _is_binary(attribute: Attribute) -> bool:
    base = attribute.base_sql_type
    return base.startswith(("binary", "varbinary")) or base in ("tinyblob", "blob", "mediumblob", "longblob")


def _is_integer(attribute: Attribute) -> bool:
    return attribute.base_sql_type.split(" ")[0] in ("tinyint", "smallint", "mediumint", "int", "integer", "bigint")


def encode_value(attribute: Attribute, value: Any) -> str:
    """The directory-name spelling of one primary-key value as the database returns it."""
    if attribute.is_uuid and isinstance(value, (bytes, bytearray)) and len(value) == 16:
        return str(uuid.UUID(bytes=bytes(value)))
    if isinstance(value, (bytes, bytearray)):
        return quote_from_bytes(bytes(value), safe=SAFE)
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return quote(repr(value), safe=SAFE)
    if isinstance(value, (decimal.Decimal, datetime.date, datetime.time, datetime.timedelta)):
        return quote(str(value), safe=SAFE)
    return quote(str(value), safe=SAFE)


def component(attribute: Attribute, value: Any) -> str:
    return f"{attribute.name}={encode_value(attribute, value)}"


def decode_value(attribute: Attribute, text: str) -> Any:
    """The value to bind for a directory name's value part (checked later against what the database returns)."""
    if attribute.is_uuid:
        try:
            return uuid.UUID(unquote(text, errors="strict")).bytes
        except ValueError:
            raise BadName(text) from None
    if _is_binary(attribute):
        return unquote_to_bytes(text)
    if _is_integer(attribute) or attribute.type == "bool":
        if not text or not (text.isdigit() or (text[0] == "-" and text[1:].isdigit())) or not text.isascii():
            raise BadName(text)
        return int(text)
    try:
        return unquote(text, errors="strict")
    except UnicodeDecodeError:
        raise BadName(text) from None


def split_component(name: str, attribute: Attribute) -> Any:
    """Parse ``<attribute>=<value>`` for the expected attribute; raises BadName."""
    check_name(name)
    prefix = attribute.name + "="
    if not name.startswith(prefix):
        raise BadName(name)
    return decode_value(attribute, name[len(prefix):])


def check_name(name: str) -> None:
    """Refuse names the kernel could not have sent us sanely (undecodable bytes, too long, NUL)."""
    try:
        encoded = name.encode("utf-8", errors="strict")
    except UnicodeEncodeError:  # mfusepy decodes with surrogateescape: invalid UTF-8 arrives as surrogates
        raise BadName(name[:80]) from None
    if not encoded or len(encoded) > MAX_NAME or "\0" in name or "/" in name:
        raise BadName(name[:80])
