"""`python -m migratio.cli`: the same command as the `migratio` script."""

from migratio.cli import main

main()
