"""The response cache's in-memory index: for each entry, only what a lookup and eviction
weigh, in a few hundred bytes; the answers themselves stay in ``quotad.db``.

An entry lives in a numbered *slot* of parallel arrays (``array``, 8 bytes an item: when it
was stored, what the call it replaces cost, its size, its hits, its last use), and its 16-byte
key in one ``bytearray``. A dict maps the key's first 60 bits (an int of two 30-bit digits, 32
bytes) to the slot; a lookup compares the whole key, so two keys that share 60 bits are two
different requests (the newer replaces the older). Python objects per entry: that dict's item,
the int key, the int slot; no tuple, float or bytes object each (the index of ~1 KB an entry
that held the decoded answers, floats, a dataclass and heap tuples took 133 MB at 100k entries).

Eviction order is a binary heap (``heapq``) of plain ints, each a slot's priority at the time it
was filed and the slot in its low bits: ``lru`` the sequence number of its last use, ``lfu``
its hits then that number, ``cost`` the bits of its cost x (1 + hits) / size (a non-negative
double's bits order as the double does) then that number. A use files the slot again; the
item filed before goes stale and is skipped when it reaches the top (it no longer equals what
the slot's priority gives now). Past twice the entries (plus :data:`HEAP_SLACK`), the heap is
rebuilt from the live slots.

:data:`BYTES_PER_ENTRY` is what an entry's index takes on average, an upper bound measured with
``tracemalloc`` (tests/unit/store/test_store_cache_memory.py): the cache counts it in each
entry's size against ``max_mb``, so that ``max_mb`` bounds the memory of the index too.
"""

from __future__ import annotations

import heapq
import struct
import sys
from array import array
from collections.abc import Iterator
from typing import Final, Literal

Eviction = Literal["lru", "lfu", "cost"]

KEY_BYTES: Final = 16
"""The length of a cache key (a 128-bit BLAKE2b digest)."""
BYTES_PER_ENTRY: Final = 320
"""What one entry's index takes in memory, at most on average (dict item, its int key and
slot, the arrays' items, the heap's live and stale items, every container's spare room)."""
HEAP_SLACK: Final = 1024
"""Stale heap items tolerated beyond twice the entries before the heap is rebuilt."""
SLOT_BITS: Final = 32
USE_BITS: Final = 48
_SLOT_MASK: Final = (1 << SLOT_BITS) - 1
_PREFIX_SHIFT: Final = 4  # the key's first 64 bits, less 4: an int of two 30-bit digits
_DOUBLE: Final = struct.Struct("<d")
_UINT64: Final = struct.Struct("<Q")


def _bits(number: float) -> int:
    """A non-negative double as the int of its bits: they order as the doubles do."""
    return int(_UINT64.unpack(_DOUBLE.pack(max(number, 0.0)))[0])


class CacheIndex:
    """Slots of entries in parallel arrays, a dict from key prefix to slot, an eviction heap."""

    def __init__(self, eviction: Eviction) -> None:
        self.eviction: Eviction = eviction
        self._reset()

    def _reset(self) -> None:
        self.bytes = 0
        """The entries' sizes, summed."""
        self._slots: dict[int, int] = {}
        self._keys = bytearray()
        self._created = array("d")
        self._cost = array("d")
        self._size = array("q")
        """Each slot's size; 0 for a free slot."""
        self._hits = array("q")
        self._used = array("q")
        """Each slot's last use: a number from :attr:`_uses`, so that uses are ordered even
        when the clock does not move or steps back."""
        self._uses = 0
        self._free = array("q")
        self._heap: list[int] = []

    # ------------------------------------------------------------------ lookups

    def find(self, key: bytes) -> int | None:
        """The slot holding ``key``, or None."""
        slot = self._slots.get(int.from_bytes(key[:8], "big") >> _PREFIX_SHIFT)
        if slot is None or self.key(slot) != key:
            return None
        return slot

    def key(self, slot: int) -> bytes:
        start = slot * KEY_BYTES
        return bytes(self._keys[start : start + KEY_BYTES])

    def created(self, slot: int) -> float:
        return self._created[slot]

    def cost_usd(self, slot: int) -> float:
        return self._cost[slot]

    def hits(self, slot: int) -> int:
        return self._hits[slot]

    def size(self, slot: int) -> int:
        return self._size[slot]

    def __len__(self) -> int:
        return len(self._slots)

    def memory_bytes(self) -> int:
        """What the index's objects take (``sys.getsizeof``: each container with its spare
        room, each int it holds; not the allocator's rounding), walking them all: for tests
        and benchmarks, not the hot path."""
        containers: tuple[object, ...] = (
            self._slots, self._keys, self._created, self._cost, self._size, self._hits,
            self._used, self._free, self._heap,
        )  # fmt: skip
        size = sum(sys.getsizeof(container) for container in containers)
        size += sum(sys.getsizeof(prefix) for prefix in self._slots)
        size += sum(sys.getsizeof(slot) for slot in self._slots.values() if slot > 256)
        return size + sum(sys.getsizeof(item) for item in self._heap)

    def slots(self) -> Iterator[int]:
        """Every live slot (a copy: removing while iterating is safe)."""
        return iter(list(self._slots.values()))

    # ------------------------------------------------------------------ changes

    def add(
        self,
        key: bytes,
        size: int,
        created: float,
        cost_usd: float,
        hits: int = 0,
        *,
        file: bool = True,
    ) -> tuple[int, bytes | None]:
        """A new entry, filed as just used (unless ``file`` is false: a load files them all
        at the end, with :meth:`order_uses`), replacing any of the same key; its slot, and the
        key of another entry it displaced (one whose key shares its first 60 bits: none in
        practice, but never two at once)."""
        if len(key) != KEY_BYTES:
            raise ValueError(f"a cache key is {KEY_BYTES} bytes, not {len(key)}")
        prefix = int.from_bytes(key[:8], "big") >> _PREFIX_SHIFT
        displaced = None
        previous = self._slots.get(prefix)
        if previous is not None:
            displaced = self.key(previous)
            self.remove(previous)
            if displaced == key:  # the same entry, replaced
                displaced = None
        if self._free:
            slot = self._free.pop()
            start = slot * KEY_BYTES
            self._keys[start : start + KEY_BYTES] = key
            self._created[slot] = created
            self._cost[slot] = cost_usd
            self._size[slot] = size
            self._hits[slot] = hits
        else:
            slot = len(self._size)
            self._keys += key
            self._created.append(created)
            self._cost.append(cost_usd)
            self._size.append(size)
            self._hits.append(hits)
            self._used.append(0)
        self._slots[prefix] = slot
        self.bytes += size
        if file:
            self.touch(slot, hit=False)
        return slot, displaced

    def touch(self, slot: int, *, hit: bool = True) -> None:
        """A use of ``slot`` (a hit counts one more): filed again by its new priority."""
        if hit:
            self._hits[slot] += 1
        self._uses += 1
        self._used[slot] = self._uses
        heapq.heappush(self._heap, self._item(slot))
        if len(self._heap) > 2 * len(self._slots) + HEAP_SLACK:
            self.refile_all()

    def remove(self, slot: int) -> None:
        """Free ``slot``; its heap items go stale."""
        del self._slots[int.from_bytes(self.key(slot)[:8], "big") >> _PREFIX_SHIFT]
        self.bytes -= self._size[slot]
        self._size[slot] = 0
        self._free.append(slot)

    def clear(self) -> None:
        """Forget every entry, and give back the arrays' memory."""
        self._reset()

    def order_uses(self, last_used: array[float]) -> None:
        """After a load: number the slots' uses in the order of ``last_used`` (per slot),
        and file them all."""
        live = sorted(self._slots.values(), key=last_used.__getitem__)
        for number, slot in enumerate(live, start=1):
            self._used[slot] = number
        self._uses = len(live)
        self.refile_all()

    # ------------------------------------------------------------------ eviction

    def _item(self, slot: int) -> int:
        """``slot``'s heap item: its priority now, the slot in the low bits."""
        used = self._used[slot]
        if self.eviction == "lru":
            return (used << SLOT_BITS) | slot
        if self.eviction == "lfu":
            first = self._hits[slot]
        else:
            first = _bits(self._cost[slot] * (1 + self._hits[slot]) / self._size[slot])
        return (((first << USE_BITS) | used) << SLOT_BITS) | slot

    def refile_all(self, eviction: Eviction | None = None) -> None:
        """Rebuild the heap from the live slots (stale items, or a new policy)."""
        if eviction is not None:
            self.eviction = eviction
        self._heap = [self._item(slot) for slot in self._slots.values()]
        heapq.heapify(self._heap)

    def evict(self, max_bytes: int, keep: int | None) -> list[bytes]:
        """Remove entries by policy until the sizes fit ``max_bytes``, never ``keep``; the
        keys removed."""
        victims: list[bytes] = []
        kept: list[int] = []
        heap = self._heap
        while self.bytes > max_bytes and heap:
            item = heapq.heappop(heap)
            slot = item & _SLOT_MASK
            if not self._size[slot] or item != self._item(slot):
                continue  # stale
            if slot == keep:
                kept.append(item)
                continue
            victims.append(self.key(slot))
            self.remove(slot)
        for item in kept:
            heapq.heappush(heap, item)
        return victims
