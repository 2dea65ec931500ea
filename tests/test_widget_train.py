"""GUI: 'Train on committed labels' trains in the widget's worker, shows the loss, can be cancelled
without touching the previous checkpoint, continues from its state, and puts the trained model in
the model box. Tiny random-weight SAM 2; the labels layer is the annotation's committed labels."""

from __future__ import annotations

import numpy as np
import pytest

from napari_sam_stack.testing import load_tiny_sam2, synthetic_nuclei

pytestmark = pytest.mark.gui


@pytest.fixture
def trained_widget(make_napari_viewer, tmp_path):
    from napari_sam_stack._widget import SamStackWidget

    image, labels = synthetic_nuclei(shape=(4, 48, 64), n_nuclei=3, seed=1)
    viewer = make_napari_viewer()
    layer = viewer.add_image(image)
    target = viewer.add_labels(labels.astype(np.uint32), name="truth")
    widget = SamStackWidget(viewer)
    viewer.window.add_dock_widget(widget, area="right")
    widget.image_layer = layer
    widget.set_model(load_tiny_sam2(tmp_path))
    widget.target_combo.setCurrentText(target.name)
    assert widget.annotation.labels.any()
    panel = widget.panels["train"]
    panel.out_edit.setText(str(tmp_path / "mine.pt"))
    return widget, panel, tmp_path / "mine.pt"


def _wait(qtbot, panel, widget, until, timeout=300_000):
    qtbot.waitUntil(until, timeout=timeout)


def test_train_in_worker_cancel_keeps_checkpoint_then_continue(trained_widget, qtbot):
    import threading

    from napari_sam_stack.finetune import trainer as trainer_mod

    widget, panel, out = trained_widget
    assert panel.parentWidget() is not None  # docked as a section of the widget
    panel.steps_spin.setValue(2)
    task = panel.train()
    assert task is not None
    qtbot.waitUntil(lambda: task.done, timeout=300_000)
    assert out.is_file() and out.with_suffix(".yaml").is_file() and panel.last[:2] == (2, 2)
    assert "loss" in panel.loss_label.text()
    before = out.read_bytes()

    # a second, longer run that is cancelled mid-way: it runs in a worker thread, and the file stays intact
    threads, orig_step = [], trainer_mod.Trainer.step

    def spy(self, sample=None):
        threads.append(threading.current_thread())
        return orig_step(self, sample)

    trainer_mod.Trainer.step = spy
    try:
        panel.continue_check.setChecked(True)
        panel.steps_spin.setValue(40)
        task = panel.train()
        qtbot.waitUntil(lambda: panel.last is not None and panel.last[0] >= 3, timeout=300_000)
        widget.cancel()
        qtbot.waitUntil(lambda: task.done, timeout=300_000)
    finally:
        trainer_mod.Trainer.step = orig_step
    assert threads and all(t is not threading.main_thread() for t in threads)
    assert panel.last[0] < 40 and "cancelled" in panel.loss_label.text()
    assert out.read_bytes() == before  # no save happened before the cancel (every 25 steps)

    # continue from the state of the first run, then use the model
    panel.steps_spin.setValue(3)
    task = panel.train()
    qtbot.waitUntil(lambda: task.done, timeout=300_000)
    assert panel.trainer.step_count == 3 and out.read_bytes() != before
    loaded = panel.use_trained()
    assert widget.model is loaded and widget.model_combo.currentText().startswith("mine.pt")


def test_train_refuses_to_replace_a_file_without_the_checkbox(trained_widget):
    widget, panel, out = trained_widget
    out.write_bytes(b"user's file")
    assert panel.train() is None
    assert out.read_bytes() == b"user's file"
    assert "exists" in widget.status_label.toolTip()
