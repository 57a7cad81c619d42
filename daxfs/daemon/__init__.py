"""daxfs.daemon: the pyfuse3/trio adapter over the engine, thin by design.

  mount.py      the mount's life: start a daemon (init, run, close), unmount, the image lock
  fuseops.py    FUSE requests in, FileSystem calls out
  faults.py     the fault service: direct-access mappings and their faults over the control socket
  control.py    the control socket's server (credentials from SO_PEERCRED), crash-test ops
  syncrule.py   the MAP_SYNC rule, daemon side: which writes are synchronous, commit before the ack
  committer.py  group commit (one journal commit serves every request that waits), periodic commit
  session.py    the FUSE session loop: each request run to its reply with no task switch (pyfuse3.main's stand-in)
  stats.py      counters and the seed's latency histograms      options.py  mount options
  proc.py       processes as /proc shows them
  fuseshim.py   fallocate, SEEK_DATA/SEEK_HOLE and copy_file_range, which pyfuse3 cannot receive,
                through the C shim fuseshim.c (loaded before pyfuse3; docs/design.md)

Only mount.serve() imports pyfuse3 and trio at run time; start_background() and unmount() do not,
so the CLI and daxfs.testing stay light.
"""
