"""Directories: name -> inode entries in a slot chain, indexed in memory.

Entries are slots (chain.py) in no order on the image. In memory a dict maps each name to its entry,
so lookup is O(1) in the size of the directory, and a SortedDict orders entries by their cookie (a
number derived from the slot's address) so that readdir can resume at an offset in O(log n) while
entries come and go: an entry keeps its cookie as long as it exists. Cookies 1 and 2 are "." and "..".
"""

from __future__ import annotations

import stat
from dataclasses import dataclass

from sortedcontainers import SortedDict

from daxfs import format as fmt
from daxfs.chain import Addr, SlotChain
from daxfs.errors import CorruptImage

FIRST_COOKIE = 3


@dataclass(slots=True)
class Entry:
    name: bytes
    ino: int
    dtype: int  # the S_IFMT bits >> 12, as readdir's d_type
    addr: Addr


def dtype_of(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12


class Directory:
    def __init__(self, chain: SlotChain, owner: int) -> None:
        self.chain = chain
        self.owner = owner
        self.entries: dict[bytes, Entry] = {}
        self.by_cookie: SortedDict = SortedDict()
        self.subdirs = 0
        for addr, data in chain.load():
            ino, dtype, namelen, _, name = fmt.DIRENT.unpack_from(data)
            name = name[:namelen]
            if not name or b"/" in name or b"\0" in name or name in self.entries:
                raise CorruptImage(f"directory {owner}: bad or duplicate entry {name!r} at {addr}", addr[0])
            self._index(Entry(name, ino, dtype, addr))

    def _cookie(self, addr: Addr) -> int:
        blk, off = addr
        return FIRST_COOKIE + blk * 16 + (off - fmt.HEADER_SIZE) // fmt.DIRENT_SIZE

    def _index(self, e: Entry) -> None:
        self.entries[e.name] = e
        self.by_cookie[self._cookie(e.addr)] = e
        if e.dtype == stat.S_IFDIR >> 12:
            self.subdirs += 1

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, name: bytes) -> Entry | None:
        return self.entries.get(name)

    def add(self, name: bytes, ino: int, mode: int) -> Entry:
        dtype = dtype_of(mode)
        addr = self.chain.put(_pack(name, ino, dtype))
        e = Entry(name, ino, dtype, addr)
        self._index(e)
        return e

    def remove(self, name: bytes) -> Entry:
        e = self.entries.pop(name)
        del self.by_cookie[self._cookie(e.addr)]
        self.chain.remove(e.addr)
        if e.dtype == stat.S_IFDIR >> 12:
            self.subdirs -= 1
        return e

    def retarget(self, name: bytes, ino: int, mode: int) -> None:
        """Point an existing name at another inode (rename over a target)."""
        e = self.entries[name]
        if e.dtype == stat.S_IFDIR >> 12:
            self.subdirs -= 1
        e.ino, e.dtype = ino, dtype_of(mode)
        if e.dtype == stat.S_IFDIR >> 12:
            self.subdirs += 1
        self.chain.update(e.addr, _pack(name, ino, e.dtype))

    def after(self, cookie: int):
        """Entries with a cookie greater than `cookie`, in cookie order, as (cookie, entry)."""
        keys = self.by_cookie.keys()
        for i in range(self.by_cookie.bisect_right(cookie), len(keys)):
            k = keys[i]
            yield k, self.by_cookie[k]


def _pack(name: bytes, ino: int, dtype: int) -> bytes:
    return fmt.DIRENT.pack(ino, dtype, len(name), 0, name)
