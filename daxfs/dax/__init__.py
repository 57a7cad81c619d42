"""daxfs.dax: direct access to files of a daxfs mount, as DAX with MAP_SYNC gives on real pmem.

    from daxfs import dax

    m = dax.mmap("/mnt/pm/log", 1 << 20, dax.MAP_SHARED_VALIDATE | dax.MAP_SYNC)
    m[0:5] = b"hello"            # first store to a page: a write fault (the daemon allocates, commits)
    m.persist(0, 5)              # the user-space flush (pmem_persist): now it survives a power cut
    m.close()

The rooms: mapping.py is the client (mappings, faults, persist, numpy views); protocol.py is the
wire protocol it shares with the daemon (side-channel names, control messages, a blocking client);
uffd.py the few userfaultfd calls. Neither imports trio or pyfuse3: a client pays only for numpy.
docs/dax.md tells the whole story. preload.c is the same client in C, for unmodified programs: the
library `daxfs run` preloads (built by pip install as _preload*.so; docs/run.md).
"""

from daxfs.dax.mapping import (LEGACY_MAP_MASK, MAP_POPULATE, MAP_SHARED, MAP_SHARED_VALIDATE, MAP_SYNC, PAGE,
                               PROT_READ, PROT_WRITE, BusError, Mapping, mmap)

__all__ = ["LEGACY_MAP_MASK", "MAP_POPULATE", "MAP_SHARED", "MAP_SHARED_VALIDATE", "MAP_SYNC", "PAGE", "PROT_READ",
           "PROT_WRITE", "BusError", "Mapping", "mmap"]
