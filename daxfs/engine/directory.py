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

from daxfs.engine import format as fmt
from daxfs.engine.chain import Addr, SlotChain
from daxfs.engine.errors import CorruptImage

FIRST_COOKIE = 3


@dataclass(slots=True)
class Entry:
    name: bytes
    ino: int
    dtype: int  # the S_IFMT bits >> 12, as readdir's d_type
    addr: Addr


def dtype_of(mode: int) -> int:
    return stat.S_IFMT(mode) >> 12


def name_problem(name: bytes) -> str:
    """What makes `name` no valid directory entry name ("" if nothing): the engine refuses such names,
    loading a directory rejects them, fsck reports them."""
    if not name:
        return "empty name"
    if len(name) > fmt.MAX_NAME:
        return f"name of {len(name)} bytes, more than {fmt.MAX_NAME}"
    if b"/" in name or b"\0" in name:
        return "name contains '/' or NUL"
    if name in (b".", b".."):
        return "name is . or .."
    return ""


class Directory:
    def __init__(self, chain: SlotChain, owner: int) -> None:
        self.chain = chain
        self.owner = owner
        self.entries: dict[bytes, Entry] = {}
        self.by_cookie: SortedDict = SortedDict()
        for addr, data in chain.load():
            ino, dtype, namelen, _, name = fmt.DIRENT.unpack_from(data)
            name = name[:namelen]
            what = name_problem(name) or ("a second entry of that name" if name in self.entries else "")
            if what:
                raise CorruptImage(f"directory {owner}: entry {name!r} at {addr}: {what}", addr[0])
            self._index(Entry(name, ino, dtype, addr))

    def _cookie(self, addr: Addr) -> int:
        blk, off = addr
        return FIRST_COOKIE + blk * 16 + (off - fmt.HEADER_SIZE) // fmt.DIRENT_SIZE

    def _index(self, e: Entry) -> None:
        self.entries[e.name] = e
        self.by_cookie[self._cookie(e.addr)] = e

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
        return e

    def retarget(self, name: bytes, ino: int, mode: int) -> None:
        """Point an existing name at another inode (rename over a target)."""
        e = self.entries[name]
        e.ino, e.dtype = ino, dtype_of(mode)
        self.chain.update(e.addr, _pack(name, ino, e.dtype))

    def after(self, cookie: int):
        """Entries with a cookie greater than `cookie`, in cookie order, as (cookie, entry)."""
        keys = self.by_cookie.keys()
        for i in range(self.by_cookie.bisect_right(cookie), len(keys)):
            k = keys[i]
            yield k, self.by_cookie[k]


def _pack(name: bytes, ino: int, dtype: int) -> bytes:
    return fmt.DIRENT.pack(ino, dtype, len(name), 0, name)
