"""
The flags of train.py, grouped as Algorithm 1 reads them, and the checks that make a bad flag or a bad file fail in
seconds with one line naming it, before a large backbone loads (never a traceback).

Every flag has a default, a unit and, where the paper gives one, the paper's value (Appendix B and F: eps_max 0.02,
gen_lr 5e-3, und_lr 2e-5, beta 0.5, the 60th percentile of H, min similarity 0.6, a buffer of 50). train.py prints
the resolved flags, writes them to config.json and keeps them in every checkpoint.

    python train.py --help                     # every flag below, with its default
    python train.py --eps 0.05 --replay 8      # any of them on the command line
"""

import argparse
import math
import os

import torch

import backbones
import data
import model
import reader as scene_reader
import realdata
import toy_base
from judge import Judge

# one parser, built at import; train.py calls parse(__doc__), which fills in its description and reads sys.argv
p = argparse.ArgumentParser(formatter_class=argparse.RawDescriptionHelpFormatter)
# model
p.add_argument('--backbone', default='tiny-toy', help=f"registry name: {', '.join(backbones.BACKBONES)}")
p.add_argument('--mode', default='unigame', choices=['pretrain', 'sft', 'unigame', 'pgd', 'augment'],
               help='pretrain: the toy base (Eq. 3); sft: clean CE on the LoRA; unigame: Algorithm 1; the positive '
                    'controls, Eq. 6 with other hard rows: pgd (pixel PGD images, Madry) or augment (data.augment)')
p.add_argument('--init', default=toy_base.BASE_DIR,
               help='tiny-toy base checkpoint dir (base.pt, judge.pt); default: the one the repository ships, '
                    'weights/tiny-toy')
p.add_argument('--out_dir', '--out-dir', default=None, help='run directory (default: out/<mode>)')
p.add_argument('--decode', default='regen', choices=['regen', 't2i'],
               help="Janus candidates: regen (x's VQ codes re-predicted in one teacher-forced pass, delta on the image "
                    "states) or t2i (autoregressive text-to-image from the question, delta on each fed-back code)")
p.add_argument('--decoder', default='vae', choices=['vae', 'diffusion'],
               help="toy G: vae (one-step VAE decode of adapter(z)) or diffusion (SD-1.5 UNet img2img conditioned on "
                    "adapter(z) by cross-attention; never trained here, so shape-tested only)")
for part in ('siglip', 'qwen', 'sd'):  # --toy-siglip, --toy-qwen, --toy-sd
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
# perturber: C of Sec. 3.3 and Appendix B.3, trained by the challenge step (Eq. 7)
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
# buffer: B and its semantic filter (Eq. 4, Appendix F.2), and the replay that feeds Eq. 6
p.add_argument('--buffer-size', type=int, default=50,
               help="capacity of B (paper: 50); 0 = no buffer (Table 4): a mining step's hard candidates are learnt "
                    "from at once, then dropped")
p.add_argument('--candidates', type=int, default=1,
               help='K candidates decoded per sample when mining; K > 1 needs a sampling decoder or --perturb random')
p.add_argument('--mine-every', type=int, default=1, help='mine candidates every m steps (Algorithm 1, line 9)')
p.add_argument('--filter', default='clip', choices=['clip', 'cosine', 'none'],
               help='semantic filter: judge text-image (clip), candidate-original image cosine, or none; its score is '
                    'calibrated on clean pairs: 1 = as similar as the clean decode G(z), 0 = as an edit of it '
                    '(--filter-zero)')
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
               help="what the filter's calibrated 0 is: the judge's score of G(z) against a label-breaking edit "
                    "(edit, the default on shapes: for clip its caption one shape or colour word away, for cosine "
                    "its scene rendered with one object recoloured or reshaped, or two swapped) or against another "
                    "scene's caption or image (scene: the default on vqav2, whose scenes cannot be edited)")
p.add_argument('--hard-quantile', type=float, default=0.6, help='keep H >= this quantile of the batch (paper: 0.6)')
p.add_argument('--beta', type=float, default=0.5, help='weight of the buffer term in L_U, Eq. 6 (paper: 0.5)')
p.add_argument('--replay', type=int, default=16,
               help="entries of B, mined at earlier steps, replayed per understand step beside this step's accepted "
                    "candidates (Eq. 6)")
p.add_argument('--buffer-policy', default='rescore', choices=['rescore', 'keep', 'consume'],
               help="what replay does to an entry (the paper is silent): rescore its H with U's current CE (learnt "
                    "entries sink and are pushed out by harder ones), keep its mining-time H, or consume it (take it "
                    "out: B then holds only what replay has not reached yet)")
# optim: steps and batch, memory (micro-batches, checkpointing), U's learning rate, clipping, post-training data
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
p.add_argument('--train-min-objects', type=int, default=1,
               help='post-training scenes hold at least this many objects (1-5; 1: the base\'s own distribution)')
p.add_argument('--train-families', default=','.join(data.QTYPES),
               help="question families of post-training, drawn uniformly from this comma-separated list, so a family "
                    "named twice comes twice as often (default: each once, the base's own distribution)")
p.add_argument('--pretrain-steps', type=int, default=3000, help='steps of --mode pretrain (tiny-toy, batch 32)')
# eval: what a run measures (metrics.jsonl, final.json), and the attack of the pgd control
p.add_argument('--log-every', type=int, default=10, help='steps between metrics.jsonl lines')
p.add_argument('--asr-every', type=int, default=1,
               help="steps between measurements of attack success and clean error (greedy answers to the clean rows "
                    "and the accepted candidates; raise it on large backbones)")
p.add_argument('--reader', default=None,
               help="a scene reader outside the game (reader.py) that says which candidates broke their label, logged "
                    "as broken_accepted / broken_rejected (default on tiny-toy: weights/tiny-toy/reader.pt; none: off)")
p.add_argument('--pgd-eps', type=float, default=4.0,
               help='--mode pgd: L-inf radius of the attack, in 1/255 units (4: the radius the study scores at)')
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
p.add_argument('--resume', action='store_true',
               help='continue from out_dir/ckpt.pt where it stopped (--mode pretrain: out_dir/pretrain_ckpt.pt)')
p.add_argument('--merge-to', default=None, metavar='DIR',
               help='Janus backbones: after training, also write a Hugging Face model dir with the LoRA merged in '
                    '(JanusForConditionalGeneration.from_pretrained loads it); default: adapter only')
p.add_argument('--max-nan-steps', type=int, default=3, help='stop after this many non-finite losses in a row')

def fail(flag, message):
    """Stop with argparse's usage line and `flag: message` (exit code 2)."""
    p.error(f"{flag}: {message}")


def parse(description=None, argv=None):
    """train.py's flags, resolved (defaults that depend on the backbone) and checked, then what must be read before
    a large backbone loads (`preload`). Returns (args, preloaded)."""
    p.description = description
    args = p.parse_args(argv)
    args.out_dir = args.out_dir or f'out/{args.mode}'
    # tiny backbones run on CPUs, where bf16 is slow without bf16 units; real ones on GPUs in bf16 (half the bytes)
    args.dtype = args.dtype or ('float32' if args.backbone.startswith('tiny-') else 'bfloat16')
    args.filter_zero = args.filter_zero or ('edit' if args.data == 'shapes' else 'scene')  # edits need shape words
    args.micro_batch = backbones.default_micro_batch(args.backbone) if args.micro_batch is None else args.micro_batch
    check(args)  # the flags alone first (instant), then the files they name
    return args, preload(args)


def check(args):
    """Each flag alone and the combinations that cannot run, from the flags alone (no file is read)."""
    for flag in ('gen_lr', 'und_lr', 'eps', 'pgd_eps'):  # > 0 and finite: a nan or inf would reach every update
        if not (getattr(args, flag) > 0 and math.isfinite(getattr(args, flag))):
            fail('--' + flag.replace('_', '-'), f"must be a finite number > 0, got {getattr(args, flag)}")
    if args.micro_batch < 0:
        fail('--micro-batch', f"must be >= 0 (0: one pass per step), got {args.micro_batch}")
    for flag in ('steps', 'batch_size', 'train_size', 'candidates', 'mine_every', 'log_every', 'save_every',
                 'pretrain_steps', 'lora_r', 'asr_every', 'calibration', 'pgd_steps'):  # counts, and `step % every`
        if getattr(args, flag) < 1:
            fail('--' + flag.replace('_', '-'), f"must be >= 1, got {getattr(args, flag)}")
    for flag in ('buffer_size', 'replay', 'beta', 'lam', 'clip_grad_u', 'clip_grad_c', 'val_size', 't2i_weight'):
        if getattr(args, flag) < 0:  # here 0 means something: no buffer, no replay, no penalty, no clipping, no table
            fail('--' + flag.replace('_', '-'), f"must be >= 0, got {getattr(args, flag)}")
    for flag in ('questions', 'annotations', 'images'):  # else a forgotten --data vqav2 trains on shapes silently
        if getattr(args, flag) and args.data != 'vqav2':
            fail('--' + flag, f"is read with --data vqav2 only (got --data {args.data})")
    if not 0 < args.hard_quantile < 1:  # a share: F.2's 60th percentile of H is 0.6
        fail('--hard-quantile', f"must be in (0, 1), got {args.hard_quantile}")
    try:  # '1:5' -> one C update per 5 U updates (Table 8's sweep of the G/U ratio)
        g_updates, u_updates = (int(v) for v in args.updates.split(':'))
        assert g_updates >= 1 and u_updates >= 1
    except (ValueError, AssertionError):
        fail('--updates', f"must be G:U with integers >= 1 (e.g. 1:5), got {args.updates!r}")
    if args.filter_zero == 'edit' and args.data != 'shapes':  # edits need the shapes world's words and scenes
        fail('--filter-zero', f"edit needs --data shapes (its scenes and shape words); use scene on {args.data}")
    if args.space == 'token' and args.filter == 'clip':  # CLIP reads images; token space has none to show it
        fail('--filter', "clip needs decoded images; with --space token use --filter cosine (token cosine) or none")
    # C learns on the states it perturbs when mining: Janus's G reads its own generation states, never U's tokens z
    if args.mode == 'unigame' and args.perturb == 'adversarial' and args.space == 'decoded' and \
            args.backbone not in ('tiny-toy', 'toy'):
        if args.decode == 't2i':
            fail('--decode', "t2i samples its image token by token and gives C no gradient (Eq. 7): use --decode "
                             "regen, or --perturb random to mine t2i candidates with noise")
        if args.attack == 'token':
            fail('--attack', "token trains C on U's tokens z, but Janus's G reads its own generation states, so C "
                             "would perturb states it never learnt on: use --attack decoded, or --space token with it")
    # K > 1 candidates of a sample differ only if something samples: the noise, or the decoder (Janus at a temperature
    # > 0: --gen-temperature, default 1 for t2i and 0 for regen; the toy decoder never samples)
    sampling = args.backbone not in ('tiny-toy', 'toy') and args.space == 'decoded' and \
        (args.gen_temperature if args.gen_temperature is not None else float(args.decode == 't2i')) > 0
    if args.candidates > 1 and args.perturb == 'adversarial' and not sampling:
        fail('--candidates', f"K = {args.candidates} would give identical candidates: C and this decoder are "
                             f"deterministic; use a sampling decoder (Janus --gen-temperature > 0 or --decode t2i) "
                             f"or --perturb random")
    ckpt = os.path.join(args.out_dir, 'pretrain_ckpt.pt' if args.mode == 'pretrain' else 'ckpt.pt')
    if args.resume and not os.path.isfile(ckpt):  # now, before the backbone loads
        fail('--resume', f"no checkpoint at {ckpt}")
    if args.backbone not in backbones.BACKBONES and not backbones.is_checkpoint_name(args.backbone):
        fail('--backbone', f"unknown {args.backbone!r}; valid: {', '.join(backbones.BACKBONES)}, a Janus hub id "
                           f"or dir")
    if args.merge_to and args.backbone in ('tiny-toy', 'toy'):
        fail('--merge-to', f"merges a Janus backbone's LoRA into a Hugging Face dir; {args.backbone} has none to "
                           f"write")
    if args.gen_temperature is not None and not args.gen_temperature >= 0:  # `not >= 0`: nan fails too
        fail('--gen-temperature', f"must be >= 0, got {args.gen_temperature}")
    if args.mode == 'pretrain' and args.backbone != 'tiny-toy':
        fail('--backbone', f"--mode pretrain builds the tiny-toy base only, got {args.backbone}")
    if not 1 <= args.train_min_objects <= data.MAX_OBJECTS:
        fail('--train-min-objects', f"must be in 1..{data.MAX_OBJECTS}, got {args.train_min_objects}")
    unknown = set(args.train_families.split(',')) - set(data.QTYPES)  # repeats are allowed: they weight a family
    if unknown:
        fail('--train-families', f"unknown {', '.join(sorted(unknown))}; families: {', '.join(data.QTYPES)}")


def preload(args):
    """What is read before the backbone loads, so that a bad file fails in seconds: the filter's judge (an open_clip
    CLIP; a toy judge.pt loads later with its base), the reader outside the game, the paper's data. A dict; None
    where unused."""
    judge = reader = train_set = val_set = caption_set = None
    # the tiny-toy base (its judge.pt beside it): a missing one is named with the command that rebuilds it
    if args.backbone == 'tiny-toy' and args.mode != 'pretrain':
        try:
            toy_base.base_file(args.init)
        except toy_base.BaseError as e:
            fail('--init', str(e).removeprefix('--init '))
    # the filter's judge; only the tiny-toy's defaults to its base's judge.pt, a real backbone must be given a CLIP
    judge_path = args.judge or (os.path.join(args.init, 'judge.pt') if args.backbone == 'tiny-toy' else '')
    # only Algorithm 1 mines; its filter needs the judge on decoded images (clip: text-image, cosine: image-image)
    judge_path = judge_path if args.mode == 'unigame' and args.filter != 'none' and args.space == 'decoded' else None
    if judge_path == '':
        fail('--judge', f"--filter {args.filter} on {args.backbone} needs a real CLIP: pass an open_clip "
                        f"MODEL:LOCAL_FILE (e.g. ViT-B-32:/weights/open_clip_vit_b32.bin) or local-dir:DIR, "
                        f"or use --filter none")
    if judge_path and os.path.isfile(judge_path):  # a toy judge.pt (on the CPU; train.py moves it)
        try:
            judge = Judge.load(judge_path)
        except ValueError as e:  # truncated or not a judge: one line naming the file
            fail('--judge', str(e))
    elif judge_path:  # an open_clip CLIP, found before U loads
        try:
            judge = Judge.from_pretrained(judge_path)
        except FileNotFoundError as e:
            fail('--judge', f"{e}; or a judge.pt, or --filter none")
    # the reader that checks the filter from outside the game: the toy's scenes only
    toy_scenes = args.backbone == 'tiny-toy' and args.data == 'shapes'
    reader_path = args.reader or (scene_reader.PATH if toy_scenes else 'none')
    if args.mode == 'unigame' and args.space == 'decoded' and reader_path != 'none':  # it reads mined candidates
        if args.backbone != 'tiny-toy' or args.data != 'shapes':
            fail('--reader', f"reads the toy's 36 px scenes only, not {args.backbone}'s or {args.data}'s images; use "
                             f"--reader none")
        try:
            reader = scene_reader.load(reader_path)
        except ValueError as e:
            fail('--reader', str(e))
    # the paper's data (the index; images are read when drawn), or the synthetic post-training scenes: scenes after
    # the base's pretraining ones, never the same
    if args.data == 'shapes' and args.mode != 'pretrain':
        train_set = data.ShapesVQA('train', args.train_size, first=toy_base.PRETRAIN_SCENES,
                                   min_objects=args.train_min_objects, families=tuple(args.train_families.split(',')))
    if args.mode != 'pretrain':
        try:
            if args.data == 'vqav2':
                train_set, val_set = realdata.vqav2(args.questions, args.annotations, args.images, args.val_size)
            if args.captions:
                caption_set = realdata.CaptionPairs(args.captions)
        except (FileNotFoundError, ValueError) as e:  # each names its file (and flag) and the expected format
            p.error(str(e) if str(e).startswith('--') else f"--data {args.data}: {e}")
    return dict(judge=judge, reader=reader, train_set=train_set, val_set=val_set,
                caption_set=caption_set)


def build_umm(args, device, dtype):
    """The UMM the flags name, on `device` with frozen weights in `dtype`, LoRA on U (--lora-*) and activation
    checkpointing where asked; in training mode. A load failure stops with one line naming its flag."""
    # only the --toy-* flags given, so that build_toy keeps its hub ids for the rest
    toy_parts = {k: getattr(args, f'toy_{k}') for k in ('siglip', 'qwen', 'sd') if getattr(args, f'toy_{k}')}
    try:
        umm = backbones.load_backbone(args.backbone, init=args.init or None, dtype=dtype, decode=args.decode,
                                      decoder=args.decoder, gen_temperature=args.gen_temperature, device=device,
                                      **toy_parts).to(device)
    except toy_base.BaseError as e:  # a missing, truncated or foreign base.pt: one line naming the file and the fix
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
    # freezes every weight, then LoRA on U's LM: the only trainable parameters of the UMM (C lives outside it)
    umm.add_lora(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout, targets=targets).train()
    # trades one more forward per layer in backward for ~1/layers of the activation memory (memory.py measures it)
    if (args.activation_checkpointing or ('off' if args.backbone.startswith('tiny-') else 'on')) == 'on':
        umm.checkpoint_activations()
    return umm
