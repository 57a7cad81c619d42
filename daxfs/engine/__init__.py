"""daxfs.engine: the file system itself, plain synchronous Python over a pmem region. No FUSE, no trio.

Layers, each a module with one job that calls only the ones below it (checked by lint-imports):

  checkers     fsck.py (+ fsck_inodes.py), describe.py    read an image as replay would leave it
  mkfs.py      lay out a new image
  fs.py        FileSystem: open (replay, orphans), close, statfs, the MAP_SYNC rule's queries
  fault.py     direct-access faults                        \\
  namespace.py names, links, orphans                        |  FileSystem's operations, one layer
  xattr.py     extended attributes and their records        |  each, every one a class adding its
  attrs.py     setattr, stepwise truncate                   |  job to the one below it
  ranges.py    fallocate (all modes), SEEK_DATA/HOLE, copy  |
  data.py      read, write, straight to pmem (DAX)          |
  mappings.py  direct mappings and the pins they hold       |
  core.py      transactions, space reservation, per-inode structures /
  directory.py extent.py inode.py                          in-memory indexes over on-image records
  unstable.py  unstable blocks and THE MAP_SYNC RULE (tid_to_commit)
  chain.py     slot chains and blobs          alloc.py  block and inode bitmaps
  journal.py   the running transaction, the metadata cache
  commit.py    how a transaction becomes durable (its invariants I1-I5 on top)
  recovery.py  replay at open                checkpoint.py  committed blocks home, journal space back
  transaction.py  the records the journal's phases share
  superblock.py   the two superblock copies and their geometry
  pmem.py      the pmem region: store, persist, fence
  format.py    every on-image structure (docs/format.md in code)     mounttab.py  /proc/self/mountinfo
  acl.py       POSIX ACLs: their xattr format, the mode <-> ACL rules of fs/posix_acl.c
  crashpoint.py errors.py runs.py   named crash points, typed errors, run merging
"""
