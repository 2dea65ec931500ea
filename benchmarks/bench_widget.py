"""What a click costs in the napari widget, against the same work done without napari.

    xvfb-run -a python benchmarks/bench_widget.py [--slices 12] [--size 512]

Model: random-weight tiny SAM 2 (napari_sam_stack.testing: image_size 256, Hiera embed_dim 32,
stages [1,1,2,1]); timings are for this model on this machine, the ratios are what matter:

- click -> preview on an encoded slice, vs a bare ``Session.predict`` (one decoder call):
  the widget's overhead (reading the layers, the worker round trip, writing the preview);
- click on a slice not encoded yet while the precompute of the stack runs, vs one bare
  encoder pass + decoder call (the brief: "answered after about one encoder pass");
- the longest gap of a 10 ms Qt timer while embeddings compute (the viewer stays live);
- selecting an object with 10 prompted slices in the objects panel (its prompts back in the
  layers, the preview repainted, the viewer on its first prompted slice, events processed),
  against the issue's budget of 100 ms, with 20 other objects in the annotation.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--slices", type=int, default=12)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--clicks", type=int, default=8)
    args = ap.parse_args()
    os.environ["NAPARI_SAM_STACK_CACHE"] = tempfile.mkdtemp(prefix="bench-widget-")

    from napari_sam_stack import Session
    from napari_sam_stack.testing import load_tiny_sam2, synthetic_nuclei

    model = load_tiny_sam2(tempfile.mkdtemp())
    n, size = args.slices, args.size
    image, _ = synthetic_nuclei(shape=(n, size, size), n_nuclei=6, seed=0)

    import napari
    import numpy as np
    from qtpy.QtCore import QElapsedTimer, QTimer
    from qtpy.QtWidgets import QApplication

    from napari_sam_stack._widget import SamStackWidget

    rng = np.random.default_rng(0)
    clicks = rng.uniform(size * 0.2, size * 0.8, (args.clicks, 2))

    # -- the widget
    viewer = napari.Viewer()
    layer = viewer.add_image(image)
    widget = SamStackWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.image_layer = layer
    widget.set_model(model)
    answered: dict[int, float] = {}
    added: list[float] = []
    original = widget._on_prediction

    def on_prediction(i, pred):
        original(i, pred)
        answered[i] = time.perf_counter()

    widget._on_prediction = on_prediction

    def click_and_time(i, p) -> float:
        answered.pop(i, None)
        viewer.dims.set_current_step(0, i)
        t0 = time.perf_counter()
        widget.points_layer.add([i, *p])  # napari adds the point, then our handler submits the decoder call
        added.append(time.perf_counter() - t0)
        while i not in answered:
            QApplication.processEvents()
            time.sleep(0.0005)  # let the worker have the GIL, as an idle event loop would
        return answered[i] - t0

    # -- bare encoder pass + decoder call, in a separate session (its own cache)
    ref = Session(image, model, axis=0, cache_dir=tempfile.mkdtemp())
    enc = []
    for i in (0, 1, 2):
        t = time.perf_counter()
        ref.embeddings.get(i)
        ref.predict(i, points=[clicks[0]], point_labels=[1])
        enc.append(time.perf_counter() - t)
    encode_s = statistics.median(enc)

    # -- event-loop gaps while the whole stack is encoded, and a click on the last slice meanwhile
    gaps, last = [], [QElapsedTimer()]
    last[0].start()

    def tick():
        gaps.append(last[0].restart())

    timer = QTimer()
    timer.timeout.connect(tick)
    timer.start(10)
    widget.compute_embeddings()
    during = click_and_time(n - 1, clicks[0])
    still_running = widget._task is not None
    widget.wait()
    timer.stop()

    # -- click -> preview vs the same decoder call without napari, interleaved (same load, same embedding)
    s = widget.session
    bare, gui = [], []
    s.predict(0, points=[clicks[0]], point_labels=[1])  # warm-up
    for p in clicks:
        t = time.perf_counter()
        s.predict(0, points=[p], point_labels=[1])
        bare.append(time.perf_counter() - t)
        widget.clear_object()
        gui.append(click_and_time(0, p))

    # -- select an object with 10 prompted slices (and show its prompts / preview), 20 other objects around
    widget.clear_object()
    n_prompted = min(10, n)
    for k in range(20):  # other objects, one click each
        click_and_time(k % n, rng.uniform(size * 0.2, size * 0.8, 2))
        widget.next_object()
    big = widget.obj_id
    for i in range(n_prompted):
        click_and_time(i, clicks[i % len(clicks)])
    widget.next_object()
    small = widget.obj_id
    click_and_time(n - 1, clicks[0])
    select, select_cpu = [], []
    for _ in range(6):
        for o in (small, big):
            t, c = time.perf_counter(), time.thread_time()
            widget.select_object(o)
            QApplication.processEvents()  # the viewer's redraw of the new slice included
            if o == big:
                select.append(time.perf_counter() - t)
                select_cpu.append(time.thread_time() - c)
    n_points = len(widget.points_layer.data)
    viewer.close()

    ms = lambda x: f"{1000 * x:.1f} ms"  # noqa: E731
    b, g = statistics.median(bare), statistics.median(gui)
    print(f"tiny SAM 2 (256 px input), stack {n} x {size} x {size} uint16, {args.clicks} clicks")
    print(f"bare Session.predict (one decoder call):     median {ms(b)}")
    print(f"widget click -> preview (encoded slice):     median {ms(g)}   ratio widget/bare {g / b:.2f}")
    print(f"  of which Points.add + our event handler (GUI thread): median {ms(statistics.median(added[1:]))}")
    print(f"bare encoder pass + decoder call:            median {ms(encode_s)}")
    print(f"widget click on an unencoded slice during the precompute: {ms(during)}   "
          f"ratio to encoder+decoder {during / encode_s:.2f}   (precompute still running: {still_running})")
    print(f"longest gap of a 10 ms Qt timer while embeddings computed: {max(gaps)} ms over {len(gaps)} ticks")
    sel = statistics.median(select)
    print(f"select an object with {n_prompted} prompted slices ({n_points} points shown, 21 other objects): "
          f"median {ms(sel)}, max {ms(max(select))}   ratio to the 100 ms budget {sel / 0.1:.2f}   "
          f"ratio to one decoder call {sel / b:.1f}")
    cpu = statistics.median(select_cpu)
    print(f"  GUI-thread CPU time of that select (what it costs without waiting for a core): median {ms(cpu)}   "
          f"ratio to the 100 ms budget {cpu / 0.1:.2f}")


if __name__ == "__main__":
    main()
