import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "support" / "lab"))

pytest_plugins = [
    "tests.fixtures.redis",
    "tests.fixtures.lab",
    "tests.fixtures.moto",
    "tests.fixtures.sidekiq",
]
