"""The one error type of schema loading: a CQL file, ``system_schema`` rows or a schema change that cannot be used."""

from __future__ import annotations


class SchemaError(ValueError):
    """A schema source that cannot be turned into table definitions.

    ``source`` names where the schema came from (a file path, ``system_schema``, the commit log) and ``line``
    the line of a CQL file, when there is one; both are part of the message.
    """

    def __init__(self, message: str, source: str = "", line: int | None = None):
        self.source = source
        self.line = line
        self.reason = message
        where = f"{source}:{line}" if source and line is not None else source
        super().__init__(f"{where}: {message}" if where else message)
