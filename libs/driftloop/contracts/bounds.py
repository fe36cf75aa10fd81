"""Bounded types for what clients send over HTTP: every path, query and body number and name is declared with one
of these, so an out-of-range or hostile value is a 422 naming the parameter (and the OpenAPI says the bounds),
never an overflow in the database or a traversal in a key.

Numbers fit the columns they are looked up in: versions, ids and row indexes are PostgreSQL ``integer`` (32-bit
signed), so their bound is 2**31 - 1 (a larger one could not exist); names are what a stream, model,
alias, subject or run id may be: 1..200 printable characters, no path separator, not starting with a dot, no
control character and no U+FFFD (what invalid UTF-8 in a URL decodes to); free text is anything but NUL (which
PostgreSQL cannot store), bounded in length where it is declared.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field, StringConstraints

INT32_MAX = 2**31 - 1
NAME_MAX_LENGTH = 200
TEXT_MAX_LENGTH = 10_000

# A character class of what a name may not hold: control characters, DEL, path separators, U+FFFD.
NOT_IN_NAME = "\x00-\x1f\x7f/\\\\\ufffd"
NAME_PATTERN = f"^[^{NOT_IN_NAME}.][^{NOT_IN_NAME}]*$"
TEXT_PATTERN = "^[^\x00]*$"

# 0, 1, 2, ... (counts, indexes, "keep this many").
Count = Annotated[int, Field(ge=0, le=INT32_MAX)]
# 1, 2, ... (version numbers, ids given by a database sequence).
PositiveInt = Annotated[int, Field(ge=1, le=INT32_MAX)]
# A stream, model, alias, subject, run or dataset-version name in a path or a body.
Name = Annotated[str, StringConstraints(min_length=1, max_length=NAME_MAX_LENGTH, pattern=NAME_PATTERN)]
# Free text (a reason, a description, a tag): no NUL; a field may declare a smaller max_length.
Text = Annotated[str, StringConstraints(max_length=TEXT_MAX_LENGTH, pattern=TEXT_PATTERN)]
