"""Duplicate search and file rules as pure functions."""

from __future__ import annotations

import itertools
import random

import pytest

from defect_pipeline.data.quality import near_duplicate_pairs


@pytest.mark.parametrize("max_distance", [0, 1, 2, 4])
def test_multi_index_search_finds_exactly_the_brute_force_pairs(max_distance: int) -> None:
    rng = random.Random(max_distance)
    hashes = [rng.getrandbits(64) for _ in range(300)]
    # plant near-duplicates at known distances
    for i in range(0, 60, 2):
        flips = rng.sample(range(64), rng.randint(0, max_distance + 1))
        hashes[i + 1] = hashes[i] ^ sum(1 << b for b in flips)
    expected = sorted((a, b, (hashes[a] ^ hashes[b]).bit_count())
                      for a, b in itertools.combinations(range(len(hashes)), 2)
                      if (hashes[a] ^ hashes[b]).bit_count() <= max_distance)
    assert near_duplicate_pairs(hashes, max_distance) == expected
    assert expected, "the planted pairs must include some within the distance"


def test_disabled_search_finds_nothing() -> None:
    assert near_duplicate_pairs([1, 1, 1], -1) == []
