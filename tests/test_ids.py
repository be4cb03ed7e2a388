"""Object ids: 25 lowercase base-36 characters, random, every character used evenly."""
import re
from collections import Counter

from common.ids import new_id, short


def test_ids_are_25_base36_characters_unique_and_even():
    ids = [new_id() for _ in range(20_000)]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"[a-z0-9]{25}", i) for i in ids)
    counts = Counter(ch for i in ids for ch in i)
    assert len(counts) == 36
    expected = 20_000 * 25 / 36
    assert all(abs(n - expected) < expected * 0.05 for n in counts.values()), counts
    # the last digit too (the most significant, where a modulo's bias would show)
    last = Counter(i[-1] for i in ids)
    assert len(last) == 36 and max(last.values()) < 2 * min(last.values())
    assert short(ids[0]) == ids[0][:12]
