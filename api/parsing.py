"""The blueprints' request parser: a JSON body that cannot be read safely is a 400, never a 500."""

from __future__ import annotations

import flask_smorest
from webargs.flaskparser import FlaskParser


class SafeJSONParser(FlaskParser):
    """webargs' parser, refusing as invalid JSON what Python's ``json`` fails on with other errors
    than a ``JSONDecodeError``: nesting deeper than the recursion limit (``RecursionError``) and an
    integer of more than 4,300 digits (``ValueError``, Python's limit on converting strings to int,
    against quadratic-time parsing)."""

    def load_json(self, req, schema):
        try:
            return super().load_json(req, schema)
        except (RecursionError, ValueError) as error:
            self._handle_invalid_json_error(error, req)


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = SafeJSONParser()
