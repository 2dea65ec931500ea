"""Compact per-slice masks of one object, and the labels edits that commit or delete objects.

A mask is kept as the bounding-box crop of a uint8 *confidence*: 0 outside the mask,
1..255 inside = the logit quantised to 1/8 (``ceil(logit * 8)``, capped at 255; SAM 2's
logits are clamped to +-32). One byte per pixel of the crop holds both the mask
(``logits > 0``) and what decides overlaps between objects committed together (after the
nearest prompt, the highest logit wins), so 500 objects x 500 slices cost their objects' extents, not
500 x 500 full slices.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

CONFIDENCE_SCALE = 8.0
MASK_CONFIDENCE = 80
"""Confidence of a binary mask without logits (a mask prompt): logit +10, as SAM 2 turns a mask into logits."""


def confidence(logits, threshold: float = 0.0) -> np.ndarray:
    """(Y, X) logits -> uint8 confidence (0 where ``logits <= threshold``)."""
    x = np.asarray(logits, dtype=np.float32) - np.float32(threshold)
    x = np.nan_to_num(x, nan=0.0, posinf=32.0, neginf=0.0)
    q = np.clip(np.ceil(x * CONFIDENCE_SCALE), 0, 255).astype(np.uint8)
    return q


def mask_confidence(mask) -> np.ndarray:
    return np.where(np.asarray(mask, dtype=bool), np.uint8(MASK_CONFIDENCE), np.uint8(0))


class MaskStack:
    """Per-slice masks of one object: ``{slice: (row0, col0, uint8 crop)}`` (empty slices are absent)."""

    def __init__(self, frame_shape):
        self.frame_shape = (int(frame_shape[0]), int(frame_shape[1]))
        self._crops: dict[int, tuple[int, int, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._crops)

    def __contains__(self, index) -> bool:
        return index in self._crops

    def slices(self) -> list[int]:
        return sorted(self._crops)

    @property
    def nbytes(self) -> int:
        return sum(c.nbytes for _, _, c in self._crops.values())

    def set(self, index: int, conf: np.ndarray) -> None:
        """Store a full-slice uint8 confidence (an all-zero one removes the slice)."""
        conf = np.asarray(conf, dtype=np.uint8)
        rows = np.flatnonzero(conf.any(1))
        if rows.size == 0:
            self._crops.pop(int(index), None)
            return
        cols = np.flatnonzero(conf.any(0))
        r0, r1, c0, c1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        self._crops[int(index)] = (int(r0), int(c0), conf[r0:r1, c0:c1].copy())

    def set_crop(self, index: int, r0: int, c0: int, crop: np.ndarray) -> None:
        self._crops[int(index)] = (int(r0), int(c0), crop)

    def crop(self, index: int):
        """``(row0, col0, uint8 crop)`` of slice ``index``, or None."""
        return self._crops.get(index)

    def confidence(self, index: int) -> np.ndarray | None:
        c = self._crops.get(index)
        if c is None:
            return None
        out = np.zeros(self.frame_shape, np.uint8)
        r0, c0, crop = c
        out[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]] = crop
        return out

    def mask(self, index: int) -> np.ndarray | None:
        conf = self.confidence(index)
        return None if conf is None else conf > 0

    def clear(self, lo: int | None = None, hi: int | None = None) -> None:
        """Forget slices ``lo..hi`` (inclusive; all by default)."""
        for i in list(self._crops):
            if (lo is None or i >= lo) and (hi is None or i <= hi):
                del self._crops[i]

    def same_masks(self, other: MaskStack, lo: int, hi: int) -> bool:
        """True when both hold the same masks (not confidences) on slices ``lo..hi``."""
        mine = {i: c for i, c in self._crops.items() if lo <= i <= hi}
        theirs = {i: c for i, c in other._crops.items() if lo <= i <= hi}
        if mine.keys() != theirs.keys():
            return False
        for i, (r0, c0, crop) in mine.items():
            q0, d0, other_crop = theirs[i]
            if (r0, c0, crop.shape) != (q0, d0, other_crop.shape) or not np.array_equal(crop > 0, other_crop > 0):
                return False
        return True

    def update(self, other: MaskStack) -> None:
        self._crops.update(other._crops)

    # ------------------------------------------------------------------ files
    def to_arrays(self) -> dict[str, np.ndarray]:
        """``index`` (n,), ``box`` (n, 4) as (row0, col0, rows, cols), ``data`` (all crops, flattened)."""
        idx = self.slices()
        boxes = np.array([[r0, c0, *crop.shape] for r0, c0, crop in (self._crops[i] for i in idx)], np.int64)
        data = np.concatenate([self._crops[i][2].ravel() for i in idx]) if idx else np.zeros(0, np.uint8)
        return {"index": np.array(idx, np.int64), "box": boxes.reshape(-1, 4), "data": data}

    @classmethod
    def from_arrays(cls, frame_shape, arrays: dict[str, np.ndarray], n_slices: int) -> MaskStack:
        """Inverse of :meth:`to_arrays`; ValueError when the arrays do not fit the image."""
        out = cls(frame_shape)
        idx, boxes, data = (np.asarray(arrays[k]) for k in ("index", "box", "data"))
        if idx.ndim != 1 or boxes.shape != (len(idx), 4) or data.dtype != np.uint8:
            raise ValueError("mask arrays have inconsistent shapes")
        h, w = out.frame_shape
        pos = 0
        for i, (r0, c0, nr, nc) in zip(idx.tolist(), boxes.tolist()):
            if not (0 <= i < n_slices and 0 <= r0 and 0 <= c0 and nr > 0 and nc > 0 and r0 + nr <= h and c0 + nc <= w):
                raise ValueError(f"a stored mask (slice {i}, box {r0, c0, nr, nc}) does not fit the image")
            if pos + nr * nc > data.size:
                raise ValueError("mask data is truncated")
            out._crops[int(i)] = (int(r0), int(c0), data[pos:pos + nr * nc].reshape(nr, nc).copy())
            pos += nr * nc
        if pos != data.size:
            raise ValueError("mask data has trailing bytes")
        return out


# ---------------------------------------------------------------- labels edits


@dataclass
class LabelsEdit:
    """One change of the committed labels (one undo step in napari).

    ``indices``: tuple of index arrays into (N, Y, X), as napari's ``Labels.data_setitem``
    takes them; ``values``: the new values there; ``old``: the values before;
    ``obj_ids``: the objects the action was about.
    """

    indices: tuple = field(default_factory=lambda: tuple(np.zeros(0, np.intp) for _ in range(3)))
    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    old: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint32))
    obj_ids: tuple = ()

    def __len__(self) -> int:
        return int(self.values.size)

    def slices(self) -> list[int]:
        return np.unique(self.indices[0]).tolist()

    def inverse(self) -> LabelsEdit:
        return LabelsEdit(self.indices, self.old, self.values, self.obj_ids)


def member(arr: np.ndarray, ids) -> np.ndarray:
    """Boolean ``arr`` in ``ids`` (a lookup table when the values are small)."""
    ids = np.asarray(sorted(ids), dtype=np.int64)
    if ids.size == 0:
        return np.zeros(arr.shape, bool)
    top = int(arr.max()) if arr.size else 0
    if top < (1 << 22):
        lut = np.zeros(top + 1, bool)
        lut[ids[ids <= top]] = True
        return lut[arr]
    return np.isin(arr, ids)


def slices_with(labels: np.ndarray, ids, block: int = 32) -> set[int]:
    """Indices of the slices of ``labels`` holding any of ``ids`` (read ``block`` slices at a time)."""
    ids = list(ids)
    out: set[int] = set()
    for z0 in range(0, labels.shape[0], block):
        part = labels[z0:z0 + block]
        if len(ids) <= 8:  # a few comparisons beat a lookup table
            hit = np.zeros(part.shape[0], bool)
            for o in ids:
                hit |= (part == o).any(axis=(1, 2))
        else:
            hit = member(part, ids).any(axis=(1, 2))
        out.update((z0 + np.flatnonzero(hit)).tolist())
    return out


def labels_state(labels: np.ndarray, stacks: dict[int, MaskStack]) -> tuple[set[int], set[int]]:
    """``(present, differ)``: the non-zero ids in ``labels``, and those of ``stacks`` (obj id ->
    masks) whose pixels are not what committing their masks leaves: a pixel of the object outside
    its mask, or a pixel of its mask left at 0. Reads one slice at a time."""
    present: set[int] = set()
    differ: set[int] = set()
    for z in range(labels.shape[0]):
        lab = labels[z]
        top = int(lab.max()) if lab.size else 0
        if top < (1 << 22):
            counts = np.bincount(lab.ravel(), minlength=top + 1)
            here = set(np.flatnonzero(counts).tolist())
        else:
            values, n = np.unique(lab, return_counts=True)
            here, counts = set(values.tolist()), dict(zip(values.tolist(), n.tolist()))
        present |= here
        for o, stack in stacks.items():
            n_o = int(counts[o]) if o in here else 0
            c = stack.crop(z)
            if c is None:
                if n_o:
                    differ.add(o)
                continue
            r0, c0, crop = c
            win = lab[r0:r0 + crop.shape[0], c0:c0 + crop.shape[1]]
            mine, m = win == o, crop > 0
            if int(mine.sum()) != n_o or (mine & ~m).any() or (m & (win == 0)).any():
                differ.add(o)
    present.discard(0)
    return present, differ


def prompt_distance(anchors, obj: int, index: int) -> int:
    """Slices from ``index`` to the nearest of ``anchors[obj]`` (the object's prompted slices);
    0 when ``anchors`` is None or the object has none (its masks count as given)."""
    near = anchors.get(obj) if anchors else None
    return min(abs(int(index) - int(a)) for a in near) if near else 0


FAR = np.iinfo(np.int32).max
"""The prompt distance of a pixel no object has claimed yet."""


def claims(value, dist: int, best, near):
    """Where an object's ``value`` (confidence or logit) at prompt distance ``dist`` beats the pixel's
    current winner (``best`` value, ``near`` distance): positive, and prompted nearer or as near and higher."""
    return (value > 0) & ((dist < near) | ((dist == near) & (value > best)))


def winners(shape, index: int, stacks: dict[int, MaskStack], dtype=np.uint32, anchors=None):
    """On slice ``index``: per pixel, which of ``stacks`` (obj id -> masks) wins, and its confidence
    (0 where none). The overlap rule: the object prompted nearest to ``index`` (``anchors``: obj id ->
    its prompted slices, see :func:`prompt_distance`), then the highest confidence, then the first in
    ``stacks``' order. Propagated masks drift with distance from their prompts, so where two tracks
    claim a pixel the one prompted nearer is the better claim (docs/annotation.md)."""
    best = np.zeros(shape, np.uint8)
    who = np.zeros(shape, dtype)
    near = np.full(shape, FAR, np.int32)
    for o, stack in stacks.items():
        c = stack.crop(index)
        if c is None:
            continue
        r0, c0, crop = c
        win = (slice(r0, r0 + crop.shape[0]), slice(c0, c0 + crop.shape[1]))
        d = prompt_distance(anchors, o, index)
        better = claims(crop, d, best[win], near[win])
        best[win][better] = crop[better]
        who[win][better] = o
        near[win][better] = d
    return best, who


def _edit(parts, dtype, obj_ids) -> LabelsEdit:
    if not parts:
        empty = np.zeros(0, np.intp)
        return LabelsEdit((empty, empty.copy(), empty.copy()), np.zeros(0, dtype), np.zeros(0, dtype), tuple(obj_ids))
    z, r, c, v, o = (np.concatenate(x) for x in zip(*parts))
    return LabelsEdit((z, r, c), v.astype(dtype), o.astype(dtype), tuple(obj_ids))


def commit_edit(labels: np.ndarray, stacks: dict[int, MaskStack], overwrite: bool = False,
                anchors=None) -> LabelsEdit:
    """The edit that writes ``stacks`` (obj id -> masks) into ``labels``.

    Each object's previous pixels are cleared first (a re-commit replaces exactly them);
    where the objects overlap each other :func:`winners` decides (nearest prompt, then highest
    confidence); pixels of any other label stay unless ``overwrite``.
    """
    ids = list(stacks)
    slices = set().union(*(s.slices() for s in stacks.values())) if stacks else set()
    parts = []
    for z in sorted(slices | slices_with(labels, ids)):
        old = labels[z]
        mine = member(old, ids)
        touched = z in slices
        new = old.copy()
        new[mine] = 0
        if touched:
            best, who = winners(old.shape, z, stacks, labels.dtype, anchors)
            fg = best > 0
            if not overwrite:
                fg &= new == 0
            new[fg] = who[fg]
        r, c = np.nonzero(new != old)
        if r.size:
            parts.append((np.full(r.size, z, np.intp), r, c, new[r, c], old[r, c]))
    return _edit(parts, labels.dtype, ids)


def delete_edit(labels: np.ndarray, ids) -> LabelsEdit:
    """The edit that sets the pixels of ``ids`` to 0."""
    ids = list(ids)
    parts = []
    for z in sorted(slices_with(labels, ids)):
        old = labels[z]
        r, c = np.nonzero(member(old, ids))
        if r.size:
            parts.append((np.full(r.size, z, np.intp), r, c, np.zeros(r.size, old.dtype), old[r, c]))
    return _edit(parts, labels.dtype, ids)


def apply_edit(labels: np.ndarray, edit: LabelsEdit) -> None:
    """The default ``labels_writer``: write the edit into the array in place."""
    if len(edit):
        labels[edit.indices] = edit.values
