"""Attribute values on their way into and out of the database: the one place that knows the types.

``encode`` turns a Python value into what the driver binds for an INSERT (checked against the attribute's
type); ``decode`` turns what the server sent back into the Python value a fetch returns. A new attribute type
adds one branch to each; tables and fetches call nothing else.
"""

from __future__ import annotations

import datetime
import decimal
import json
import math
import numbers
import re
import uuid
from typing import Any, Callable

import numpy as np

from .. import blob
from .condition import sql_value
from ..errors import DataError, QueryError
from .heading import Attribute


class _Default:
    """Marks a value the INSERT leaves to the column's DEFAULT (``None`` for a NOT NULL attribute with one)."""

    def __repr__(self) -> str:
        return "DEFAULT"


DEFAULT = _Default()


def encode(attribute: Attribute, value: Any, where: str, external_hash: Callable[[], str]) -> Any:
    """One value as the driver binds it (or ``DEFAULT``), checked against its attribute's type.

    ``where`` names the table and attribute in errors; ``external_hash`` gives the hash of the value when
    the attribute is external (the insert has serialized and uploaded it already)."""
    if value is None or (isinstance(value, float) and math.isnan(value) and attribute.nullable):
        if attribute.nullable:
            return None
        if value is None and attribute.default is not None:
            return DEFAULT  # as DataJoint: None for an attribute with a default means the default
        raise DataError(f"{where} can't be NULL")
    if attribute.is_external or attribute.datajoint_kind:  # DataJoint's kinds: djfs.objects.external_dj encoded it
        return external_hash()
    if attribute.is_blob:
        return blob.pack(value)
    if attribute.is_json:
        try:
            return json.dumps(value, default=_json_default)
        except (TypeError, ValueError) as error:
            raise DataError(f"{where}: value is not JSON-serializable: {error}") from None
    if attribute.is_uuid:
        try:
            return sql_value(attribute, value)
        except QueryError:
            raise DataError(f"{where}: {value!r} is not a UUID") from None
    if isinstance(value, np.generic):
        value = value.item()
    base = attribute.base_sql_type
    if attribute.type == "bool":
        if not isinstance(value, (bool, int, np.bool_)):
            raise DataError(f"{where}: expected a bool, got {type(value).__name__}")
        return int(value)
    if re.match(r"^(tiny|small|medium|big)?int", base):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise DataError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if base.startswith(("float", "double", "real", "decimal")):
        if isinstance(value, bool) or not isinstance(value, (numbers.Real, decimal.Decimal)):
            raise DataError(f"{where}: expected a number, got {value!r}")
        if isinstance(value, float) and math.isnan(value):
            raise DataError(f"{where}: NaN can't be stored in a non-nullable attribute")
        return value
    if base.startswith(("char", "varchar", "enum", "tinytext", "text", "mediumtext", "longtext")):
        if not isinstance(value, str):
            raise DataError(f"{where}: expected a string, got {type(value).__name__}")
        return value
    if base.startswith(("date", "time", "year")):
        if not isinstance(value, (str, int, datetime.date, datetime.time, datetime.timedelta, np.datetime64)):
            raise DataError(f"{where}: expected a date/time, got {type(value).__name__}")
        if isinstance(value, np.datetime64):
            value = value.astype("datetime64[us]").item()
        return value
    return value


def decode(attribute: Attribute, value: Any, objects: dict[str, Any], squeeze: bool = False) -> Any:
    """One fetched value as Python sees it; ``objects`` maps the hashes of external values to their values
    (fetched beforehand, all of one query's at once)."""
    if value is None:
        return None
    if attribute.is_blob:
        return blob.unpack(value, squeeze=squeeze)
    if attribute.is_external:
        return objects[value]
    if attribute.is_uuid:
        return uuid.UUID(bytes=bytes(value))
    if attribute.is_json:
        return json.loads(value)
    return value


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (datetime.date, datetime.time, uuid.UUID, decimal.Decimal)):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")
