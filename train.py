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

import functools
import json
import os
import signal
import sys
import time


def interrupted(*_):  # Ctrl-C in the first seconds, while torch imports: one line and exit 130, never a traceback
    print("\ntrain.py: interrupted while starting: nothing to save yet", file=sys.stderr, flush=True)
    raise SystemExit(130)


signal.signal(signal.SIGINT, interrupted)  # until set-up installs its own (checkpoint.on_interrupt)

import numpy as np  # noqa: E402 (after the handler: importing torch takes seconds)
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import config
import data
import evaluate
import model
import naturalgroups
import pretrain
import reader as scene_reader
import realdata
from buffer import EDITS, HardBuffer, SemanticFilter, hardness, select_hard
from metrics import Metrics
from perturber import Perturber, random_delta

# -----------------------------------------------------------------------------
# the flags (config.py: defaults, units, the paper's values) and what must be read before a large backbone loads
checkpoint.on_interrupt('during set-up, before the first step: nothing to save yet')
args, preloaded = config.parse(__doc__)
fail = config.fail
g_updates, u_updates = (int(v) for v in args.updates.split(':'))  # the G:U update ratio (--updates, checked)
judge, reader = preloaded['judge'], preloaded['reader']
train_set, val_set, caption_set = preloaded['train_set'], preloaded['val_set'], preloaded['caption_set']

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

if args.mode == 'pretrain':  # the tiny-toy base (the shipped one is this command with --seed 0), then stop
    if master:
        pretrain.run(args, ctx)
    raise SystemExit(0)

# -----------------------------------------------------------------------------
# the UMM with LoRA on U, the perturber C, the judge, the buffer B, one optimizer each for U and C
torch.manual_seed(args.seed)  # same init on every rank: trainable weights start (and stay) identical
umm = config.build_umm(args, device, ptdtype)  # the backbone with LoRA on U; a load failure names its flag
C = Perturber(umm.hidden_size, args.perturber_width, args.eps).to(device)
unigame = args.mode == 'unigame'
judge = judge.to(device) if judge is not None else None  # the semantic filter's CLIP (config.preload read it)
sem_filter = SemanticFilter(judge, args.filter, args.space) if unigame and args.filter != 'none' else None
buffer = HardBuffer(args.buffer_size, space=args.space) if unigame and args.buffer_size > 0 else None
u_params, c_params = umm.understanding_parameters(), list(C.parameters())
opt_u = torch.optim.AdamW(u_params, lr=args.und_lr, weight_decay=0.0)
opt_c = torch.optim.AdamW(c_params, lr=args.gen_lr, weight_decay=0.0)
buffer_rng = torch.Generator().manual_seed(args.seed + rank)
torch.manual_seed(args.seed + rank)  # from here on (LoRA dropout, random noise) ranks may differ
for streamed in (d for d in (train_set, val_set, caption_set) if isinstance(d, realdata.Streamed)):
    streamed.image_size = umm.image_size  # real images are read at the backbone's size
n_u, n_c, n_all = (sum(q.numel() for q in ps) for ps in (u_params, c_params, umm.parameters()))
if master:
    print(f"trainable: LoRA {n_u / 1e6:.3f}M + C {n_c / 1e6:.3f}M = {100 * (n_u + n_c) / n_all:.2f}% "
          f"of {n_all / 1e6:.1f}M")


def samples(idx, edits=None):
    """Samples idx of the train set as one batch on the device; with `edits` (a numpy Generator) also 'edited'."""
    b = data.collate([train_set[i] for i in idx])
    if edits is not None:
        b['edited'] = torch.stack([naturalgroups.edited_image(train_set.scenes[i], edits, train_set.cell) for i in idx])
    for k in [k for k in ('images', 'edited') if k in b]:  # backbones of other input sizes see the scenes resized
        b[k] = torch.nn.functional.interpolate(b[k].to(device), size=umm.image_size, mode='bilinear').clamp(0, 1) \
            if b[k].shape[-1] != umm.image_size else b[k].to(device)
    return b


def batch_at(step):
    """Rank r's batch at `step` is global batch step * world_size + r: a pure function of the step, for resume."""
    return samples(data.batch_indices(step * world_size + rank, len(train_set), args.batch_size, args.seed))


def chunks(n):
    """Row slices of the micro-batches of an n-row pass (--micro-batch; 0: one slice of all n rows)."""
    m = args.micro_batch or max(n, 1)
    return [slice(i, min(i + m, n)) for i in range(0, n, m)]


def backward_(loss, params):
    """Accumulate d loss / d params (a micro-batch's share); U's step never touches C's gradients and vice versa."""
    scaler.scale(loss).backward(inputs=params)


def update_(optimizer, params, max_norm=0.0):
    """One update from the accumulated gradients: averaged over ranks (one all-reduce), clipped in float32 to the
    role's own norm `max_norm` (Appendix B.2; 0: not clipped); every rank calls it at the same steps."""
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
    """The pair checkpoint.save commits: ckpt.pt (rank 0: what training changed, never the frozen base) and
    rank<r>.pt (this rank's B and RNG states, and a hash of the trainable weights, which every rank must agree on)."""
    shared = dict(backbone=args.backbone, config=vars(args), perturber=C.state_dict(), opt_u=opt_u.state_dict(),
                  opt_c=opt_c.state_dict(), scaler=scaler.state_dict(),
                  trainable={n: q.detach().cpu() for n, q in umm.named_parameters() if q.requires_grad})
    mine = dict(buffer=buffer.state_dict() if buffer is not None else None, buffer_rng=buffer_rng.get_state())
    checkpoint.save(args.out_dir, step, rank, ddp, device, u_params + c_params, mine, shared if master else None)


start_step = 0
if args.resume:  # the run in --out_dir, checked against this one, then every state exactly as it was saved
    try:
        ckpt, mine = checkpoint.resume(args.out_dir, rank, args.backbone,
                                       [n for n, q in umm.named_parameters() if q.requires_grad])
    except ValueError as e:
        fail('--resume', str(e))
    umm.load_state_dict(ckpt['trainable'], strict=False)
    for name, obj in dict(perturber=C, opt_u=opt_u, opt_c=opt_c, scaler=scaler).items():
        obj.load_state_dict(ckpt[name])
    if buffer is not None and mine['buffer'] is not None:
        buffer.load_state_dict(mine['buffer'])
    checkpoint.set_rng_states(mine, device)
    buffer_rng.set_state(mine['buffer_rng'])
    start_step = ckpt['step']
    if master:
        print(f"resumed from {args.out_dir}/ckpt.pt at step {start_step}")
os.makedirs(args.out_dir, exist_ok=True)
if master:
    with open(os.path.join(args.out_dir, 'config.json'), 'w') as f:
        json.dump(vars(args), f, indent=1)

# -----------------------------------------------------------------------------
# Algorithm 1
if sem_filter is not None:  # Eq. 4's s on the judge's calibrated scale, fit once on clean train pairs, every rank
    zero, n, rng = args.filter_zero, min(args.calibration, len(train_set)), np.random.default_rng([args.seed, 7])
    edits = rng if args.filter == 'cosine' and zero == 'edit' else None  # cosine's 0: each scene with one object edited
    umm.eval()
    try:  # the same edits (of captions or of scenes) on every rank
        one, nil = sem_filter.fit(umm, (samples(range(i, min(i + args.batch_size, n)), edits)
                                        for i in range(0, n, args.batch_size)), zero, rng, ctx)
    except ValueError as e:  # a judge that cannot tell a scene's caption from another's cannot filter anything
        fail('--judge', str(e))
    umm.train()
    if master:
        print(f"filter scale ({args.filter}): 1 = {one:.4f} (clean decode, own scene), 0 = {nil:.4f} "
              f"({EDITS[args.filter] if zero == 'edit' else 'another scene'}), over {n} train pairs")
log = Metrics(os.path.join(args.out_dir, 'metrics.jsonl'), device, master, start_step)  # metrics.jsonl (metrics.py)


nan_streak, t_train = 0, time.time()
bar = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps, desc=args.mode, disable=not master)
step, interrupted = start_step, {'now': False}
for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C, or a scheduler's TERM: finish the step, save, then stop
    signal.signal(sig, lambda *_: interrupted.update(now=True))
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
                log.add(L_C=l_c, c_steps=1)
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
                perturb = C if args.perturb == 'adversarial' else functools.partial(random_delta, eps=args.eps)
                parts = []
                for r in chunks(len(qk)):                           # micro-batches, concatenated below
                    if args.space == 'decoded':
                        x_t, _ = umm.decode(xk[r], zk[r], qk[r], perturb=perturb)  # (b, 3, s, s)
                        z_t = umm.encode(x_t)                       # re-encode the candidates: U reads images
                    else:                                           # embedding-only: the tokens are the sample
                        z_t = zk[r].float() + perturb(zk[r].float())  # (b, N, H) float32, never rounded to bf16
                        x_t = z_t
                    ce_t = umm.understand_loss(z_t, qk[r], ak[r]).float()  # (b,)
                    s_t = None if sem_filter is None else \
                        sem_filter(x_t, xk[r] if args.space == 'decoded' else zk[r], ck[r])   # (b,) Eq. 4's s
                    parts.append((x_t, z_t, ce_t, s_t))
                x_tilde, z_tilde, ce_k = (torch.cat(t) for t in list(zip(*parts))[:3])    # (B*K, ...)
                sim = None if sem_filter is None else torch.cat([t[3] for t in parts])
                h = hardness(ce_k, sim, args.clip_tau, args.clip_lambda)                   # Eq. 4's H, (B*K,)
                keep = select_hard(h, sim, args.min_sim, args.hard_quantile).nonzero().flatten().tolist()
                rejected = [] if sim is None else (sim < args.min_sim).nonzero().flatten().tolist()
                log.add(candidates=len(h), accepted=len(keep), rejected=len(rejected))
                if reader is not None:  # outside the game: did the candidate keep its label? (reader.py)
                    broke = scene_reader.broken(reader, x_tilde.cpu(), qk, ak)
                    log.add(broken_acc=sum(broke[i] for i in keep), broken_rej=sum(broke[i] for i in rejected),
                            broken_all=sum(broke))  # the filter alone: passed = all - rejected, before H's quantile
                if step % args.asr_every == 0:  # attack success on accepted candidates next to U's own clean error
                    clean_wrong = evaluate.wrong(umm, z, q, a, chunks)  # the batch; the accepted ones' originals
                    adv_wrong = evaluate.wrong(umm, z_tilde[keep], [qk[i] for i in keep], [ak[i] for i in keep], chunks)
                    log.add(wrong_adv=sum(adv_wrong), wrong_adv_clean=sum(clean_wrong[i // K] for i in keep),
                            asked_adv=len(keep), wrong_clean=sum(clean_wrong), asked_clean=len(q))
                    if reader is not None:  # the successes that are U's failures, not edits of the scene
                        intact = [not broke[i] for i in keep]
                        log.add(wrong_intact=sum(w and ok for w, ok in zip(adv_wrong, intact)),
                                asked_intact=sum(intact))
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
            if args.mode in ('pgd', 'augment'):  # the positive controls, the same Eq. 6 with other hard rows: pixel
                umm.eval()                          # PGD through the frozen encoder (Madry; U in eval mode while it
                x_ctrl = data.augment(x.cpu(), buffer_rng).to(device) if args.mode == 'augment' else \
                    evaluate.pgd_attack(umm, x, q, a, args.pgd_eps / 255, args.pgd_steps, args.pgd_eps / 255 / 4)
                umm.train()                         # attacks) or a generic augmentation that is not a test shift
                with torch.no_grad():
                    hard.append((umm.encode(x_ctrl), q, a))
                fresh = (None, q, a, None)
            log.add(hard_fresh=len(fresh[1]) if fresh is not None else 0,
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
            log.add(buffer_kept=len(buffer))  # what B still holds after the replay (a consumed B is empty here)
            if replay is not None and args.buffer_policy == 'rescore' and finite.item():
                buffer.rescore(replay['index'], ce[len(ce) - len(replay['questions']):])  # H under U now
            if fresh is not None and fresh[3]:  # B stores exactly what H scored: the float32 candidates
                keep = fresh[3]
                buffer.push(x_tilde[keep].float(), fresh[1], fresh[2], h[keep], step, qtypes=[tk[i] for i in keep],
                            ce=ce_k[keep], originals=xk[keep] if args.space == 'decoded' else None)
        t_end.append(time.time())
        log.add(L_U=l_u.detach().float().nan_to_num(), steps=1)
        log.add_phases([b - a for a, b in zip([t_step] + t_end, t_end)])               # seconds per phase

        # log (reduced over ranks only here), checkpoint, terminate
        if step % args.log_every == 0 or last_step:
            row = log.line(step, ddp, reader is not None, buffer=buffer is not None,
                           eps=C.eps.item() if args.perturb == 'adversarial' else args.eps,  # noise always has eps
                           H_mean=buffer.mean_hardness() if buffer is not None and len(buffer) else None,
                           images_skipped=sum(getattr(d, 'skipped', 0) for d in (train_set, caption_set)))
            if master:
                bar.set_postfix({k: f"{v:.4g}" for k, v in row.items() if isinstance(v, float | int) and k != 'step'})
        stop = torch.tensor(float(interrupted['now']), device=device)
        if ddp:  # Ctrl-C on any rank stops every rank at the same step boundary
            dist.all_reduce(stop, op=dist.ReduceOp.MAX)
        if (step + 1) % args.save_every == 0 or last_step or stop.item():
            save_checkpoint(step + 1)
        if stop.item():
            if master:
                print(f"\ninterrupted after step {step}: checkpoint saved in {args.out_dir}; continue with --resume")
            raise SystemExit(130)
finally:
    checkpoint.on_interrupt('after training, during the final evaluation: the last checkpoint is kept, and --resume '
                            'evaluates again')
timings[args.mode] = time.time() - t_train

# -----------------------------------------------------------------------------
# what the run changed: the adapter for users (peft format), and base vs trained on val, clean and shifted
if master:
    umm.save_trainable(os.path.join(args.out_dir, 'adapter'))  # peft format (Janus: for the whole model)
    t0, final, peak_mb = time.time(), {}, checkpoint.peak_memory_mb(device)  # the peak of training, before eval
    with ctx:
        if args.val_size > 0 and args.backbone == 'tiny-toy' and args.data == 'shapes':
            final = evaluate.base_vs_trained(umm, args.val_size, label=args.mode)
        elif val_set is not None:  # the held-out VQAv2 questions: VQA accuracy of the free-form answers
            final = realdata.vqa_base_vs_trained(umm, val_set, args.batch_size, label=args.mode)
    timings['eval'] = time.time() - t0
    checkpoint.finish(args.out_dir, final, timings, peak_mb)  # final.json, written last: the run is complete
    if args.merge_to:  # last: merging ends the LoRA (the adapter above is already written)
        umm.export_merged(args.merge_to)
        print(f"wrote {args.merge_to}: the model with its LoRA merged (JanusForConditionalGeneration.from_pretrained)")
if ddp:
    dist.destroy_process_group()
