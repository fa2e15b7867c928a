import logging
import sys

import pytest

from migratio.errors import CommandFailed, TransientError
from migratio.local.commands import Commands


@pytest.fixture
def commands():
    return Commands(logging.getLogger("test"))


def test_argv_is_never_a_shell(commands, tmp_path):
    marker = tmp_path / "x"
    result = commands.run(["echo", f"$(touch {marker}); rm -rf /"])
    assert result.stdout == f"$(touch {marker}); rm -rf /"
    assert not marker.exists()


def test_failure_is_one_line_with_the_last_stderr_line(commands):
    with pytest.raises(CommandFailed) as info:
        commands.run([sys.executable, "-c", "import sys; sys.stderr.write('a\\nno space left\\n'); sys.exit(3)"],
                     what="convert")
    assert str(info.value) == "convert failed (exit 3): no space left"
    assert "a\nno space left" in info.value.stderr_tail
    assert not info.value.retryable


def test_retryable_exit_codes(commands):
    with pytest.raises(CommandFailed) as info:
        commands.run([sys.executable, "-c", "raise SystemExit(255)"], retryable_codes=[255])
    assert info.value.retryable


def test_missing_command(commands):
    with pytest.raises(CommandFailed, match="command not found: no-such-tool"):
        commands.run(["no-such-tool"])


def test_output_lines_split_on_carriage_returns(commands):
    lines = []
    commands.run([sys.executable, "-c", "print('10%\\r20%\\r30%')"], on_output=lines.append)
    assert lines == ["10%", "20%", "30%"]


def test_timeout_is_transient(commands):
    with pytest.raises(TransientError, match="timed out after 1s"):
        commands.run([sys.executable, "-c", "import time; time.sleep(30)"], timeout=1, what="sleeper")


def test_commands_are_logged_with_exit_code(commands, caplog):
    caplog.set_level(logging.INFO, "test")
    commands.run(["true"])
    assert any(r.getMessage().startswith("exit 0 after") and r.getMessage().endswith(": true")
               for r in caplog.records)
