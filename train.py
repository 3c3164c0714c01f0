"""
UniGame post-training: Algorithm 1 of arXiv 2511.19413, the SFT baseline, two positive controls, the toy's pretraining.

CPU, the default: UniGame on the shipped tiny-toy base (weights/tiny-toy) for 300 steps, then base vs UniGame on val
    python train.py
The SFT baseline (same steps, data and und_lr), the controls (U learns from pixel-PGD or augmented images instead of
C's candidates), and rebuilding the tiny-toy base (Eq. 3; about 24 min on 2 cores):
    python train.py --mode sft --out_dir out/sft
    python train.py --mode pgd --out_dir out/pgd            # or --mode augment
    python train.py --mode pretrain --seed 0 --out_dir weights/tiny-toy
One GPU, and eight GPUs (DDP; each rank keeps its own buffer), on the paper's data (realdata.py); real backbones
default to bf16, --micro-batch 4 and activation checkpointing, which `python model.py --memory janus-pro-7b` finds fit
80 GB (never run here: no GPU, no weights):
    python train.py --backbone janus-pro-7b --eps 0.02 --data vqav2 --questions Q.json --annotations A.json \
        --images train2014/ --captions cc3m.tsv --judge ViT-L-14:/weights/clip.bin --out_dir out/janus7b
    torchrun --standalone --nproc_per_node=8 train.py --backbone janus-pro-7b --eps 0.02 --data vqav2 ...
"""

import argparse
import hashlib
import json
import math
import os
import resource
import signal
import time

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import data
import evaluate
import model
import reader as scene_reader
import realdata
import scorers
import toy_umm
from buffer import HardBuffer, Judge, calibrate, hardness, select_hard
from perturber import Perturber

# -----------------------------------------------------------------------------
p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
# model
p.add_argument('--backbone', default='tiny-toy', help=f"registry name: {', '.join(model.BACKBONES)}")
p.add_argument('--mode', default='unigame', choices=['pretrain', 'sft', 'unigame', 'pgd', 'augment'],
               help='pretrain: the toy base (Eq. 3); sft: clean CE on the LoRA; unigame: Algorithm 1; the positive '
                    'controls, Eq. 6 with other hard rows: pgd (pixel PGD images, Madry) or augment (data.augment)')
p.add_argument('--init', default=toy_umm.BASE_DIR,
               help='tiny-toy base checkpoint dir (base.pt, judge.pt); default: the one the repository ships, '
                    'weights/tiny-toy')
p.add_argument('--out_dir', '--out-dir', default=None, help='run directory (default: out/<mode>)')
p.add_argument('--decode', default='regen', choices=['regen', 't2i'],
               help="Janus candidates: regen (x's VQ codes re-predicted in one teacher-forced pass, delta on the image "
                    "states) or t2i (autoregressive text-to-image from the question, delta on each fed-back code)")
p.add_argument('--decoder', default='vae', choices=['vae', 'diffusion'],
               help="toy G: vae (one-step VAE decode of adapter(z)) or diffusion (SD-1.5 UNet img2img conditioned on "
                    "adapter(z) by cross-attention; never trained here, so shape-tested only)")
for part in ('siglip', 'qwen', 'sd'):
    p.add_argument(f'--toy-{part}', default=None,
                   help=f"--backbone toy: its {part} part, a local dir or hub id (default: toy_umm.build_toy's hub id)")
p.add_argument('--gen-temperature', type=float, default=None,
               help='Janus image-code sampling temperature; 0 = argmax (default: 0 for regen, 1 for t2i)')
# data
p.add_argument('--data', default='shapes', choices=['shapes', 'vqav2'],
               help="training data: shapes (the synthetic world, the tiny backbones' default) or vqav2 (the paper's, "
                    "from the official files: --questions, --annotations, --images; realdata.py)")
p.add_argument('--questions', default=None, help='--data vqav2: the official questions JSON, e.g. '
                                                 'v2_OpenEnded_mscoco_train2014_questions.json')
p.add_argument('--annotations', default=None, help='--data vqav2: the official annotations JSON (10 answers each)')
p.add_argument('--images', default=None, help='--data vqav2: the COCO folder (COCO_train2014_<12-digit id>.jpg)')
p.add_argument('--captions', default=None,
               help="CC3M-style image/caption pairs (TSV caption<TAB>image or JSON lines {image, caption}): a T2I "
                    "loss on the generation branch beside U's (Appendix B.1); default: none")
p.add_argument('--t2i-weight', type=float, default=1.0, help="weight of the --captions T2I loss in U's step")
# LoRA
p.add_argument('--lora-r', type=int, default=model.LORA_DEFAULTS['r'], help='LoRA rank (the paper gives none)')
p.add_argument('--lora-alpha', type=float, default=model.LORA_DEFAULTS['alpha'], help='LoRA alpha')
p.add_argument('--lora-dropout', type=float, default=model.LORA_DEFAULTS['dropout'], help='LoRA dropout')
p.add_argument('--lora-targets', default=','.join(model.LORA_TARGETS),
               help="comma-separated module names in the LM that get LoRA (the paper names none; e.g. add "
                    "gate_proj,up_proj,down_proj for the MLPs)")
# perturber
p.add_argument('--eps', type=float, default=0.02,
               help="eps_max: the per-token L2 norm of delta relative to the RMS token norm of the tokens it perturbs, "
                    "so 0.02 (the paper's) moves every token by 2%% of a token's size on every backbone")
p.add_argument('--perturber-width', type=int, default=None, help='hidden width of C (default: H; 256 on H=4096 = 2.2M)')
p.add_argument('--gen-lr', type=float, default=5e-3, help="C's AdamW learning rate (paper: 5e-3)")
p.add_argument('--lam', type=float, default=1.0,
               help="Eq. 7's lambda on ||delta||^2, in eps's relative units (mean over tokens)")
p.add_argument('--attack', default='decoded', choices=['decoded', 'token'],
               help="L_C on U(Enc(G(z + delta))) (decoded: Eq. 7 and Algorithm 1, lines 5-7) or on U(z + delta) "
                    "(token: Table 4's 'adversarial emb.' ablation)")
p.add_argument('--perturb', default='adversarial', choices=['adversarial', 'random'],
               help='random: delta is noise of norm eps (Table 4 ablation), C is not trained')
p.add_argument('--updates', default='1:1', help='G:U update ratio: C steps per U steps, e.g. 1:1, 1:5, 1:10')
p.add_argument('--space', default='decoded', choices=['decoded', 'token'],
               help="where hard samples live: decoded images G(z + delta) (UniGame) or the perturbed tokens z + delta "
                    "themselves (Table 4's embedding-only ablation; --filter cosine compares tokens)")
# buffer
p.add_argument('--buffer-size', type=int, default=50,
               help="capacity of B (paper: 50); 0 = no buffer (Table 4): a mining step's hard candidates are learnt "
                    "from at once, then dropped")
p.add_argument('--candidates', type=int, default=1,
               help='K candidates decoded per sample when mining; K > 1 needs a sampling decoder or --perturb random')
p.add_argument('--mine-every', type=int, default=1, help='mine candidates every m steps (Algorithm 1, line 9)')
p.add_argument('--filter', default='clip', choices=['clip', 'cosine', 'none'],
               help='semantic filter: judge text-image (clip), candidate-original image cosine, or none; its score is '
                    'calibrated on clean pairs: 0 = as similar as another scene, 1 = as the clean decode G(z)')
p.add_argument('--judge', default=None,
               help="the filter's CLIP: a judge.pt (default: <init>/judge.pt, the toy's), or for real backbones an "
                    "open_clip MODEL:LOCAL_FILE (e.g. ViT-B-32:/weights/open_clip_vit_b32.bin) or local-dir:DIR "
                    "(open_clip_config.json and weights, e.g. a downloaded laion/CLIP-ViT-B-32-laion2B-s34B-b79K)")
p.add_argument('--min-sim', type=float, default=0.6,
               help='drop candidates whose calibrated similarity is below this (paper: 0.6; --min-sim=-1e9 keeps '
                    'every one)')
p.add_argument('--clip-tau', type=float, default=0.6,
               help="hinge threshold tau, calibrated scale: H = CE - lam_clip*max(0, tau - s) (never adds hardness)")
p.add_argument('--clip-lambda', type=float, default=1.0, help='weight of the hinge in H')
p.add_argument('--calibration', type=int, default=256, help='clean train pairs that set the filter scale at start')
p.add_argument('--filter-zero', default=None, choices=['edit', 'scene'],
               help="what the calibrated 0 is for --filter clip: the judge's score of G(z) with its caption edited by "
                    "one shape or colour word (edit: a label-breaking change; the default on shapes) or with another "
                    "scene's caption (scene: the default on vqav2); --filter cosine always uses another scene")
p.add_argument('--hard-quantile', type=float, default=0.6, help='keep H >= this quantile of the batch (paper: 0.6)')
p.add_argument('--beta', type=float, default=0.5, help='weight of the buffer term in L_U, Eq. 6 (paper: 0.5)')
p.add_argument('--replay', type=int, default=16,
               help="entries of B, mined at earlier steps, replayed per understand step beside this step's accepted "
                    "candidates (Eq. 6)")
p.add_argument('--buffer-policy', default='rescore', choices=['rescore', 'keep', 'consume'],
               help="what replay does to an entry (the paper is silent): rescore its H with U's current CE (learnt "
                    "entries sink and are pushed out by harder ones), keep its mining-time H, or consume it (take it "
                    "out: B then holds only what replay has not reached yet)")
# optim
p.add_argument('--steps', type=int, default=300, help='post-training steps (pretrain: see --pretrain-steps)')
p.add_argument('--batch-size', type=int, default=32, help='clean samples per step and rank')
p.add_argument('--micro-batch', type=int, default=None,
               help='rows per forward pass: the challenge step, mining and the understand step run in chunks of this '
                    'many rows with gradients accumulated, the same update as one pass (0: one pass per step; '
                    'default: 0 on tiny backbones, 4 on real ones, what `python model.py --memory` finds fits)')
p.add_argument('--activation-checkpointing', default=None, choices=['on', 'off'],
               help="recompute each LM layer's activations in backward instead of keeping them (about 1/layers of "
                    "the activation memory for one more forward; default: on for real backbones, off for tiny ones)")
p.add_argument('--und-lr', type=float, default=2e-5, help="U's LoRA AdamW learning rate (paper: 2e-5)")
p.add_argument('--clip-grad-u', type=float, default=0.0,
               help="per-role clipping (Appendix B.2): max L2 norm of U's LoRA gradient, in float32 (0: off)")
p.add_argument('--clip-grad-c', type=float, default=0.0, help="the same for C's gradient (0: off)")
p.add_argument('--train-size', type=int, default=20000,
               help="synthetic train samples for post-training: scenes after the base's pretraining scenes, never "
                    "the same ones")
p.add_argument('--pretrain-steps', type=int, default=3000, help='steps of --mode pretrain (tiny-toy, batch 32)')
# eval
p.add_argument('--log-every', type=int, default=10, help='steps between metrics.jsonl lines')
p.add_argument('--asr-every', type=int, default=1,
               help="steps between measurements of attack success and clean error (greedy answers to the clean rows "
                    "and the accepted candidates; raise it on large backbones)")
p.add_argument('--reader', default=None,
               help="a scene reader outside the game (reader.py) that says which candidates broke their label, logged "
                    "as broken_accepted / broken_rejected (default on tiny-toy: weights/tiny-toy/reader.pt; none: off)")
p.add_argument('--pgd-eps', type=float, default=8.0, help='--mode pgd: L-inf radius of the attack, in 1/255 units')
p.add_argument('--pgd-steps', type=int, default=10, help='--mode pgd: signed-gradient steps of eps/4 each')
p.add_argument('--val-size', type=int, default=1000,
               help='val questions for the final table (0: skip it); --data vqav2: the questions of the last images '
                    'of --questions, held out of training and scored with VQA accuracy at the end')
# system
p.add_argument('--dtype', default=None, choices=['float32', 'bfloat16', 'float16'],
               help='autocast dtype (and the frozen weights\' dtype on real backbones); C, delta, its norm, the losses '
                    'and optimizer states stay float32 (default: bfloat16 on real backbones, float32 on tiny ones)')
p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu', help='cpu or cuda')
p.add_argument('--seed', type=int, default=0, help='seed of init, data order, buffer sampling')
p.add_argument('--save-every', type=int, default=100, help='steps between checkpoints (and one at the end)')
p.add_argument('--resume', action='store_true', help='continue from out_dir/ckpt.pt exactly where it stopped')
p.add_argument('--merge-to', default=None, metavar='DIR',
               help='Janus backbones: after training, also write a Hugging Face model dir with the LoRA merged in '
                    '(JanusForConditionalGeneration.from_pretrained loads it); default: adapter only')
p.add_argument('--max-nan-steps', type=int, default=3, help='stop after this many non-finite losses in a row')
args = p.parse_args()
args.out_dir = args.out_dir or f'out/{args.mode}'


def fail(flag, message):
    p.error(f"{flag}: {message}")


args.dtype = args.dtype or ('float32' if args.backbone.startswith('tiny-') else 'bfloat16')
args.filter_zero = args.filter_zero or ('edit' if args.data == 'shapes' else 'scene')  # edits need shape words
for flag in ('gen_lr', 'und_lr', 'eps', 'pgd_eps'):
    if not (getattr(args, flag) > 0 and math.isfinite(getattr(args, flag))):
        fail('--' + flag.replace('_', '-'), f"must be a finite number > 0, got {getattr(args, flag)}")
args.micro_batch = model.default_micro_batch(args.backbone) if args.micro_batch is None else args.micro_batch
if args.micro_batch < 0:
    fail('--micro-batch', f"must be >= 0 (0: one pass per step), got {args.micro_batch}")
for flag in ('steps', 'batch_size', 'train_size', 'candidates', 'mine_every', 'log_every', 'save_every',
             'pretrain_steps', 'lora_r', 'asr_every', 'calibration', 'pgd_steps'):
    if getattr(args, flag) < 1:
        fail('--' + flag.replace('_', '-'), f"must be >= 1, got {getattr(args, flag)}")
if min(args.buffer_size, args.replay, args.beta, args.lam, args.clip_grad_u, args.clip_grad_c, args.val_size,
       args.t2i_weight) < 0:
    fail('--buffer-size/--replay/--beta/--lam/--clip-grad-u/--clip-grad-c/--val-size/--t2i-weight', 'must be >= 0')
for flag in ('questions', 'annotations', 'images'):
    if getattr(args, flag) and args.data != 'vqav2':
        fail('--' + flag, f"is read with --data vqav2 only (got --data {args.data})")
if not 0 < args.hard_quantile < 1:
    fail('--hard-quantile', f"must be in (0, 1), got {args.hard_quantile}")
try:
    g_updates, u_updates = (int(v) for v in args.updates.split(':'))
    assert g_updates >= 1 and u_updates >= 1
except (ValueError, AssertionError):
    fail('--updates', f"must be G:U with integers >= 1 (e.g. 1:5), got {args.updates!r}")
if args.space == 'token' and args.filter == 'clip':
    fail('--filter', "clip needs decoded images; with --space token use --filter cosine (token cosine) or none")
# K > 1 candidates of a sample differ only if something samples: the noise, or the decoder (Janus at a temperature
# > 0: --gen-temperature, default 1 for t2i and 0 for regen; the toy decoder never samples)
sampling = args.backbone not in ('tiny-toy', 'toy') and args.space == 'decoded' and \
    (args.gen_temperature if args.gen_temperature is not None else float(args.decode == 't2i')) > 0
if args.candidates > 1 and args.perturb == 'adversarial' and not sampling:
    fail('--candidates', f"K = {args.candidates} would give identical candidates: C and this decoder are "
                         f"deterministic; use a sampling decoder (Janus --gen-temperature > 0 or --decode t2i) "
                         f"or --perturb random")
# the filter's judge: checked now, before a large backbone loads (tiny-toy's comes with its base, checked below)
if args.backbone == 'tiny-toy' and args.mode != 'pretrain' and not os.path.isfile(os.path.join(args.init, 'base.pt')):
    try:
        toy_umm.base_file(args.init)  # raises the message that names the file and the rebuild command
    except toy_umm.BaseError as e:
        fail('--init', str(e).removeprefix('--init '))
# the filter's judge: checked now, before a large backbone loads; only the tiny-toy's defaults to its base's judge.pt
judge_path = args.judge or (os.path.join(args.init, 'judge.pt') if args.backbone == 'tiny-toy' else '')
judge_path = judge_path if args.mode == 'unigame' and args.filter != 'none' and args.space == 'decoded' else None
if judge_path == '':
    fail('--judge', f"--filter {args.filter} on {args.backbone} needs a real CLIP: pass an open_clip "
                    f"MODEL:LOCAL_FILE (e.g. ViT-B-32:/weights/open_clip_vit_b32.bin) or local-dir:DIR, "
                    f"or use --filter none")
if judge_path and not os.path.isfile(judge_path):  # not a toy judge.pt: an open_clip CLIP, found before U loads
    try:
        judge = Judge.from_pretrained(judge_path)
    except FileNotFoundError as e:
        fail('--judge', f"{e}; or a judge.pt, or --filter none")
# the reader that checks the filter from outside the game: the toy's scenes only
reader_path = args.reader or (scene_reader.PATH if args.backbone == 'tiny-toy' and args.data == 'shapes' else 'none')
reader = None
if args.mode == 'unigame' and args.space == 'decoded' and reader_path != 'none':
    if args.backbone != 'tiny-toy' or args.data != 'shapes':
        fail('--reader', f"reads the toy's 36 px scenes only, not {args.backbone}'s or {args.data}'s images; use "
                         f"--reader none")
    try:
        reader = scene_reader.load(reader_path)
    except ValueError as e:
        fail('--reader', str(e))
# the paper's data, read now so that a bad file fails before a large backbone loads; images are read when drawn
val_set = caption_set = None
if args.mode != 'pretrain':
    try:
        if args.data == 'vqav2':
            train_set, val_set = realdata.vqav2(args.questions, args.annotations, args.images, args.val_size)
        if args.captions:
            caption_set = realdata.CaptionPairs(args.captions)
    except (FileNotFoundError, ValueError) as e:  # each names its file (and flag) and the expected format
        p.error(str(e) if str(e).startswith('--') else f"--data {args.data}: {e}")
if args.resume and not os.path.isfile(os.path.join(args.out_dir, 'ckpt.pt')):
    fail('--resume', f"no checkpoint at {os.path.join(args.out_dir, 'ckpt.pt')}")
if args.backbone not in model.BACKBONES and not model.is_checkpoint_name(args.backbone):
    fail('--backbone', f"unknown {args.backbone!r}; valid: {', '.join(model.BACKBONES)}, a Janus hub id or dir")
if args.merge_to and args.backbone in ('tiny-toy', 'toy'):
    fail('--merge-to', f"merges a Janus backbone's LoRA into a Hugging Face dir; {args.backbone} has none to write")
if args.gen_temperature is not None and not args.gen_temperature >= 0:
    fail('--gen-temperature', f"must be >= 0, got {args.gen_temperature}")

# DDP from torchrun's environment; the single-process branch defines the same names
ddp = int(os.environ.get('RANK', -1)) != -1
if ddp:
    dist.init_process_group(backend='nccl' if args.device == 'cuda' else 'gloo')
    rank, local_rank, world_size = dist.get_rank(), int(os.environ['LOCAL_RANK']), dist.get_world_size()
    device = f'cuda:{local_rank}' if args.device == 'cuda' else 'cpu'
    if args.device == 'cuda':
        torch.cuda.set_device(device)
else:
    rank, local_rank, world_size, device = 0, 0, 1, args.device
master = rank == 0
ptdtype = getattr(torch, args.dtype)
ctx = torch.autocast(device.split(':')[0], dtype=ptdtype, enabled=args.dtype != 'float32')
scaler = torch.amp.GradScaler(str(device).split(':')[0], enabled=args.dtype == 'float16')  # only fp16 scales losses
if master:
    print(f"{json.dumps(vars(args))}\nautocast: {args.dtype} on {device}, world size {world_size}")
timings = {}

# --mode pretrain builds a tiny-toy base (the repository ships one, built by this command with --seed 0), and stops
if args.mode == 'pretrain':
    if args.backbone != 'tiny-toy':
        fail('--backbone', f"--mode pretrain builds the tiny-toy base only, got {args.backbone}")
    t0 = time.time()
    if master:
        print(f"building a tiny-toy base in {args.out_dir} ({args.pretrain_steps} steps, about 24 min on 2 cores)")
        toy_umm.pretrain(args.out_dir, steps=args.pretrain_steps, seed=args.seed, ctx=ctx)
        print(f"pretrain done in {time.time() - t0:.0f}s: {args.out_dir}/base.pt, judge.pt, report.json")
    raise SystemExit(0)

# -----------------------------------------------------------------------------
# the UMM with LoRA on U, the perturber C, the judge, the buffer B, one optimizer each for U and C
torch.manual_seed(args.seed)  # same init on every rank: trainable weights start (and stay) identical
toy_parts = {k: getattr(args, f'toy_{k}') for k in ('siglip', 'qwen', 'sd') if getattr(args, f'toy_{k}')}
try:
    umm = model.load_backbone(args.backbone, init=args.init or None, dtype=ptdtype, decode=args.decode,
                              decoder=args.decoder, gen_temperature=args.gen_temperature, device=device,
                              **toy_parts).to(device)
except toy_umm.BaseError as e:  # a missing, truncated or foreign base.pt: one line naming the file and the fix
    fail('--init', str(e).removeprefix('--init '))
except model.MissingWeights as e:  # no weights on this machine: says the three ways to provide them
    fail('--backbone', str(e))
except ValueError as e:  # DeepSeek's original format, or checkpoint keys that do not match the architecture
    fail('--backbone', str(e))
try:
    targets = model.lora_targets(args.lora_targets)
except ValueError as e:
    fail('--lora-targets', str(e))
unknown = set(targets) - {name.split('.')[-1] for name, _ in umm.lm.named_modules()}
if unknown:  # peft would skip a name that matches nothing as long as another one matches
    fail('--lora-targets', f"no module of the LM is named {', '.join(sorted(unknown))}")
umm.add_lora(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=targets).train()
if (args.activation_checkpointing or ('off' if args.backbone.startswith('tiny-') else 'on')) == 'on':
    umm.checkpoint_activations()
C = Perturber(umm.hidden_size, args.perturber_width, args.eps).to(device)
unigame = args.mode == 'unigame'
if judge_path and os.path.isfile(judge_path):  # the semantic filter's CLIP: a toy judge.pt
    try:
        judge = Judge.load(judge_path, map_location=device)
    except ValueError as e:  # truncated or not a judge: one line naming the file
        fail('--judge', str(e))
judge = judge.to(device) if judge_path else None
buffer = HardBuffer(args.buffer_size, space=args.space) if unigame and args.buffer_size > 0 else None
u_params, c_params = umm.understanding_parameters(), list(C.parameters())
opt_u = torch.optim.AdamW(u_params, lr=args.und_lr, weight_decay=0.0)
opt_c = torch.optim.AdamW(c_params, lr=args.gen_lr, weight_decay=0.0)
buffer_rng = torch.Generator().manual_seed(args.seed + rank)
torch.manual_seed(args.seed + rank)  # from here on (LoRA dropout, random noise) ranks may differ
if args.data == 'shapes':
    train_set = data.ShapesVQA('train', args.train_size, first=toy_umm.PRETRAIN_SCENES)  # scenes the base never saw
for streamed in (train_set, val_set, caption_set):
    if isinstance(streamed, realdata.Streamed):
        streamed.image_size = umm.image_size  # real images are read at the backbone's size
if master:
    n_u, n_c = sum(q.numel() for q in u_params), sum(q.numel() for q in c_params)
    n_all = sum(q.numel() for q in umm.parameters())
    print(f"trainable: LoRA {n_u / 1e6:.3f}M + C {n_c / 1e6:.3f}M = {100 * (n_u + n_c) / n_all:.2f}% "
          f"of {n_all / 1e6:.1f}M")


def samples(idx):
    """Samples idx of the train set as one batch on the device."""
    b = data.collate([train_set[i] for i in idx])
    images = b['images'].to(device)
    if images.shape[-1] != umm.image_size:  # backbones with other input sizes see the same scenes, resized
        images = torch.nn.functional.interpolate(images, size=umm.image_size, mode='bilinear').clamp(0, 1)
    return {**b, 'images': images}


def batch_at(step):
    """Rank r's batch at `step` is global batch step * world_size + r: a pure function of the step, for resume."""
    return samples(data.batch_indices(step * world_size + rank, len(train_set), args.batch_size, args.seed))


def similarity(candidates, originals, captions):
    """The filter's raw score per candidate (B,): judge text-image cosine with the caption (clip), judge image-image
    cosine with the original (cosine), or in token space the mean token cosine with the clean tokens."""
    if args.filter == 'clip':
        return judge.image_text_similarity(candidates, captions)
    if args.space == 'token':
        return torch.nn.functional.cosine_similarity(candidates.float(), originals.float(), dim=-1).mean(1)
    return judge.image_image_similarity(candidates, originals)


@torch.no_grad()
def filter_scale():
    """The filter's calibrated scale (buffer.calibrate) from the first `--calibration` train pairs: 1 is the score
    of the clean decode G(z) with its own caption; 0 with the caption one shape or colour word away (--filter-zero
    edit: a candidate must stay nearer its label than an edited scene) or with the next scene's caption or image
    (scene). So --min-sim means the same for the toy judge (matched cosines near 0.9) and a real CLIP (near 0.3).
    Identical on every rank."""
    umm.eval()
    pos, neg, edits = [], [], np.random.default_rng([args.seed, 7])  # the same edits on every rank
    zero = args.filter_zero if args.filter == 'clip' else 'scene'
    for start in range(0, min(args.calibration, len(train_set)), args.batch_size):
        b = samples(range(start, min(start + args.batch_size, args.calibration, len(train_set))))
        with ctx:
            z = umm.encode(b['images'])                                         # (B, N, H)
            clean, ref = (umm.decode(b['images'], z, b['questions'])[0], b['images']) if args.space == 'decoded' \
                else (z, z)
            c = b['captions']
            pos.append(similarity(clean, ref, c))
            wrong = [data.hard_negative(t, edits) for t in c] if zero == 'edit' else c[1:] + c[:1]
            neg.append(similarity(clean, ref.roll(1, 0), wrong))                 # an edited caption, or another scene
    umm.train()
    pos, neg = torch.cat(pos), torch.cat(neg)
    if master:
        print(f"filter scale ({args.filter}): 1 = {pos.mean():.4f} (clean decode, own scene), 0 = {neg.mean():.4f} "
              f"({'its caption, one word edited' if zero == 'edit' else 'another scene'}), over {len(pos)} train pairs")
    return calibrate(pos, neg)


def noise(z):
    """Table 4's random-noise ablation: a random direction per token with the full budget eps (relative, as C's)."""
    return args.eps * Perturber.token_rms(z) * torch.nn.functional.normalize(torch.randn_like(z.float()), dim=-1)


def chunks(n):
    """Row slices of the micro-batches of an n-row pass (--micro-batch; 0: one slice of all n rows)."""
    m = args.micro_batch or max(n, 1)
    return [slice(i, min(i + m, n)) for i in range(0, n, m)]


def backward_(loss, params):
    """Accumulate d loss / d params (a micro-batch's share of the step's loss); U's step never touches C's
    gradients and vice versa."""
    scaler.scale(loss).backward(inputs=params)


def update_(optimizer, params, max_norm=0.0):
    """One update from the accumulated gradients, averaged over ranks by one all-reduce of the flattened gradients,
    then clipped to `max_norm` (0: not clipped) in float32, the role's own norm (Appendix B.2); every rank calls this
    at the same steps. The caller zeroes the gradients before accumulating."""
    if ddp:
        grads = [q.grad if q.grad is not None else torch.zeros_like(q) for q in params]
        flat = torch.cat([g.flatten() for g in grads]) / world_size
        dist.all_reduce(flat)
        for q, g in zip(params, flat.split([g.numel() for g in grads])):
            q.grad = g.view_as(q)
    if max_norm > 0:
        scaler.unscale_(optimizer)  # clip the true gradient, not the loss-scaled one (a no-op without float16)
        torch.nn.utils.clip_grad_norm_([q for q in params if q.grad is not None], max_norm)  # float32 params, grads
    scaler.step(optimizer)
    scaler.update()  # after every step: C may step twice per U step (--updates 2:1), and a skipped step has none


def save_checkpoint(step):
    """Trainable weights, C, optimizers, scaler, step, config on rank 0 (ckpt.pt); buffer and RNG per rank
    (rank<r>.pt). A pair is committed in three moves, so a crash anywhere leaves one pair to resume from: each rank
    writes rank<r>.next.pt, then rank 0 replaces ckpt.pt (the commit: it names the step), then each rank renames its
    .next file over rank<r>.pt. Every file is written whole to .tmp, then renamed."""
    def atomic(obj, path):
        torch.save(obj, path + '.tmp')
        os.replace(path + '.tmp', path)
    digest = hashlib.sha256(b''.join(q.detach().cpu().numpy().tobytes() for q in u_params + c_params)).hexdigest()
    cuda_rng = torch.cuda.get_rng_state(device) if str(device).startswith('cuda') else None
    mine = os.path.join(args.out_dir, f'rank{rank}')
    atomic(dict(step=step, buffer=buffer.state_dict() if buffer is not None else None, rng=torch.get_rng_state(),
                cuda_rng=cuda_rng, buffer_rng=buffer_rng.get_state(), weights_sha256=digest),  # ranks must agree
           mine + '.next.pt')
    if ddp:
        dist.barrier()
    if master:
        trainable = {n: q.detach().cpu() for n, q in umm.named_parameters() if q.requires_grad}
        atomic(dict(step=step, backbone=args.backbone, config=vars(args), trainable=trainable, perturber=C.state_dict(),
                    opt_u=opt_u.state_dict(), opt_c=opt_c.state_dict(), scaler=scaler.state_dict()),
               os.path.join(args.out_dir, 'ckpt.pt'))
    if ddp:
        dist.barrier()
    os.replace(mine + '.next.pt', mine + '.pt')


def load_state(path, flag):
    """torch.load of a checkpoint file, or one clear error naming it (truncated, foreign, unreadable)."""
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises RuntimeError, EOFError, pickle errors... for a damaged file
        fail(flag, f"cannot read {path} ({type(e).__name__}: {str(e)[:120]}); it is truncated or not a train.py "
                   f"checkpoint: start a new run in another --out_dir, or rerun without --resume")


start_step = 0
if args.resume:
    path = os.path.join(args.out_dir, 'ckpt.pt')
    ckpt = load_state(path, '--resume')
    if not isinstance(ckpt, dict) or not {'step', 'backbone', 'trainable'} <= ckpt.keys():
        fail('--resume', f"{path} is not a train.py checkpoint (no step, backbone and trainable weights in it)")
    if ckpt['backbone'] != args.backbone:
        fail('--resume', f"{path} is a {ckpt['backbone']} checkpoint, not {args.backbone}")
    missing = set(ckpt['trainable']) ^ {n for n, q in umm.named_parameters() if q.requires_grad}
    if missing:
        fail('--resume', f"{path} does not match this model's trainable weights (e.g. {sorted(missing)[:3]})")
    # this rank's half of the pair: rank<r>.pt, or rank<r>.next.pt if a save stopped after its commit (ckpt.pt)
    pair = [f for f in (f'rank{rank}.next.pt', f'rank{rank}.pt') if os.path.isfile(os.path.join(args.out_dir, f))]
    mine = next((m for m in (load_state(os.path.join(args.out_dir, f), '--resume') for f in pair)
                 if m['step'] == ckpt['step']), None)
    if mine is None:
        fail('--resume', f"no rank{rank}.pt in {args.out_dir} from step {ckpt['step']}, the step of ckpt.pt")
    umm.load_state_dict(ckpt['trainable'], strict=False)
    C.load_state_dict(ckpt['perturber'])
    opt_u.load_state_dict(ckpt['opt_u'])
    opt_c.load_state_dict(ckpt['opt_c'])
    scaler.load_state_dict(ckpt['scaler'])
    if buffer is not None and mine['buffer'] is not None:
        buffer.load_state_dict(mine['buffer'])
    torch.set_rng_state(mine['rng'])
    if mine.get('cuda_rng') is not None and str(device).startswith('cuda'):
        torch.cuda.set_rng_state(mine['cuda_rng'], device)
    buffer_rng.set_state(mine['buffer_rng'])
    start_step = ckpt['step']
    if master:
        print(f"resumed from {path} at step {start_step}")
os.makedirs(args.out_dir, exist_ok=True)
if master:
    with open(os.path.join(args.out_dir, 'config.json'), 'w') as f:
        json.dump(vars(args), f, indent=1)

# -----------------------------------------------------------------------------
# Algorithm 1
try:
    scale = filter_scale() if unigame and args.filter != 'none' else None  # Eq. 4's s, calibrated once
except ValueError as e:  # a judge that cannot tell a scene's caption from another's cannot filter anything
    fail('--judge', str(e))
metrics = None
if master:  # on resume, drop the lines an interrupted run wrote after its last checkpoint
    path = os.path.join(args.out_dir, 'metrics.jsonl')
    kept = [l for l in open(path)if json.loads(l)['step'] < start_step] if args.resume and os.path.isfile(path) else []
    metrics = open(path, 'w')
    metrics.writelines(kept)
PHASES = ('data', 'challenge', 'mine', 'understand')  # where a step's time goes, logged as phase_time
# sums since the last log line, reduced over ranks only there: the losses, then what shows the game working
SUMS = ('L_U', 'L_C', 'c_steps', 'steps', 'candidates', 'rejected', 'accepted', 'wrong_adv', 'wrong_adv_clean',
        'asked_adv', 'wrong_clean', 'asked_clean', 'broken_acc', 'broken_rej', 'broken_all', 'wrong_intact',
        'asked_intact',
        'hard_fresh', 'hard_replayed', 'buffer_kept', *PHASES)
log = torch.zeros(len(SUMS), device=device)


def tally(**sums):
    for k, v in sums.items():
        log[SUMS.index(k)] += v


def wrong(z_rows, questions, answers):
    """Which of U's greedy answers are wrong (free-form answers compared after VQA normalisation), a list of bool."""
    predictions = [p for r in chunks(len(questions)) for p in umm.answer(z_rows[r], questions[r])]
    return [scorers.normalize_answer(p) != scorers.normalize_answer(t) for p, t in zip(predictions, answers)]


def control_images(x, q, a):
    """The positive controls' hard rows, same LoRA, data and steps as UniGame: PGD on the pixels through the frozen
    encoder (Madry et al.; U in eval mode while it attacks) or a generic augmentation that is not a test shift."""
    if args.mode == 'augment':
        return data.augment(x.cpu(), buffer_rng).to(x.device)
    umm.eval()
    x_adv = evaluate.pgd_attack(umm, x, q, a, args.pgd_eps / 255, args.pgd_steps, args.pgd_eps / 255 / 4)
    umm.train()
    return x_adv


nan_streak, t_train = 0, time.time()
bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc=args.mode, disable=not master)
step, interrupted = start_step, {'now': False}
signal.signal(signal.SIGINT, lambda *_: interrupted.update(now=True))  # finish the step, save, then stop
try:
    for step in bar:
        last_step, t_step = step == args.steps - 1, time.time()
        b = batch_at(step)
        x, q, a = b['images'], b['questions'], b['answers']
        with torch.no_grad(), ctx:
            z = umm.encode(x)                                       # (B, N, H) frozen Enc + Proj (line 3)
        t_end = [time.time()]  # when each phase ends; on GPU, kernels still running are billed to the phase that waits

        # 1. challenge step (lines 4-8): C ascends L_C = CE(U(Enc(G(z + delta)))) - lam ||delta||^2 (Eq. 7)
        c_steps = (step + 1) * g_updates // u_updates - step * g_updates // u_updates  # the G:U ratio
        c_steps = c_steps if unigame and args.perturb == 'adversarial' else 0
        umm.eval_with_gradients()  # U is C's fixed opponent: no LoRA dropout while C ascends
        for _ in range(c_steps):
            opt_c.zero_grad(set_to_none=True)
            l_c = torch.zeros((), device=device)
            for r in chunks(len(q)):                                # micro-batches: gradients accumulate
                with ctx:
                    if args.attack == 'decoded':                    # Eq. 7: decode z + delta, re-encode, answer
                        x_adv, _ = umm.decode(x[r], z[r], q[r], perturb=C)  # (b, 3, s, s), differentiable in delta
                        ce = umm.understand_loss(umm.encode(x_adv), q[r], a[r])
                    else:                                           # Table 4's "adversarial emb.": U reads z + delta
                        ce = umm.understand_loss(z[r].float() + C(z[r].float()), q[r], a[r])
                    part = (ce.float() - C.penalty(args.lam)).sum() / len(q)  # Eq. 7, float32: this chunk's share
                backward_(-part, c_params)                          # maximise: descend on -L_C
                l_c += part.detach()
            finite = torch.isfinite(l_c).float()
            if ddp:  # every rank takes (or skips) C's update together
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item():
                update_(opt_c, c_params, args.clip_grad_c)
                tally(L_C=l_c, c_steps=1)
        umm.train()
        t_end.append(time.time())

        # 2. mine (lines 9-11): decode candidates, score H (Eq. 4), keep the hard plausible ones
        fresh = None  # this step's accepted candidates: (tokens U reads, questions, answers, rows of the batch)
        if unigame and step % args.mine_every == 0:
            umm.eval()  # score candidates without LoRA dropout (and without spending the RNG that training uses)
            with torch.no_grad(), ctx:
                K = args.candidates                                 # candidate k of sample i sits at row i*K + k
                xk, zk = x.repeat_interleave(K, 0), z.repeat_interleave(K, 0)                  # (B*K, ...)
                qk, ak, ck, tk = ([v for v in seq for _ in range(K)] for seq in (q, a, b['captions'], b['qtypes']))
                perturb = C if args.perturb == 'adversarial' else noise
                parts = []
                for r in chunks(len(qk)):                           # micro-batches, concatenated below
                    if args.space == 'decoded':
                        x_t, _ = umm.decode(xk[r], zk[r], qk[r], perturb=perturb)  # (b, 3, s, s)
                        z_t = umm.encode(x_t)                       # re-encode the candidates: U reads images
                    else:                                           # embedding-only: the tokens are the sample
                        z_t = zk[r].float() + perturb(zk[r].float())  # (b, N, H) float32, never rounded to bf16
                        x_t = z_t
                    ce_t = umm.understand_loss(z_t, qk[r], ak[r]).float()  # (b,)
                    s_t = None if scale is None else \
                        scale(similarity(x_t, xk[r] if args.space == 'decoded' else zk[r], ck[r]))
                    parts.append((x_t, z_t, ce_t, s_t))
                x_tilde, z_tilde, ce_k = (torch.cat(t) for t in list(zip(*parts))[:3])    # (B*K, ...)
                sim = None if scale is None else torch.cat([t[3] for t in parts])
                h = hardness(ce_k, sim, args.clip_tau, args.clip_lambda)                   # Eq. 4's H, (B*K,)
                keep = select_hard(h, sim, args.min_sim, args.hard_quantile).nonzero().flatten().tolist()
                rejected = [] if sim is None else (sim < args.min_sim).nonzero().flatten().tolist()
                tally(candidates=len(h), accepted=len(keep), rejected=len(rejected))
                if reader is not None:  # outside the game: did the candidate keep its label? (reader.py)
                    broke = scene_reader.broken(reader, x_tilde.cpu(), qk, ak)
                    tally(broken_acc=sum(broke[i] for i in keep), broken_rej=sum(broke[i] for i in rejected),
                          broken_all=sum(broke))  # the filter alone: passed = all - rejected, before H's quantile
                if step % args.asr_every == 0:  # attack success on accepted candidates next to U's own clean error
                    clean_wrong = wrong(z, q, a)                    # on the batch, and on the accepted ones' originals
                    adv_wrong = wrong(z_tilde[keep], [qk[i] for i in keep], [ak[i] for i in keep])
                    tally(wrong_adv=sum(adv_wrong), wrong_adv_clean=sum(clean_wrong[i // K] for i in keep),
                          asked_adv=len(keep), wrong_clean=sum(clean_wrong), asked_clean=len(q))
                    if reader is not None:  # the successes that are U's failures, not edits of the scene
                        intact = [not broke[i] for i in keep]
                        tally(wrong_intact=sum(w and ok for w, ok in zip(adv_wrong, intact)), asked_intact=sum(intact))
            umm.train()
            fresh = (z_tilde[keep], [qk[i] for i in keep], [ak[i] for i in keep], keep)
        t_end.append(time.time())

        # 3. understand step (lines 12-15): L_U = CE(clean) + beta * CE(hard), Eq. 6, where the hard rows are this
        # step's accepted candidates and replays of B's entries mined at earlier steps
        with ctx:
            hard, replay = [], None                                 # hard: (tokens, questions, answers) parts
            if fresh is not None and fresh[3]:
                hard.append(fresh[:3])
            if buffer is not None and len(buffer) > 0:
                replay = buffer.sample(args.replay, generator=buffer_rng, remove=args.buffer_policy == 'consume')
                with torch.no_grad():
                    z_hard = umm.encode(replay['images'].to(device)) if args.space == 'decoded' \
                        else replay['tokens'].to(device)
                hard.append((z_hard, replay['questions'], replay['answers']))
            if args.mode in ('pgd', 'augment'):                     # the positive controls: the same Eq. 6 with
                x_ctrl = control_images(x, q, a)                    # PGD or augmented images as the hard rows
                with torch.no_grad():
                    hard.append((umm.encode(x_ctrl), q, a))
                fresh = (None, q, a, None)
            tally(hard_fresh=len(fresh[1]) if fresh is not None else 0,
                  hard_replayed=len(replay['questions']) if replay is not None else 0)
            tokens = torch.cat([z.float(), *(t.float() for t, _, _ in hard)])   # (B + hard, N, H): z + delta in fp32
            questions, answers = q + [w for _, qs, _ in hard for w in qs], a + [w for _, _, aa in hard for w in aa]
        # Eq. 6 as one weighted sum over rows: 1/B on each clean row, beta/n_hard on each hard one
        n_hard = len(questions) - len(q)
        weight = torch.tensor([1 / len(q)] * len(q) + [args.beta / max(n_hard, 1)] * n_hard, device=device)
        opt_u.zero_grad(set_to_none=True)
        l_u, ce = torch.zeros((), device=device), []
        for r in chunks(len(questions)):                            # clean and hard rows together, chunk by chunk
            with ctx:
                ce.append(umm.understand_loss(tokens[r], questions[r], answers[r]).float())        # (b,)
                part = (ce[-1] * weight[r]).sum()
            backward_(part, u_params)
            l_u += part.detach()
        ce = torch.cat(ce).detach()                                 # (B + hard,) for B's rescoring
        if caption_set is not None:  # Appendix B.1: caption pairs supervise the generation branch (shared LLM)
            pairs = [caption_set[i] for i in data.batch_indices(step * world_size + rank, len(caption_set),
                                                                min(args.batch_size, len(caption_set)), args.seed)]
            for r in chunks(len(pairs)):
                with ctx:
                    images = torch.stack([s['image'] for s in pairs[r]]).to(device)           # (b, 3, s, s)
                    part = args.t2i_weight * umm.t2i_loss([s['caption'] for s in pairs[r]], images).sum() / len(pairs)
                backward_(part, u_params)
                l_u += part.detach()
        finite = torch.isfinite(l_u).float()
        if ddp:  # every rank must take (or skip) the update together
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item():
            update_(opt_u, u_params, args.clip_grad_u)
            nan_streak = 0
        else:
            nan_streak += 1
            tqdm.write(f"warning: non-finite L_U at step {step}; update skipped ({nan_streak} in a row)")
            if nan_streak >= args.max_nan_steps:
                raise FloatingPointError(f"{nan_streak} non-finite losses in a row; last good checkpoint kept")
        if buffer is not None:  # B after replay: the replayed entries rescored, then this step's candidates pushed
            if replay is not None and args.buffer_policy == 'rescore' and finite.item():
                buffer.rescore(replay['index'], ce[len(ce) - len(replay['questions']):])  # H under U now
            if fresh is not None and fresh[3]:  # B stores exactly what H scored: the float32 candidates
                keep = fresh[3]
                buffer.push(x_tilde[keep].float(), fresh[1], fresh[2], h[keep], step, qtypes=[tk[i] for i in keep],
                            ce=ce_k[keep], originals=xk[keep] if args.space == 'decoded' else None)
            tally(buffer_kept=len(buffer))
        t_end.append(time.time())
        tally(L_U=l_u.detach().float().nan_to_num(), steps=1)
        log[SUMS.index(PHASES[0]):] += torch.tensor([b - a for a, b in zip([t_step] + t_end, t_end)], device=device)

        # log (reduced over ranks only here), checkpoint, terminate
        if step % args.log_every == 0 or last_step:
            if ddp:
                dist.all_reduce(log)
            t = dict(zip(SUMS, log.tolist()))
            ratio = lambda k, n: t[k] / t[n] if t[n] > 0 else None  # noqa: E731  (sums over steps and ranks)
            h_mean = buffer.mean_hardness() if buffer is not None else math.nan
            row = dict(step=step, L_U=ratio('L_U', 'steps'), L_C=ratio('L_C', 'c_steps'),
                       eps=C.eps.item() if args.perturb == 'adversarial' else args.eps,  # noise always has eps
                       asr=ratio('wrong_adv', 'asked_adv'), clean_error=ratio('wrong_clean', 'asked_clean'),
                       clean_error_accepted=ratio('wrong_adv_clean', 'asked_adv'),  # same samples, unperturbed
                       accepted=ratio('accepted', 'candidates'), filter_reject=ratio('rejected', 'candidates'),
                       broken_accepted=ratio('broken_acc', 'accepted') if reader is not None else None,
                       broken_rejected=ratio('broken_rej', 'rejected') if reader is not None else None,
                       broken_passed=(t['broken_all'] - t['broken_rej']) / (t['candidates'] - t['rejected'])
                       if reader is not None and t['candidates'] > t['rejected'] else None,
                       asr_intact=ratio('wrong_intact', 'asked_intact') if reader is not None else None,
                       hard_fresh=ratio('hard_fresh', 'steps'), hard_replayed=ratio('hard_replayed', 'steps'),
                       buffer_kept=ratio('buffer_kept', 'steps') if buffer is not None else 0,
                       H_mean=None if math.isnan(h_mean) else h_mean,
                       images_skipped=sum(getattr(d, 'skipped', 0) for d in (train_set, caption_set)),  # unreadable
                       step_time=sum(t[k] for k in PHASES) / t['steps'],
                       phase_time={k: t[k] / t['steps'] for k in PHASES})
            log.zero_()
            if master:
                metrics.write(json.dumps(row) + '\n')
                metrics.flush()
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if isinstance(v, float | int) and k != 'step'})
        if (step + 1) % args.save_every == 0 or last_step:
            save_checkpoint(step + 1)
        stop = torch.tensor(float(interrupted['now']), device=device)
        if ddp:  # Ctrl-C on any rank stops every rank at the same step boundary
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if stop.item():
            if not ((step + 1) % args.save_every == 0 or last_step):
                save_checkpoint(step + 1)
            if master:
                print(f"\ninterrupted after step {step}: checkpoint saved in {args.out_dir}; continue with --resume")
            raise SystemExit(130)
finally:
    signal.signal(signal.SIGINT, signal.default_int_handler)
timings[args.mode] = time.time() - t_train

# -----------------------------------------------------------------------------
# what the run changed: the adapter for users (peft format), and base vs trained on val, clean and shifted
if master:
    umm.save_trainable(os.path.join(args.out_dir, 'adapter'))  # peft format (Janus: for the whole model)
    # peak memory of training: the GPU's allocator peak, or on CPU the process's peak resident set (Linux: KiB)
    peak_mb = torch.cuda.max_memory_allocated(device) / 2**20 if device.startswith('cuda') else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    final = dict(peak_memory_mb=round(peak_mb), timings=timings)
    t0 = time.time()
    if args.val_size > 0 and args.backbone == 'tiny-toy' and args.data == 'shapes':
        with ctx:
            final.update(evaluate.base_vs_trained(umm, args.val_size, label=args.mode))
    elif val_set is not None:  # the held-out VQAv2 questions: VQA accuracy of the free-form answers, base and trained
        with ctx:
            final.update(realdata.vqa_base_vs_trained(umm, val_set, args.batch_size, label=args.mode))
    timings['eval'] = time.time() - t0
    with open(os.path.join(args.out_dir, 'final.json.tmp'), 'w') as f:  # written last: the run is complete
        json.dump(final, f, indent=1)
    os.replace(os.path.join(args.out_dir, 'final.json.tmp'), os.path.join(args.out_dir, 'final.json'))
    print('time: ' + ', '.join(f"{k} {v / 60:.1f} min" for k, v in timings.items()) + f"; peak memory {peak_mb:.0f} MB")
    if args.merge_to:  # last: merging ends the LoRA (the adapter above is already written)
        umm.export_merged(args.merge_to)
        print(f"wrote {args.merge_to}: the model with its LoRA merged (JanusForConditionalGeneration.from_pretrained)")
if ddp:
    dist.destroy_process_group()
