"""Steps for Amazon EC2 destinations."""

from ..errors import PermanentError
from ..pipeline import Context, Step


def _missing(name: str):
    class Missing(Step):
        def run(self, ctx: Context) -> str | None:
            raise PermanentError(f"step '{name}' is not implemented yet")

    Missing.name = name
    return Missing


Dedupe = _missing("dedupe")
Import = _missing("import")
Tag = _missing("tag")
