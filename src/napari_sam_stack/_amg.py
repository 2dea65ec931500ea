"""Segment-everything on one slice: the official automatic mask generators' pipeline, on
cached embeddings and through the fast decoder.

The steps and their order are those of ``SamAutomaticMaskGenerator`` (SAM 1) and
``SAM2AutomaticMaskGenerator`` (SAM 2): a point grid per crop layer, one-point prompts in
batches, multimask output, the predicted-IoU filter, the stability score on the
full-resolution logits, the box filter at crop edges, box NMS per crop and between crops,
and (SAM 1's rule, used for both) small holes and islands removed afterwards. The grids,
crop boxes, stability score, mask boxes and edge test are the official helpers
(``segment_anything.utils.amg``), NMS is ``torchvision``'s, so the same inputs give the same
decisions. What differs is only how the numbers are computed:

- no encoder call: layer 0 reads the slice's cached embedding; crops are encoded once
  into their own :class:`~napari_sam_stack.embeddings.EmbeddingStore` (cached like slices);
- the decoder runs on all prompts of a batch at once (:func:`._decoder.decode_batch`),
  sharing the slice's prompt-independent state;
- the IoU filter runs before any upscaling: a prompt with no candidate left is never
  upscaled, and only kept candidates are resized to the slice;
- the resizing chain is applied as two banded (separable) linear maps, equal to the
  official bilinear chain; masks are kept cropped to their box, not as RLE.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
import torch

from . import _decoder
from .errors import Cancelled
from .predict import _per_slice, _resize_matrix, _sam2_coords, _sam2_state, _slice_state

UPSCALE_CHUNK = 16  # prompts upscaled at once (bounds the (B, 16 N, C') intermediate)
RESIZE_CHUNK = 32  # candidates resized to the slice at once


@dataclass
class MaskSet:
    """Masks of one slice in the generator's order.

    ``boxes``: (K, 4) int64 (x0, y0, x1, y1), inclusive, as ``batched_mask_to_box``;
    ``iou``, ``stability``: (K,) float32; ``points``: (K, 2) float64 (x, y) of the grid
    point; ``crop_boxes``: (K, 4) the crop (x0, y0, x1, y1) it came from; ``masks``: K
    :class:`Cut` (each mask cut to its box, bit-packed, placed in the slice).
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    iou: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    stability: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    points: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    crop_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    masks: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.masks)

    def take(self, keep) -> MaskSet:
        idx = np.flatnonzero(keep) if np.asarray(keep).dtype == bool else np.asarray(keep, np.int64)
        return MaskSet(self.boxes[idx], self.iou[idx], self.stability[idx], self.points[idx],
                       self.crop_boxes[idx], [self.masks[i] for i in idx])

    @staticmethod
    def cat(parts: list[MaskSet]) -> MaskSet:
        parts = [p for p in parts if len(p)]
        if not parts:
            return MaskSet()
        return MaskSet(*(np.concatenate([getattr(p, f) for p in parts]) for f in
                         ("boxes", "iou", "stability", "points", "crop_boxes")),
                       [m for p in parts for m in p.masks])

    def mask(self, k: int, shape) -> np.ndarray:
        """Mask ``k`` as a full (Y, X) bool array of a slice of ``shape``."""
        out = np.zeros(shape, bool)
        cut = self.masks[k]
        m = cut.mask
        out[cut.row : cut.row + m.shape[0], cut.col : cut.col + m.shape[1]] = m
        return out


_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.int64)


class Cut:
    """One mask cut to its box (bit-packed: 1/8 of a bool array) and the box's (row, col) in the slice."""

    __slots__ = ("bits", "width", "row", "col")

    def __init__(self, mask: np.ndarray, row: int, col: int):
        self.bits = np.packbits(mask, axis=1)
        self.width, self.row, self.col = int(mask.shape[1]), int(row), int(col)

    @property
    def mask(self) -> np.ndarray:
        return np.unpackbits(self.bits, axis=1, count=self.width).astype(bool)

    @property
    def area(self) -> int:
        return int(_POPCOUNT[self.bits].sum())

    def moved(self, rows: int, cols: int) -> Cut:
        out = Cut.__new__(Cut)
        out.bits, out.width, out.row, out.col = self.bits, self.width, self.row + rows, self.col + cols
        return out


# ---------------------------------------------------------------- one slice


def slice_masks(session, index: int, p, progress=None, cancel=None) -> MaskSet:
    """Every mask the generator keeps on slice ``index`` (``p``: validated parameters)."""
    from segment_anything.utils.amg import build_all_layer_point_grids, generate_crop_boxes
    from torchvision.ops.boxes import batched_nms, box_area

    shape = session.frames.frame_shape
    boxes, layers = generate_crop_boxes(shape, p.crop_n_layers, p.crop_overlap_ratio)
    grids = build_all_layer_point_grids(p.points_per_side, p.crop_n_layers, p.crop_n_points_downscale_factor)
    batches = [-(-len(grids[layer]) // p.points_per_batch) for layer in layers]
    done, total = [0], sum(batches)

    def step() -> None:
        if cancel is not None and cancel():
            raise Cancelled("automatic segmentation cancelled")
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    if progress is not None:
        progress(0, total)
    parts = []
    for box, layer in zip(boxes, layers):
        emb = session.embeddings.get(index) if layer == 0 else crop_embedding(session, index, box)
        parts.append(_crop(session.model, emb, grids[layer], box, shape, p, step))
    data = MaskSet.cat(parts)
    if len(boxes) > 1 and len(data):  # duplicates between crops: the smaller crop wins
        scores = 1 / box_area(torch.as_tensor(data.crop_boxes))
        keep = batched_nms(torch.as_tensor(data.boxes).float(), scores, torch.zeros(len(data)), p.crop_nms_thresh)
        data = data.take(keep.numpy())
    if p.min_mask_region_area > 0 and len(data):
        data = remove_small_regions(data, shape, p.min_mask_region_area, max(p.box_nms_thresh, p.crop_nms_thresh))
    return data


def _crop(model, emb, grid, crop_box, shape, p, step) -> MaskSet:
    """The masks of one crop (its own embedding), NMS'ed, in slice coordinates."""
    from torchvision.ops.boxes import batched_nms

    h, w = emb.original_size
    points = grid * np.array([[w, h]])  # (x, y) in the crop, as the official generators scale them
    parts = []
    for start in range(0, len(points), p.points_per_batch):
        parts.append(_batch(model, emb, points[start : start + p.points_per_batch], crop_box, shape, p))
        step()
    data = MaskSet.cat(parts)
    if len(data):
        keep = batched_nms(torch.as_tensor(data.boxes).float(), torch.as_tensor(data.iou),
                           torch.zeros(len(data)), p.box_nms_thresh)
        data = data.take(keep.numpy())
    x0, y0 = crop_box[0], crop_box[1]
    data.boxes = data.boxes + np.array([x0, y0, x0, y0])
    data.points = data.points + np.array([x0, y0])
    data.masks = [m.moved(y0, x0) for m in data.masks]
    data.crop_boxes = np.tile(np.asarray(crop_box, np.int64), (len(data), 1))
    return data


def _batch(model, emb, points: np.ndarray, crop_box, shape, p) -> MaskSet:
    from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score, is_box_near_crop_edge

    with torch.inference_mode():
        iou, low = point_batch(model, emb, points, p.multimask)
        k = iou.shape[1]
        iou = iou.float().flatten()
        keep = iou > p.pred_iou_thresh if p.pred_iou_thresh > 0 else torch.ones_like(iou, dtype=torch.bool)
        idx = keep.nonzero()[:, 0]
        lows = low(keep.view(-1, k)) if len(idx) else None
        thr = p.mask_threshold
        kept, masks, stab = [], [], []
        for s in range(0, len(idx), RESIZE_CHUNK):
            full = resize_to_slice(model, emb, lows[s : s + RESIZE_CHUNK].float())
            st = calculate_stability_score(full, thr, p.stability_score_offset)
            ok = st >= p.stability_score_thresh if p.stability_score_thresh > 0 else torch.ones_like(st, dtype=torch.bool)
            kept.append(idx[s : s + RESIZE_CHUNK][ok])
            stab.append(st[ok])
            masks.append(full[ok] > thr)
        if not kept or not sum(len(x) for x in kept):
            return MaskSet()
        idx, stab, masks = torch.cat(kept), torch.cat(stab), torch.cat(masks)
        boxes = batched_mask_to_box(masks)
        ok = ~is_box_near_crop_edge(boxes, list(crop_box), [0, 0, shape[1], shape[0]])
        idx, stab, masks, boxes = idx[ok], stab[ok], masks[ok], boxes[ok]
        b = boxes.cpu().numpy().astype(np.int64)
        cut = [Cut(masks[i, y0 : y1 + 1, x0 : x1 + 1].cpu().numpy(), y0, x0) for i, (x0, y0, x1, y1) in enumerate(b)]
        i = idx.cpu().numpy()
        return MaskSet(b, iou[idx].cpu().numpy(), stab.float().cpu().numpy(), points[i // k],
                       np.zeros((len(i), 4), np.int64), cut)


# ---------------------------------------------------------------- decoder on many points


def point_batch(model, emb, points_xy: np.ndarray, multimask: bool = True):
    """B one-point (foreground) prompts at ``points_xy`` ((B, 2) (x, y) pixels of the slice
    or crop ``emb`` encodes), decoded at once.

    Returns ``(iou, low)``: IoU predictions (B, K) of the candidates the official predictor
    returns (K = 3 with ``multimask``, else 1), and ``low(keep)``, which takes a (B, K) bool
    selection and returns those candidates' low-res logits (n, M, M), row-major, upscaling
    only the prompts with a candidate selected.
    """
    sam = model.module
    dev = emb.features.device if model.family == "sam" else emb.backbone_fpn[0].device
    b = len(points_xy)
    if model.family == "sam":
        from segment_anything.utils.transforms import ResizeLongestSide

        st = _per_slice(emb, model, "decoder", lambda: _slice_state(model, emb.features, None))
        coords = ResizeLongestSide(sam.image_encoder.img_size).apply_coords(points_xy, emb.original_size)
        coords = torch.as_tensor(coords, device=dev)[:, None]  # float64, as the official generator passes them
        pe, dec = sam.prompt_encoder, sam.mask_decoder
    else:
        st = _per_slice(emb, model, "decoder", lambda: _sam2_state(model, emb))
        h, w = emb.original_size
        coords = _sam2_coords(np.asarray(points_xy, np.float32)[:, None], h, w, float(sam.image_size), dev)
        pe, dec = sam.sam_prompt_encoder, sam.sam_mask_decoder
    sparse, _ = pe(points=(coords, torch.ones((b, 1), dtype=torch.int, device=dev)), boxes=None, masks=None)
    iou, hyper, keys = _decoder.decode_batch(dec, st, sparse)
    if model.family == "sam2" and not multimask and dec.dynamic_multimask_via_stability:
        every = torch.cat([_decoder.upscale_batch(dec, st, keys[s : s + UPSCALE_CHUNK], hyper[s : s + UPSCALE_CHUNK])
                           for s in range(0, b, UPSCALE_CHUNK)])
        chosen, iou = dec._dynamic_multimask_via_stability(every, iou)
        return iou, lambda keep: chosen[keep]
    tokens = slice(1, None) if multimask else slice(0, 1)
    iou, hyper = iou[:, tokens], hyper[:, tokens]

    def low(keep):
        rows = keep.any(1).nonzero()[:, 0]
        out = []
        for s in range(0, len(rows), UPSCALE_CHUNK):
            r = rows[s : s + UPSCALE_CHUNK]
            out.append(_decoder.upscale_batch(dec, st, keys[r], hyper[r])[keep[r]])
        return torch.cat(out)

    return iou, low


def resize_to_slice(model, emb, low):
    """(n, M, M) low-res logits -> (n, Y, X) logits of the slice (or crop), equal to the
    official upsampling chain (:func:`.predict._upsample`), as two banded linear maps."""
    (iy, wy), (ix, wx) = _per_slice(emb, model, "upsample_bands", lambda: _bands(model, emb))
    rows = sum(low[:, iy[:, k], :] * wy[:, k, None] for k in range(iy.shape[1]))  # (n, Y, M)
    return sum(rows[:, :, ix[:, k]] * wx[:, k] for k in range(ix.shape[1]))  # (n, Y, X)


def _bands(model, emb):
    """Each axis' resize matrix (n_out, M) as (indices, weights) (n_out, K) of its nonzero band."""
    out = []
    for axis in (0, 1):
        r = _resize_matrix(model, emb, axis)
        nz = r != 0
        m = r.shape[1]
        first = nz.int().argmax(1)
        last = m - 1 - nz.flip(1).int().argmax(1)
        k = int((last - first).max()) + 1
        idx = first[:, None] + torch.arange(k, device=r.device)
        inside = idx < m
        idx = torch.where(inside, idx, 0)
        out.append((idx, torch.gather(r, 1, idx) * inside))
    return out


# ---------------------------------------------------------------- crops and small regions

_CROP_STORES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
CROP_STORES_KEPT = 32  # crop stores kept per session (each holds one embedding in memory)


def crop_embedding(session, index: int, crop_box):
    """The embedding of one crop (x0, y0, x1, y1) of slice ``index``, encoded once: a one-frame
    :class:`EmbeddingStore` per crop (keyed by its pixels), in the session's cache folder, or
    in memory when the session keeps its embeddings in memory."""
    from collections import OrderedDict

    from ._cache import pixel_digest
    from .embeddings import EmbeddingStore
    from .normalise import Frames

    x0, y0, x1, y1 = (int(v) for v in crop_box)
    crop = np.ascontiguousarray(session.frames[index][y0:y1, x0:x1])
    key = (index, x0, y0, x1, y1, pixel_digest(crop))
    stores = _CROP_STORES.setdefault(session, OrderedDict())
    store = stores.pop(key, None)
    if store is None:
        main = session.embeddings
        disk = getattr(main, "_disk", None)
        store = EmbeddingStore(Frames(crop, axis=None), session.model, sam2_resize=main.sam2_resize,
                               cache_dir=None if disk is None else disk.root, in_memory=disk is None,
                               dtype=main.dtype, lru_slices=1)
    stores[key] = store
    while len(stores) > CROP_STORES_KEPT:
        stores.popitem(last=False)
    return store.get(0)


def remove_small_regions(data: MaskSet, shape, min_area: int, nms_thresh: float) -> MaskSet:
    """SAM 1's ``postprocess_small_regions``: fill holes and drop islands smaller than
    ``min_area`` (8-connected), then box NMS preferring masks that did not change."""
    from torchvision.ops.boxes import batched_nms

    new, boxes, unchanged = [], [], []
    for cut in data.masks:
        m, r, c = cut.mask, cut.row, cut.col
        # a window reaching min_area beyond the box (or to the slice's edge): a background region
        # touching its rim holds a whole min_area-wide strip, so it is large in the slice too
        r0, c0 = max(r - min_area, 0), max(c - min_area, 0)
        r1, c1 = min(r + m.shape[0] + min_area, shape[0]), min(c + m.shape[1] + min_area, shape[1])
        win = np.zeros((r1 - r0, c1 - c0), bool)
        win[r - r0 : r - r0 + m.shape[0], c - c0 : c - c0 + m.shape[1]] = m
        filled, a = _small_regions(win, min_area, holes=True)
        cleaned, b = _small_regions(filled, min_area, holes=False)
        box = _box(cleaned, r0, c0)
        x0, y0, x1, y1 = box
        new.append(Cut(cleaned[y0 - r0 : y1 - r0 + 1, x0 - c0 : x1 - c0 + 1], y0, x0) if cleaned.any() else cut)
        boxes.append(box)
        unchanged.append(not (a or b))
    boxes = torch.as_tensor(np.array(boxes, np.int64).reshape(-1, 4))
    scores = torch.as_tensor(unchanged, dtype=torch.float)
    keep = batched_nms(boxes.float(), scores, torch.zeros(len(boxes)), nms_thresh).numpy()
    out = data.take(keep)
    for j, i in enumerate(keep):
        if not unchanged[i]:
            out.boxes[j] = boxes[i].numpy()
            out.masks[j] = new[i]
    return out


def _box(mask: np.ndarray, r0: int, c0: int) -> list[int]:
    """(x0, y0, x1, y1) inclusive of a window mask placed at (r0, c0); zeros when empty
    (as ``batched_mask_to_box``)."""
    rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
    if not len(rows):
        return [0, 0, 0, 0]
    return [c0 + int(cols[0]), r0 + int(rows[0]), c0 + int(cols[-1]), r0 + int(rows[-1])]


def _small_regions(mask: np.ndarray, min_area: int, holes: bool):
    """(mask, changed): background regions (``holes``) or mask regions smaller than
    ``min_area`` flipped; the largest island is kept when every island is small."""
    from skimage.measure import label

    regions = label(~mask if holes else mask, connectivity=2)
    sizes = np.bincount(regions.ravel())[1:]
    small = np.flatnonzero(sizes < min_area) + 1
    if not len(small):
        return mask, False
    if holes:
        return mask | np.isin(regions, small), True
    big = np.setdiff1d(np.arange(1, len(sizes) + 1), small)
    if not len(big):
        big = np.array([int(np.argmax(sizes)) + 1])
    return np.isin(regions, big), True
