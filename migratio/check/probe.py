"""How one probe becomes one PASS/FAIL/SKIP line: `Fail`, `Result` and the `Runner` that collects them.

A probe is a function taking what it needs and returning its PASS detail (or, for `Runner.value`,
the value it found and the detail), or raising `Fail` with the fix, or any MigratioError: its
one-line message is the detail.
"""

from dataclasses import dataclass
from typing import Callable, TypeVar

from migratio.errors import MigratioError

T = TypeVar("T")
Fix = str | Callable[[Exception], str]  # the fix to print, or how to choose it from the error


class Fail(Exception):
    """A probe failed: `detail` says what is wrong, `fix` what to do about it."""

    def __init__(self, detail: str, fix: str = ""):
        super().__init__(detail)
        self.detail, self.fix = detail, fix


@dataclass(frozen=True)
class Result:
    status: str  # PASS, FAIL or SKIP (a probe that needs a failed one)
    what: str
    detail: str
    fix: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "FAIL"

    def line(self) -> str:
        text = f"{self.status}  {self.what}: {self.detail}"
        return f"{text} -- fix: {self.fix}" if self.status == "FAIL" and self.fix else text


class Runner:
    """Collects results; a probe's outcome becomes one line, its secrets redacted."""

    def __init__(self, redact: Callable[[str], str]):
        self.redact = redact
        self.results: list[Result] = []

    def probe(self, what: str, check: Callable[[], str], fix: Fix = "") -> bool:
        """Run `check` (it returns the PASS detail); True if it passed."""
        return self.value(what, lambda: (True, check()), fix) is not None

    def value(self, what: str, check: Callable[[], tuple[T, str]], fix: Fix = "") -> T | None:
        """Run `check` (it returns what it found and the PASS detail); what it found, or None if it failed."""
        try:
            found, detail = check()
        except Fail as exc:
            self._add("FAIL", what, exc.detail, exc.fix or _fix(fix, exc))
            return None
        except MigratioError as exc:
            self._add("FAIL", what, str(exc), _fix(fix, exc))
            return None
        except Exception as exc:  # a probe must never crash the whole check
            self._add("FAIL", what, f"{type(exc).__name__}: {' '.join(str(exc).split())}", _fix(fix, exc))
            return None
        self._add("PASS", what, detail)
        return found

    def fail(self, what: str, detail: str, fix: str = "") -> None:
        self._add("FAIL", what, detail, fix)

    def skip(self, what: str, because: str) -> None:
        self._add("SKIP", what, f"not checked: {because}")

    def _add(self, status: str, what: str, detail: str, fix: str = "") -> None:
        self.results.append(Result(status, what, self.redact(detail), self.redact(fix)))


def summary(results: list[Result]) -> str:
    """The last line: `N passed, M failed` and, if any, `, K not checked`."""
    counts = {status: sum(1 for r in results if r.status == status) for status in ("PASS", "FAIL", "SKIP")}
    skipped = f", {counts['SKIP']} not checked" if counts["SKIP"] else ""
    return f"{counts['PASS']} passed, {counts['FAIL']} failed{skipped}"


def _fix(fix: Fix, exc: Exception) -> str:
    return fix(exc) if callable(fix) else fix
