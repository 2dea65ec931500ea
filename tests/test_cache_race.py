"""Two processes creating the same new cache: the one that loses the race keeps the winner's slices."""

from __future__ import annotations

import numpy as np

from napari_sam_stack import _cache
from napari_sam_stack._cache import SliceCache, pixel_digest

LEVELS = {"feat": ((4, 4), "float32")}


def _shared():
    return {"pos": np.arange(8, dtype=np.float32)}


def test_create_racing_another_creator_keeps_its_slices(tmp_path, monkeypatch):
    sig = {"test": "race"}
    loser, winner = SliceCache(tmp_path, sig, 3), SliceCache(tmp_path, sig, 3)
    slice0 = {"feat": np.full((4, 4), 7.0, np.float32)}
    real_open = SliceCache.open
    raced = []

    def open_then_lose_the_race(self):
        ok = real_open(self)
        if self is loser and not raced:  # nothing there yet ... and now the other process wins
            raced.append(True)
            winner.create(LEVELS, _shared(), {})
            winner.write(0, slice0, pixel_digest(slice0["feat"]))
        return ok

    monkeypatch.setattr(SliceCache, "open", open_then_lose_the_race)
    loser.create(LEVELS, _shared(), {})
    assert raced
    assert loser.is_done(0), "the winner's slice 0 was deleted by the losing creator"
    np.testing.assert_array_equal(loser.read(0)["feat"], slice0["feat"])
    assert (loser.path / _cache.MARKER).exists()
