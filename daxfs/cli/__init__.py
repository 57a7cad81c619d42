"""daxfs.cli: the `daxfs` command (main.py, with click) and its demos (demo.py: both modes under a
SIGKILL; demo_faults.py: the seed's page-fault latency table). `python -m daxfs.cli` runs it too."""
