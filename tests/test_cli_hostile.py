"""Bad command lines: each exits non-zero with ONE line on stderr (no traceback), before any
model loads, and leaves every file as it was (issue 10's CLI findings, issue 14's messages)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from napari_sam_stack import cli

NO_MODEL = ["--checkpoint", "/nonexistent/never-loaded.pt", "--config", "x.yaml", "--device", "cpu"]


@pytest.fixture
def world(tmp_path):
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.random.default_rng(0).integers(0, 4000, (6, 61, 57), dtype=np.uint16),
                     metadata={"axes": "ZYX"})  # named axes: no "warning:" line about our choice
    tifffile.imwrite(tmp_path / "zcyx.ome.tif", np.zeros((4, 2, 20, 22), np.uint16), metadata={"axes": "ZCYX"}, ome=True)
    tifffile.imwrite(tmp_path / "tzyx.ome.tif", np.zeros((3, 4, 20, 22), np.uint8), metadata={"axes": "TZYX"}, ome=True)
    (tmp_path / "existing.tif").write_bytes(b"precious result")
    (tmp_path / "truncated.json").write_text('[{"obj": 1, "index": 2, "points": [[3, 4]')
    (tmp_path / "notlist.json").write_text('{"obj": 1}')
    (tmp_path / "fake.tif").write_text("this is not a tiff")
    (tmp_path / "afile").write_text("a file, not a folder")
    (tmp_path / "table.csv").write_text("a,b\n1,2\n")
    (tmp_path / "ellipse.csv").write_text("index,shape-type,vertex-index,axis-0,axis-1,axis-2\n"
                                          "0,ellipse,0,1,5,5\n0,ellipse,1,1,5,9\n0,ellipse,2,1,9,9\n0,ellipse,3,1,9,5\n")
    (tmp_path / "binary.json").write_bytes(b"\xff\xfe\x00\x81")

    def prompts(name, content):
        (tmp_path / name).write_text(json.dumps(content))

    prompts("obj0.json", [{"obj": 0, "index": 1, "points": [[3, 4]]}])
    prompts("objhuge.json", [{"obj": 2**40, "index": 1, "points": [[3, 4]]}])
    prompts("objbool.json", [{"obj": True, "index": 1, "points": [[3, 4]]}])
    prompts("boxout.json", [{"obj": 1, "index": 1, "box": [50, 10, 62, 22]}])
    prompts("boxempty.json", [{"obj": 1, "index": 1, "box": [50, 22, 40, 10]}])
    prompts("unknown.json", [{"obj": 1, "index": 1, "pointz": [[3, 4]]}])
    prompts("idx.json", [{"obj": 1, "index": 6, "points": [[3, 4]]}])
    prompts("strpt.json", [{"obj": 1, "index": 1, "points": [["a", 4]]}])
    prompts("nothing.json", [{"obj": 1, "index": 1}])
    prompts("labels.json", [{"obj": 1, "index": 1, "points": [[3, 4]], "labels": [2]}])
    return tmp_path


def _snapshot(root):
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


S = "{d}/stack.tif"
CASES = [
    # (argv, fragment of the one-line message)
    (["segment", S, "--point", "1,20,20", "--out", S, "--overwrite"], "that is the input"),
    (["segment", S, "--point", "1,20,20", "--out", "{d}/existing.tif"], "exists; to replace it pass --overwrite"),
    (["segment", S, "--point", "inf,2,3", "--out", "{d}/o.tif"], "finite"),
    (["segment", S, "--point", "1,nan,3", "--out", "{d}/o.tif"], "finite"),
    (["segment", S, "--point", "-1,20,20", "--out", "{d}/o.tif"], "slice -1 is out of range"),
    (["segment", S, "--point", "99,20,20", "--out", "{d}/o.tif"], "slice 99 is out of range"),
    (["segment", S, "--point", "1,500,20", "--out", "{d}/o.tif"], "outside the 61 x 57 slice"),
    (["segment", S, "--point", "1.5,2,3", "--out", "{d}/o.tif"], "whole number"),
    (["segment", S, "--point", "1,2", "--out", "{d}/o.tif"], "slice,row,col"),
    (["segment", S, "--prompts", "{d}/truncated.json", "--out", "{d}/o.tif"], "truncated.json: not valid JSON (line 1"),
    (["segment", S, "--prompts", "{d}/fake.tif", "--out", "{d}/o.tif"], "are a .json file (our format) or a napari"),
    (["segment", S, "--prompts", "{d}/binary.json", "--out", "{d}/o.tif"], "not a text file"),
    (["segment", S, "--prompts", "{d}/notlist.json", "--out", "{d}/o.tif"], "expected a JSON list"),
    (["segment", S, "--prompts", "{d}/obj0.json", "--out", "{d}/o.tif"], "object ids go from 1"),
    (["segment", S, "--prompts", "{d}/objhuge.json", "--out", "{d}/o.tif"], "object ids go from 1 to 4294967295"),
    (["segment", S, "--prompts", "{d}/objbool.json", "--out", "{d}/o.tif"], "must be a whole number"),
    (["segment", S, "--prompts", "{d}/boxout.json", "--out", "{d}/o.tif"], "the whole slice is [0, 0, 61, 57]"),
    (["segment", S, "--prompts", "{d}/boxempty.json", "--out", "{d}/o.tif"], "is empty"),
    (["segment", S, "--prompts", "{d}/unknown.json", "--out", "{d}/o.tif"], "unknown key(s) pointz"),
    (["segment", S, "--prompts", "{d}/idx.json", "--out", "{d}/o.tif"], "item 1: slice 6 is out of range"),
    (["segment", S, "--prompts", "{d}/strpt.json", "--out", "{d}/o.tif"], "must be two numbers"),
    (["segment", S, "--prompts", "{d}/nothing.json", "--out", "{d}/o.tif"], "give points or a box"),
    (["segment", S, "--prompts", "{d}/labels.json", "--out", "{d}/o.tif"], "neither positive (1) nor negative (0)"),
    (["segment", S, "--prompts", "{d}/missing.json", "--out", "{d}/o.tif"], "no such file"),
    (["segment", S, "--prompts", "{d}/table.csv", "--out", "{d}/o.tif"], "not a napari Points/Shapes CSV"),
    (["segment", S, "--prompts", "{d}/ellipse.csv", "--out", "{d}/o.tif"], "only rectangles are boxes"),
    (["segment", S, "--point", "1,2,3", "--out", "{d}/nowhere/o.tif"], "does not exist"),
    (["segment", S, "--point", "1,2,3", "--out", "{d}/o.png"], "write labels as .tif"),
    (["segment", S, "--point", "1,2,3"], "give --out"),
    (["segment", S, "--out", "{d}/o.tif"], "no prompt"),
    (["segment", S, "--point", "1,2,3", "--start", "5", "--stop", "2", "--out", "{d}/o.tif"], "--stop 2 is before --start 5"),
    (["segment", S, "--point", "1,2,3", "--max-absent", "-1", "--out", "{d}/o.tif"], "must be 0 or more"),
    (["segment", S, "--negative", "1,2,3", "--out", "{d}/o.tif"], "object 1 has only negative points (--negative 1,2,3)"),
    (["segment", S, "--point", "1,2,3", "--max-absent", "never", "--out", "{d}/o.tif"], "--max-absent"),
    (["segment", S, "--point", "1,2,3", "--seed-labels", S, "--seed-slice", "99", "--out", "{d}/o.tif"], "out of range"),
    (["segment", "{d}/missing.tif", "--point", "1,2,3", "--out", "{d}/o.tif"], "no such file"),
    (["segment", "{d}/tzyx.ome.tif", "--point", "1,2,3", "--out", "{d}/o.tif"], "--axis z --fixed t=0"),
    (["segment", "{d}/tzyx.ome.tif", "--axis", "z", "--fixed", "t=abc", "--point", "1,2,3", "--out", "{d}/o.tif"], "whole number"),
    (["segment", "{d}/tzyx.ome.tif", "--axis", "q", "--point", "1,2,3", "--out", "{d}/o.tif"], "the image's axes are TZYX"),
    (["embed", "{d}/zcyx.ome.tif"], "has 2 channels (axis C)"),
    (["embed", "{d}/zcyx.ome.tif", "--channel", "5"], "channel 5 does not exist: zcyx.ome.tif has 2 channel(s)"),
    (["embed", "{d}/fake.tif"], "not a readable TIFF"),
    (["embed", S, "--cache-dir", ""], "empty path"),
    (["embed", S, "--cache-dir", "{d}/afile"], "is a file"),
    (["embed", S, "--workers", "0"], "must be 1 or more"),
    (["embed", "{d}/nothing-*.tif"], "no file matches"),
    (["auto", S, "--out", "{d}/existing.tif"], "exists"),
    (["auto", S, "--out", S, "--overwrite"], "that is the input"),
    (["auto", S, "--key-slices", "99", "--out", "{d}/a.tif"], "--key-slices 99 is out of range"),
    (["auto", S, "--pred-iou-thresh", "2", "--out", "{d}/a.tif"], "from 0 to 1"),
    (["auto", S, "{d}/tzyx.ome.tif", "--out", "{d}/existing.tif"], "give an existing folder"),
    (["cache", "clear", "abcdef12", "--cache-dir", "{d}"], "no cache entry"),
    (["cache", "info", "--cache-dir", "{d}/afile"], "is a file"),
]


@pytest.mark.parametrize("argv, fragment", CASES, ids=[f"{k:02d}-{c[0][0]}" for k, c in enumerate(CASES)])
def test_bad_command_line_is_one_line_and_changes_nothing(world, capsys, argv, fragment):
    argv = [a.format(d=world) for a in argv]
    if argv[0] in ("segment", "embed", "auto"):
        argv += NO_MODEL  # a case that got as far as loading a model would fail on this instead
    before = _snapshot(world)
    rc = cli.main(argv)
    out, err = capsys.readouterr()
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in err and "never-loaded" not in err
    assert not any(w in err for w in ("Session.", "add_prompt(", "pass config=", "OverflowError", "JSONDecodeError"))
    assert _snapshot(world) == before  # no file changed, none created


MODEL_CASES = [
    (["--model", "nope", "--checkpoint", "{d}/m.pt", "--config", "c.yaml"], "--model nope and --checkpoint"),
    (["--model", "sam2.1_hiera_tiny", "--checkpoint", "{d}/m.pt"], "name two models: give one"),
    (["--checkpoint", "{d}/m.pt", "--config", "c.yaml", "--model-type", "vit_b"], "contradict each other"),
    (["--config", "c.yaml"], "--config c.yaml describes a --checkpoint file"),
    (["--model", "sam_vit_b", "--model-type", "vit_b"], "--model-type vit_b describes a --checkpoint file"),
    (["--model", "nope"], "unknown model 'nope': the registry has"),
]


@pytest.mark.parametrize("command", ["segment", "embed", "auto"])
@pytest.mark.parametrize("flags, fragment", MODEL_CASES, ids=[f"m{k}" for k in range(len(MODEL_CASES))])
def test_model_flags_that_conflict_or_name_nothing_are_refused_first(world, capsys, monkeypatch, command, flags,
                                                                      fragment):
    # --model was silently ignored next to --checkpoint, and an unknown name came back in Python
    # words (load_model(checkpoint=...)); both are refused before the image is even read.
    (world / "m.pt").write_bytes(b"never loaded")
    monkeypatch.setattr("napari_sam_stack.io.read_image", lambda *a, **k: pytest.fail("read the image"))
    argv = {"segment": ["segment", "{d}/stack.tif", "--point", "5,30,20", "--out", "{d}/y.tif"],
            "embed": ["embed", "{d}/stack.tif"], "auto": ["auto", "{d}/stack.tif", "--out", "{d}/a.tif"]}[command]
    before = _snapshot(world)
    rc = cli.main([a.format(d=world) for a in argv + flags])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert fragment in lines[0]
    assert "load_model(" not in err and "Unknown model" not in err
    if "unknown model" in fragment:
        assert all(f in lines[0] for f in ("--checkpoint", "--config", "--model-type", "nss_nuclei_micro"))
    assert _snapshot(world) == before


def test_download_of_an_unknown_name_speaks_cli(capsys):
    assert cli.main(["download", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown model 'nope'") and "--checkpoint" in err and "load_model" not in err
