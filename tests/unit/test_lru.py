"""The shared bounded LRU map (confide.lru)."""

from __future__ import annotations

from confide.lru import Lru


def test_least_recently_used_goes_first() -> None:
    lru: Lru[str, int] = Lru(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1  # "b" is now the least recently used
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), len(lru)) == (1, None, 3, 2)
    assert lru.pop("a") == 1 and lru.pop("a") is None and len(lru) == 1
    lru.clear()
    assert len(lru) == 0


def test_size_zero_keeps_nothing() -> None:
    lru: Lru[str, int] = Lru(0)
    lru.put("a", 1)
    assert lru.get("a") is None and len(lru) == 0
