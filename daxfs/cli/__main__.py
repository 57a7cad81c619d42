"""`python -m daxfs.cli ARGS` is `daxfs ARGS` (the daemon and the test helpers start it this way)."""

from daxfs.cli.main import main

main()
