"""Steps every site type shares: locate and inspect the source image, convert, clean up."""

from ..errors import PermanentError
from ..pipeline import Context, Step


class Locate(Step):
    name = "locate"

    def run(self, ctx: Context) -> str | None:
        raise PermanentError("step 'locate' is not implemented yet")


class Inspect(Step):
    name = "inspect"

    def run(self, ctx: Context) -> str | None:
        raise PermanentError("step 'inspect' is not implemented yet")


class Convert(Step):
    name = "convert"

    def run(self, ctx: Context) -> str | None:
        raise PermanentError("step 'convert' is not implemented yet")


class Cleanup(Step):
    """Removes temp and staged files now (they are removed on failure paths by the runner too)."""

    name = "cleanup"
    always = True

    def run(self, ctx: Context) -> str | None:
        ctx.run_cleanups(failed=False)
        return "Cleanup done"
