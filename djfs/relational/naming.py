"""DataJoint's names: CamelCase classes, snake_case tables, ``Master.Part`` for ``<master>__<part>``."""

from __future__ import annotations

import re

from ..errors import DeclarationError

CLASS_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
#: DataJoint's table names: an optional tier prefix, then snake_case; ``<master>__<part>`` for part tables
BASE_NAME = r"[a-z][a-z0-9]*(_[a-z][a-z0-9]*)*"
PART_NAME = rf"(?P<master>(?:#|__|_)?{BASE_NAME})__(?P<part>{BASE_NAME})"


def to_snake_case(name: str) -> str:
    """``TwoPhotonScan`` → ``two_photon_scan``; refuses names that aren't CamelCase."""
    if not CLASS_NAME.match(name):
        raise DeclarationError(f"table class name {name!r} must be CamelCase (letters and digits, "
                               "starting with a capital)")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def to_camel_case(name: str) -> str:
    """``two_photon_scan`` → ``TwoPhotonScan``."""
    return "".join(part.capitalize() for part in name.split("_") if part)


def class_name(table_name: str) -> str:
    """The DataJoint class name of a MySQL table name: ``__scan__roi`` → ``Scan.Roi``."""
    stripped = table_name.lstrip("#_")
    return ".".join(to_camel_case(part) for part in stripped.split("__"))


def master_of(table_name: str) -> str | None:
    """The master's table name of a part table (``__scan__roi`` → ``__scan``), None for other tables."""
    match = re.fullmatch(PART_NAME, table_name)
    return match.group("master") if match else None
