"""Steps for OpenStack destinations."""

from ..errors import PermanentError
from ..pipeline import Context, Step


def _missing(name: str):
    class Missing(Step):
        def run(self, ctx: Context) -> str | None:
            raise PermanentError(f"step '{name}' is not implemented yet")

    Missing.name = name
    return Missing


Dedupe = _missing("dedupe")
Transfer = _missing("transfer")
Register = _missing("register")
Verify = _missing("verify")
BootCheck = _missing("boot-check")
