"""Train the shipped micro SAM 2 (``nss_nuclei_micro``) from random initialisation on the stardist nuclei.

Split (the evaluation in benchmarks/eval_quality.py uses only the held-out part):
  training = img2d columns < 256  +  img3d slices 0-14
  held out = img2d columns >= 256 +  img3d slices 15-30

    python scripts/train_nuclei.py                      # writes src/napari_sam_stack/data/nss_nuclei_micro.{pt,yaml}
    python scripts/train_nuclei.py --steps 50 --out /tmp/x.pt   # a quick try

Architecture: sam2.1 hiera-t config shrunk to a 32-wide, 5-block Hiera trunk, 128-wide neck,
decoder and memory attention (1 layer), 32-channel memory, 3 memory frames, 256 px input
(3.7 M parameters, 14.8 MB).

Initialisation: the builders' random init with ONE change, which is what makes training from
scratch work here: in the mask decoder's cross-attentions (token-to-image, image-to-token, final)
the key projection starts equal to the query projection, both scaled by --qk-gain (3). The
attention logit between a prompt token and an image position then starts as a kernel of their
positional encodings that peaks where they coincide, so from step 0 the decoder attends to the
pixels a click or a box corner lies on. With independent random q/k projections that mapping has
to be learned first; no such run learned it within its budget (one prompt-independent output,
Dice at the random floor; docs/finetune.md has the runs).

Recipe (the defaults; the shipped weights are one invocation of this script), in two phases like
SAM 2's image pre-training followed by joint image + video training:
  1. images: 5400 steps, 10 % of them on 4-8 slice sequences of the training stack, AdamW lr 3e-4
     (warm-up 3 %, cosine to a tenth; at 1e-3 and above this post-norm decoder stalls), SAM 2's loss
     weights (focal 20 with alpha 0.25, dice 1, IoU 1, object score 1);
  2. video: 600 steps from phase 1's weights, half of them on sequences, lr 1e-4, object-score loss
     weight 30, and only the first slice of a sequence prompted (sam2.1 prompts 1-2 slices and adds
     correction clicks on them): every other slice is segmented from memory alone, as a click on one
     slice and propagation are used. After phase 1 a propagated nucleus is segmented well on its own
     slices but never ends: the object-score head says "present" on every slice. The heavier
     object-score loss, and having to say "absent" with no click to help, teach it to stop
     (docs/finetune.md has the measurements).
Both: 4 nuclei per sample, 1 correction click, crops of 96-256 px mirrored/transposed at random,
slices drawn in proportion to their area, 2 threads. 26.1 and 29.6 minutes measured on 2-core AVX-512 CPUs (the
s/step lines print the estimate for the machine at hand; an AVX2-only CPU is ~3x slower). --minutes (30) keeps an
invocation within its budget on a slower machine by shortening both phases alike (see Budget).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src" / "napari_sam_stack" / "data"
SPLIT_COL, SPLIT_Z = 256, 15

D, E = 128, 32  # neck/decoder/memory-attention width, Hiera trunk width
MICRO_OVERRIDES = [
    "++model.image_size=256",
    f"++model.image_encoder.trunk.embed_dim={E}",
    "++model.image_encoder.trunk.stages=[1,1,2,1]",
    "++model.image_encoder.trunk.global_att_blocks=[3]",
    f"++model.image_encoder.neck.backbone_channel_list=[{8 * E},{4 * E},{2 * E},{E}]",
    f"++model.image_encoder.neck.d_model={D}",
    f"++model.image_encoder.neck.position_encoding.num_pos_feats={D}",
    "++model.memory_attention.num_layers=1",
    f"++model.memory_attention.d_model={D}",
    f"++model.memory_attention.layer.d_model={D}",
    f"++model.memory_attention.layer.dim_feedforward={4 * D}",
    f"++model.memory_attention.layer.self_attention.embedding_dim={D}",
    f"++model.memory_attention.layer.cross_attention.embedding_dim={D}",
    "++model.memory_attention.layer.cross_attention.kv_in_dim=32",
    f"++model.memory_encoder.in_dim={D}",
    f"++model.memory_encoder.mask_downsampler.embed_dim={D}",
    f"++model.memory_encoder.fuser.layer.dim={D}",
    "++model.memory_encoder.out_dim=32",
    "++model.memory_encoder.position_encoding.num_pos_feats=32",
    "++model.num_maskmem=3",
]
BASE = "configs/sam2.1/sam2.1_hiera_t.yaml"


def training_pairs():
    import tifffile

    img2d, mask2d = (tifffile.imread(DATA / f) for f in ("img2d.tif", "mask2d.tif"))
    img3d, mask3d = (tifffile.imread(DATA / f) for f in ("img3d.tif", "mask3d.tif"))
    return [(img2d[:, :SPLIT_COL], mask2d[:, :SPLIT_COL], None), (img3d[:SPLIT_Z], mask3d[:SPLIT_Z], 0)]


def tie_decoder_attention(module, gain: float) -> None:
    """Start every cross-attention of the mask decoder with keys = queries (x gain): a positional kernel."""
    import torch

    t = module.sam_mask_decoder.transformer
    attentions = [b.cross_attn_token_to_image for b in t.layers] + [b.cross_attn_image_to_token for b in t.layers]
    with torch.no_grad():
        for att in attentions + [t.final_attn_token_to_image]:
            att.q_proj.weight.mul_(gain)
            att.k_proj.weight.copy_(att.q_proj.weight)


def random_micro_model(folder: Path, seed: int, qk_gain: float = 3.0):
    """The micro architecture with random weights, saved and loaded through load_model."""
    import torch
    from omegaconf import OmegaConf
    from sam2.build_sam import build_sam2

    from napari_sam_stack import load_model
    from napari_sam_stack._checkpoints import sam2_config

    folder.mkdir(parents=True, exist_ok=True)
    cfg, _ = sam2_config(BASE, MICRO_OVERRIDES, video=False)
    OmegaConf.save(cfg, folder / "micro_init.yaml")
    torch.manual_seed(seed)
    module = build_sam2(BASE, None, device="cpu", hydra_overrides_extra=MICRO_OVERRIDES)
    if qk_gain:
        tie_decoder_attention(module, qk_gain)
    torch.save({"model": module.state_dict()}, folder / "micro_init.pt")
    return load_model(checkpoint=folder / "micro_init.pt", config=folder / "micro_init.yaml", device="cpu")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=5400, help="phase 1 (images) steps")
    p.add_argument("--video-steps", type=int, default=600, help="phase 2 (video) steps (0: phase 1 only)")
    p.add_argument("--out", default=str(DATA / "nss_nuclei_micro.pt"))
    p.add_argument("--state", default=None, help="resumable state (default: <out>.state, not shipped)")
    p.add_argument("--resume", action="store_true", help="continue from --state (and its phase-2 state)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=3e-4, help="phase 1 learning rate")
    p.add_argument("--video-lr", type=float, default=1e-4, help="phase 2 learning rate")
    p.add_argument("--save-every", type=int, default=500)
    p.add_argument("--p-sequence", type=float, default=0.1, help="share of phase 1 steps on 4-8 slice sequences")
    p.add_argument("--video-p-sequence", type=float, default=0.5, help="share of phase 2 steps on sequences")
    p.add_argument("--video-prompted-slices", type=int, default=1,
                   help="phase 2: slices of a sequence that get prompts and correction clicks (1: only the first, "
                        "the rest from memory alone, as the model is used; sam2.1 trains with 2)")
    p.add_argument("--video-class-weight", type=float, default=30.0,
                   help="phase 2 weight of the object-score loss (SAM 2's 1): teaches propagation to stop")
    p.add_argument("--max-objects", type=int, default=4, help="nuclei per sample")
    p.add_argument("--focal-weight", type=float, default=20.0, help="weight of the focal loss (SAM 2's 20)")
    p.add_argument("--focal-alpha", type=float, default=0.25, help="foreground weight in the focal loss (SAM's 0.25)")
    p.add_argument("--dice-weight", type=float, default=1.0, help="weight of the dice loss (SAM's 1)")
    p.add_argument("--qk-gain", type=float, default=3.0,
                   help="decoder cross-attention keys start equal to the queries, scaled by this (0: plain random init)")
    p.add_argument("--corrections", type=int, default=1, help="correction clicks per corrected slice (>= 1)")
    p.add_argument("--min-crop", type=int, default=96, help="smallest training crop side (px; the largest is 256)")
    p.add_argument("--no-flips", action="store_true", help="no random mirroring / transposition of the crops")
    p.add_argument("--minutes", type=float, default=30.0,
                   help="time budget of the whole invocation (0: none). A machine too slow for the full recipe "
                        "gets a shorter one (both phases scaled alike, their schedules compressed); the shipped "
                        "weights never needed it")
    args = p.parse_args(argv)

    import tempfile

    import torch

    from napari_sam_stack import load_model
    from napari_sam_stack.finetune import TrainingData

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    state = Path(args.state) if args.state else out.with_name(out.name + ".state")
    images_out = state.with_name(state.name + ".images.pt")  # phase 1's weights (input of phase 2, not shipped)
    data = TrainingData(training_pairs())
    common = dict(max_objects=args.max_objects, focal_alpha=args.focal_alpha, corrections=args.corrections,
                  loss_weights={"loss_mask": args.focal_weight, "loss_dice": args.dice_weight},
                  crop=(args.min_crop, 256), flips=not args.no_flips, sequence=(4, 8), trainable="all", warmup=0.03)
    t0 = time.perf_counter()
    budget = Budget(t0, args.minutes, args.video_steps)
    model = random_micro_model(Path(tempfile.mkdtemp(prefix="nss-micro-")), args.seed, args.qk_gain)
    n = sum(p.numel() for p in model.module.parameters())
    print(f"micro SAM 2: {n / 1e6:.2f} M parameters; {args.steps} + {args.video_steps} steps; "
          f"threads={args.threads}", flush=True)
    last = images_out if args.video_steps else out
    done = run_phase("images", model, data, last, state, args.resume, args.save_every,
                     dict(common, seed=args.seed, steps=args.steps, lr=args.lr, p_sequence=args.p_sequence), budget)
    if args.video_steps:
        model = load_model(checkpoint=images_out, config=images_out.with_suffix(".yaml"), device="cpu")
        # phase 2 resumes only if phase 1 did nothing now (new phase-1 weights start phase 2 afresh)
        run_phase("video", model, data, out, state.with_name(state.name + ".video"), args.resume and not done,
                  args.save_every,
                  dict(common, seed=args.seed + 1, steps=budget.video_steps, lr=args.video_lr,
                       p_sequence=args.video_p_sequence, prompted_slices=args.video_prompted_slices,
                       loss_weights={**common["loss_weights"], "loss_class": args.video_class_weight}), budget)
    took = time.perf_counter() - t0
    print(f"done in {took / 60:.1f} min; wrote {out} and {out.with_suffix('.yaml')}", flush=True)
    return 0


class Budget:
    """Keeps one invocation within ``minutes``: from phase 1's measured s/step it projects the whole run
    (phase 2's steps cost ~2.2 phase-1 steps: sequences of 4-8 slices half the time) and, when the
    projection passes the budget, shortens both phases by the same factor. A shortened phase keeps its
    warm-up and cosine shape over its new length (``Trainer.options["steps"]``)."""

    # a phase-2 step in phase-1 steps (measured 2026-12-06 with one prompted slice: 0.65 / 0.30 s; 2.4-2.5 with
    # sam2.1's prompting before); seconds kept for loading and writing
    PHASE2_COST, MARGIN_S = 2.2, 45.0
    AFTER, EVERY = 100, 50  # steps measured before the first projection; steps between projections

    def __init__(self, t0: float, minutes: float, video_steps: int):
        self.t0, self.limit = t0, minutes * 60.0
        self.video_steps = int(video_steps)

    def check(self, name: str, trainer, start: int, t_phase: float) -> None:
        done = trainer.step_count - start
        if not self.limit or done < self.AFTER or done % self.EVERY:
            return
        now = time.perf_counter()
        per = (now - t_phase) / done
        total = int(trainer.options["steps"])
        if name == "images":
            rest = (total - trainer.step_count) + self.video_steps * self.PHASE2_COST
        else:
            rest = total - trainer.step_count
        left = self.limit - (now - self.t0) - self.MARGIN_S
        if rest * per <= left:
            return
        scale = max(0.0, left / per) / rest  # of what is still to come, what fits
        new_total = min(total, trainer.step_count + int((total - trainer.step_count) * scale))  # may end now
        trainer.options["steps"] = new_total
        if name == "images":
            self.video_steps = max(1, int(self.video_steps * scale)) if self.video_steps else 0
        print(f"time budget {self.limit / 60:g} min: {name} shortened to {new_total} steps"
              + (f", video to {self.video_steps}" if name == "images" and self.video_steps else ""), flush=True)


def run_phase(name, model, data, out: Path, state: Path, resume: bool, save_every: int, options: dict,
              budget: Budget | None = None) -> int:
    """One Trainer run (resumed from ``state`` when asked and present), writing ``out`` at the end; steps done."""
    from napari_sam_stack.finetune import Trainer

    resumed = resume and state.exists()  # a resumed run keeps its stored options; only its length may change
    trainer = Trainer.resume(state, model, data, steps=options["steps"]) if resumed else Trainer(model, data, **options)
    start, t0 = trainer.step_count, time.perf_counter()

    def progress(step, total, loss):
        total = int(trainer.options["steps"])
        if step % 10 == 0 or step == total:
            per = (time.perf_counter() - t0) / max(1, step - start)
            print(f"{name} step {step}/{total} loss {loss:.4f} ({per:.2f} s/step, {(total - step) * per / 60:.1f} min "
                  "left in this phase)", flush=True)
        if budget is not None:
            budget.check(name, trainer, start, t0)

    planned = int(trainer.options["steps"])
    # a shortened phase ends where its new length says (cancel: nothing written), then writes as a full one does
    trainer.fit(progress, lambda: trainer.step_count >= int(trainer.options["steps"]), out=out, state=state,
                save_every=save_every)
    if trainer.step_count < planned:
        trainer.save(out=out, state=state)
    took = time.perf_counter() - t0
    print(f"{name}: {trainer.step_count - start} steps in {took / 60:.1f} min "
          f"({took / max(1, trainer.step_count - start):.2f} s/step)", flush=True)
    return trainer.step_count - start


if __name__ == "__main__":
    raise SystemExit(main())
