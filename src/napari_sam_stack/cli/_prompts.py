"""Prompt files for ``segment --prompts``: our JSON, and napari's Points / Shapes CSV exports.

Everything is checked against the image (slice count, slice size) before a model loads,
and comes out in napari's coordinates (pixel centres on integers), as Session takes them.
The formats are documented in docs/cli.md.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import PromptError
from ._common import MAX_ID, plural

POSITIVE = ("1", "true", "positive", "pos", "+", "object", "fg", "foreground")
NEGATIVE = ("0", "false", "negative", "neg", "-", "background", "bg")
OBJ_COLUMNS = ("obj", "object", "obj_id", "object_id", "id", "label_id")
LABEL_COLUMNS = ("label", "labels", "positive", "point_label")


@dataclass
class Item:
    """One object's prompt on one slice, in napari coordinates."""

    obj: int
    index: int
    points: list = field(default_factory=list)  # [[row, col], ...]
    labels: list = field(default_factory=list)  # 1 / 0 per point
    box: list | None = None  # [row_min, col_min, row_max, col_max] (napari coordinates)
    where: str = ""

    def kwargs(self) -> dict:
        return {"points": self.points or None, "point_labels": self.labels or None, "box": self.box}


class View:
    """How file coordinates map to the session: slice count, slice size, and for napari CSVs
    with one column per image axis, which column is the slice / row / col / fixed axis."""

    def __init__(self, n: int, frame_shape, axis, spatial, fixed, channel_axis, ndim: int):
        self.n, (self.rows, self.cols) = n, (int(frame_shape[0]), int(frame_shape[1]))
        self.axis, self.spatial, self.fixed = axis, list(spatial), dict(fixed)
        self.dims = [d for d in range(ndim) if d != channel_axis]  # napari layer axes (no channel axis)

    def check_point(self, r: float, c: float, where: str) -> None:
        if not (math.isfinite(r) and math.isfinite(c)):
            raise PromptError(f"{where}: coordinates must be finite numbers")
        if not (-0.5 <= r <= self.rows - 0.5 and -0.5 <= c <= self.cols - 0.5):
            raise PromptError(f"{where}: point (row {r:g}, col {c:g}) lies outside the {self.rows} x {self.cols} slice "
                              f"(rows 0..{self.rows - 1}, cols 0..{self.cols - 1})")

    def check_index(self, z, where: str) -> int:
        if isinstance(z, bool) or not isinstance(z, (int, float)) or not math.isfinite(z) or z != int(z):
            raise PromptError(f"{where}: the slice must be a whole number, got {z!r}")
        if not 0 <= z < self.n:
            raise PromptError(f"{where}: slice {int(z)} is out of range: the image has {plural(self.n, 'slice')} (0..{self.n - 1})")
        return int(z)

    def split(self, coords, where: str) -> tuple[int, float, float]:
        """A napari layer coordinate (2, 3 or one per image axis) -> (slice, row, col)."""
        coords = [float(v) for v in coords]
        if len(coords) == 2:
            z, r, c = 0, *coords
            if self.n != 1:
                raise PromptError(f"{where}: a 2D point, but the image has {self.n} slices (give axis-0 as the slice)")
        elif len(coords) == 3 and len(self.dims) != 3:
            z, r, c = coords
        elif len(coords) == len(self.dims):
            by_dim = dict(zip(self.dims, coords))
            for d, i in self.fixed.items():
                if d in by_dim and round(by_dim[d]) != i:
                    raise PromptError(f"{where}: the point is at index {by_dim[d]:g} of axis {d}, but that axis is fixed at {i}")
            z = 0 if self.axis is None else by_dim[self.axis]
            r, c = (by_dim[d] for d in self.spatial)
        else:
            raise PromptError(f"{where}: {len(coords)} coordinates; expected 2, 3 (slice, row, col) or {len(self.dims)}")
        z = self.check_index(round(z) if abs(z - round(z)) < 1e-6 else z, where)
        self.check_point(r, c, where)
        return z, r, c


def _obj(value, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value != int(value):
        raise PromptError(f"{where}: the object id must be a whole number, got {value!r}")
    if not 1 <= value <= MAX_ID:
        raise PromptError(f"{where}: object ids go from 1 to {MAX_ID} (0 is background), got {int(value)}")
    return int(value)


def _label(value, where: str) -> int:
    t = str(value).strip().lower()
    if t in POSITIVE or t == "1.0":
        return 1
    if t in NEGATIVE or t == "0.0":
        return 0
    raise PromptError(f"{where}: point label {value!r} is neither positive (1) nor negative (0)")


# ---------------------------------------------------------------------- JSON


def read_json(path: Path, view: View) -> list[Item]:
    """``[{"obj": 1, "index": 5, "points": [[row, col], ...], "labels": [1, 0], "box": [r0, c0, r1, c1]}, ...]``.

    Boxes are pixel bounds, the maximum exclusive (rows r0..r1-1, like a numpy slice or
    scikit-image's ``regionprops`` bbox): ``[0, 0, rows, cols]`` is the whole slice.
    """
    try:
        data = json.loads(path.read_text())
    except UnicodeDecodeError:
        raise PromptError(f"--prompts {path}: not a text file") from None
    except json.JSONDecodeError as e:
        raise PromptError(f"--prompts {path}: not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
    if isinstance(data, dict) and "prompts" in data:
        data = data["prompts"]
    if not isinstance(data, list) or not data:
        raise PromptError(f'--prompts {path}: expected a JSON list of {{"obj": id, "index": slice, "points": ..., "box": ...}}')
    items = []
    for k, entry in enumerate(data):
        where = f"--prompts {path.name}, item {k + 1}"
        if not isinstance(entry, dict):
            raise PromptError(f'{where}: expected an object like {{"obj": 1, "index": 0, "points": [[row, col]]}}')
        unknown = set(entry) - {"obj", "index", "points", "labels", "box"}
        if unknown:
            raise PromptError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} (use obj, index, points, labels, box)")
        if "obj" not in entry or "index" not in entry:
            raise PromptError(f'{where}: needs "obj" (object id) and "index" (slice)')
        item = Item(_obj(entry["obj"], where), view.check_index(entry["index"], where), where=where)
        pts = entry.get("points") or []
        if not isinstance(pts, list) or not all(isinstance(p, list) and len(p) == 2 for p in pts):
            raise PromptError(f"{where}: points must be a list of [row, col] pairs")
        for p in pts:
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in p):
                raise PromptError(f"{where}: point {p} must be two numbers")
            view.check_point(float(p[0]), float(p[1]), where)
        item.points = [[float(r), float(c)] for r, c in pts]
        labels = entry.get("labels")
        if labels is None:
            item.labels = [1] * len(pts)
        elif not isinstance(labels, list) or len(labels) != len(pts):
            raise PromptError(f"{where}: labels must be a list with one 1/0 per point ({len(pts)})")
        else:
            item.labels = [_label(v, where) for v in labels]
        if entry.get("box") is not None:
            item.box = _json_box(entry["box"], view, where)
        if not item.points and item.box is None:
            raise PromptError(f"{where}: give points or a box")
        items.append(item)
    return items


def _json_box(b, view: View, where: str) -> list[float]:
    if not isinstance(b, list) or len(b) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in b):
        raise PromptError(f"{where}: box must be [row_min, col_min, row_max, col_max] (four numbers)")
    r0, c0, r1, c1 = (float(v) for v in b)
    if not all(math.isfinite(v) for v in (r0, c0, r1, c1)):
        raise PromptError(f"{where}: box coordinates must be finite numbers")
    if r1 <= r0 or c1 <= c0:
        raise PromptError(f"{where}: box {b} is empty (row_max must exceed row_min, col_max col_min)")
    if r0 < 0 or c0 < 0 or r1 > view.rows or c1 > view.cols:
        raise PromptError(f"{where}: box {b} reaches outside the {view.rows} x {view.cols} slice "
                          f"(the maximum is exclusive: the whole slice is [0, 0, {view.rows}, {view.cols}])")
    return [r0 - 0.5, c0 - 0.5, r1 - 0.5, c1 - 0.5]  # pixel bounds -> napari (pixel centres on integers)


# ---------------------------------------------------------------------- napari CSV


def read_csv(path: Path, view: View, obj: int) -> list[Item]:
    """napari's Points CSV (``index, axis-0, ..., [label], [obj]``: all points one object,
    ``obj`` unless an obj column says otherwise) or Shapes CSV (``index, shape-type,
    vertex-index, axis-0, ...``: each rectangle one object, numbered from ``obj``)."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except UnicodeDecodeError:
        raise PromptError(f"--prompts {path}: not a text file") from None
    except csv.Error as e:
        raise PromptError(f"--prompts {path}: not a valid CSV ({e})") from None
    if not rows:
        raise PromptError(f"--prompts {path}: the file is empty")
    head = [h.strip().lower() for h in rows[0]]
    body = [r for r in rows[1:] if any(v.strip() for v in r)]
    axes = sorted((int(h[5:]), k) for k, h in enumerate(head) if h.startswith("axis-") and h[5:].isdigit())
    if len(axes) < 2:
        raise PromptError(f"--prompts {path}: not a napari Points/Shapes CSV (no axis-0, axis-1 columns): "
                          "use File > Save Selected Layers... > .csv, or our JSON format")
    if not body:
        raise PromptError(f"--prompts {path}: no points or shapes in the file")
    for n, r in enumerate(body):
        if len(r) != len(head):
            raise PromptError(f"--prompts {path.name}, line {n + 2}: {len(r)} values for {len(head)} columns")
    cols = [k for _, k in axes]
    if {"shape-type", "vertex-index"} <= set(head):
        return _shapes(path, head, body, cols, view, obj)
    return _points(path, head, body, cols, view, obj)


def _floats(row, cols, where) -> list[float]:
    try:
        values = [float(row[k]) for k in cols]
    except ValueError:
        raise PromptError(f"{where}: coordinates must be numbers") from None
    if not all(math.isfinite(v) for v in values):
        raise PromptError(f"{where}: coordinates must be finite numbers")
    return values


def _points(path, head, body, cols, view, obj) -> list[Item]:
    lab_col = next((head.index(c) for c in LABEL_COLUMNS if c in head), None)
    obj_col = next((head.index(c) for c in OBJ_COLUMNS if c in head), None)
    items: dict[tuple[int, int], Item] = {}
    for n, row in enumerate(body):
        where = f"--prompts {path.name}, line {n + 2}"
        z, r, c = view.split(_floats(row, cols, where), where)
        o = obj
        if obj_col is not None:
            try:
                o = _obj(float(row[obj_col]), where)
            except ValueError:
                raise PromptError(f"{where}: object id {row[obj_col]!r} is not a number") from None
        item = items.setdefault((o, z), Item(o, z, where=where))
        item.points.append([r, c])
        item.labels.append(1 if lab_col is None else _label(row[lab_col], where))
    return list(items.values())


def _shapes(path, head, body, cols, view, obj) -> list[Item]:
    k_index, k_type = head.index("index"), head.index("shape-type")
    shapes: dict[str, list] = {}
    for n, row in enumerate(body):
        shapes.setdefault(row[k_index].strip(), []).append((n + 2, row))
    items = []
    for k, (name, vertices) in enumerate(shapes.items()):
        where = f"--prompts {path.name}, shape {name} (line {vertices[0][0]})"
        kind = vertices[0][1][k_type].strip().lower()
        if kind != "rectangle":
            raise PromptError(f"{where}: a {kind}; only rectangles are boxes (draw boxes with the rectangle tool)")
        pts = np.array([view.split(_floats(row, cols, where), where) for _, row in vertices])
        if len(set(pts[:, 0].tolist())) != 1:
            raise PromptError(f"{where}: the rectangle spans several slices; draw it on one slice")
        r0, c0 = pts[:, 1].min(), pts[:, 2].min()
        r1, c1 = pts[:, 1].max(), pts[:, 2].max()
        if r1 <= r0 or c1 <= c0:
            raise PromptError(f"{where}: the rectangle has no area")
        if obj + k > MAX_ID:
            raise PromptError(f"{where}: object id {obj + k} is over {MAX_ID}")
        items.append(Item(obj + k, int(pts[0, 0]), box=[float(r0), float(c0), float(r1), float(c1)], where=where))
    return items


def read_prompts(path: str, view: View, obj: int = 1) -> tuple[list[Item], bool]:
    """The file's prompts, and whether it named no ids (a Points CSV without an obj column, a
    Shapes CSV): then its objects are numbered from ``obj`` and the caller may renumber them."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise PromptError(f"--prompts {path}: no such file")
    if p.suffix.lower() == ".csv":
        items = read_csv(p, view, obj)
        with open(p, newline="") as f:
            head = [h.strip().lower() for h in next(csv.reader(f))]
        named = "shape-type" not in head and any(c in head for c in OBJ_COLUMNS)
        return items, not named
    if p.suffix.lower() != ".json":
        raise PromptError(f"--prompts {path}: prompts are a .json file (our format) or a napari Points/Shapes .csv, "
                          f"not {p.suffix or 'a file without extension'}")
    return read_json(p, view), False
