"""A JSON array of objects read as it streams (`qemu-img map --output=json`), one object at a time.

Memory stays bounded by the longest object, whatever the length of the array: a small image can
make qemu-img print millions of extents.
"""

import json
from typing import Any, Callable

MAX_OBJECT = 64 * 1024  # characters; an object that long is not what the reader expects
_SPACE = " \t\r\n"


class ArrayReader:
    """Feed it the text in pieces cut anywhere (`line` for Commands.run's on_output); it calls
    `on_item` with each object of the top-level array. ValueError for anything else."""

    def __init__(self, on_item: Callable[[dict[str, Any]], None]):
        self.on_item = on_item
        self.pending = ""
        self.state = "before"  # before "[" -> items -> after "]"
        self.decoder = json.JSONDecoder()

    def line(self, text: str) -> None:
        self.feed(text + "\n")

    def feed(self, text: str) -> None:
        rest = (self.pending + text).lstrip(_SPACE)
        while rest:
            if self.state == "before":
                if rest[0] != "[":
                    raise ValueError(f"expected a JSON array, got {rest[:20]!r}")
                self.state, rest = "items", rest[1:].lstrip(_SPACE)
            elif self.state == "after":
                raise ValueError(f"text after the JSON array: {rest[:20]!r}")
            elif rest[0] in ",]":
                self.state = "after" if rest[0] == "]" else "items"
                rest = rest[1:].lstrip(_SPACE)
            else:
                try:
                    item, end = self.decoder.raw_decode(rest)
                except json.JSONDecodeError:
                    if len(rest) > MAX_OBJECT:
                        raise ValueError(f"an array item longer than {MAX_OBJECT} characters") from None
                    break  # incomplete: wait for more
                if not isinstance(item, dict):
                    raise ValueError(f"expected objects in the array, got {type(item).__name__}")
                self.on_item(item)
                rest = rest[end:].lstrip(_SPACE)
        self.pending = rest

    def close(self) -> None:
        """The text has ended: it must have been one whole array."""
        if self.state != "after" or self.pending.strip(_SPACE):
            raise ValueError("the JSON array is cut short")
