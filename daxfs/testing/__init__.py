"""daxfs.testing: crash-test your own program on a real daxfs mount, as trio ships trio.testing.

    from daxfs.testing import Mount

    m = Mount.create("/tmp/work", size="64M")       # mkfs an image, make a mount point beside it
    m.mount("map_sync")                             # sync mode (MAP_SYNC semantics) for every file
    ... run your code against m.mnt ...
    m.crash()                                       # SIGKILL the daemon at once, clean the dead mount
    m.remount()                                     # mount again: replays the journal, as after a real crash
    m.fsck()                                        # raises CheckFailed unless the image is clean

The rooms of this package:
  mount.py          Mount: an image and its mount point, driven as a user drives them
  power.py          CrashRegion: an emulated pmem region that cuts the power (engine-level tests)
  model.py          the POSIX model that crash campaigns and property tests replay operations on
  workload.py       crash-test workloads and the worker that runs them and logs every acknowledgement
  oracle.py         what a crashed mount may and must show, given the worker's log
  campaign.py       `daxfs crashtest`: cases, crashes, remounts, verdicts
  report.py         the campaign's progress, summary and JSON report
  pytest_plugin.py  the `daxfs_mount` fixture (registered as a pytest11 entry point)
"""

from daxfs.testing.mount import DAXFS, CheckFailed, Mount, is_mounted, mounted, pid_alive, run, wait_dead

__all__ = ["DAXFS", "CheckFailed", "Mount", "is_mounted", "mounted", "pid_alive", "run", "wait_dead"]
