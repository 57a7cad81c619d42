"""daxfs: a FUSE file system that emulates DAX on persistent memory with MAP_SYNC semantics.

The folders are the architecture, from the bottom up:
  engine/   the file system: format, pmem region, journal, allocator, inodes, extents, fsck (no FUSE)
  dax/      direct access: the client that maps files straight from pmem, and the wire protocol
  daemon/   the pyfuse3/trio adapter, the fault service, the control socket, the MAP_SYNC rule's action
  testing/  crash testing: Mount, the emulated power-loss region, workloads, oracle, campaigns
  cli/      the `daxfs` command and its demos
"""
