"""A bad setting said in one line that starts with its variable's name, in the words of the
service's own messages rather than pydantic's ("PORT: 'abc' is not a whole number")."""

from __future__ import annotations

from pydantic import ValidationError

# What pydantic's own checks say, in the words of the old messages: "PORT: 'abc' is not a whole number".
PROBLEMS = {
    "int_parsing": "{input!r} is not a whole number",
    "int_from_float": "{input!r} is not a whole number",
    "float_parsing": "{input!r} is not a number",
    "finite_number": "{input!r} is not a finite number",
    "greater_than_equal": "{input} must be at least {ge}",
    "greater_than": "{input} must be more than {gt:g}",
    "less_than_equal": "{input} must be at most {le}",
    "literal_error": "{input!r} is not one of {expected}",
    "bool_parsing": "{input!r} is not one of true, false, 1, 0, yes, no, on, off",
}


def first_problem(invalid: ValidationError) -> str:
    """``VARIABLE: what is wrong``, for the first of pydantic's errors."""
    error = invalid.errors(include_url=False)[0]
    if error["type"] == "value_error":
        problem = str(error["ctx"]["error"])
    else:
        problem = PROBLEMS.get(error["type"], "{msg}").format(input=error["input"], msg=error["msg"], **error.get("ctx", {}))
    # A check of the whole (a model validator: loc empty) names its variables itself.
    return f"{str(error['loc'][0]).upper()}: {problem}" if error["loc"] else problem
