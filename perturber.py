"""
Perturber C — the small network that turns the UMM against itself (paper Sec. 3.3, Appendix B.3).

C reads each visual token z at the shared interface and proposes a bounded push along a learned direction:

    dir   = normalize(W3 · gelu(W2 · gelu(W1 · z)))        # a 3-layer MLP per token, last layer = direction head
    eps   = eps_max · sigmoid(theta)                        # one learnable scalar gate, always in [0, eps_max]
    rms   = sqrt(mean_i ||z_i||^2)                          # the size of the sample's tokens (a constant, no grad)
    delta = eps · rms · dir                                 # so ||delta_i||_2 = eps · rms <= eps_max · rms
    z~    = z + delta

What --eps measures: the per-token L2 norm of delta *relative to the RMS token norm* of the tokens it perturbs. The
paper's 0.02 is then "each token moves by 2% of a token's size" on every backbone: the toy's z (norm about 6), Janus's
post-LM generation states (norm of order 10^2) or SigLIP features alike, where an absolute 0.02 meant 0.3% of a toy
token and nothing at all on Janus.

C is trained to *maximise* the understanding loss on z~ (Eq. 7) minus lambda·||delta||^2 (in the same relative units,
so lambda too means the same on every backbone), which here only reaches the gate (the direction is unit norm): the
regulariser keeps eps from sitting at eps_max for free.

Precision: the paper's ablation (Appendix B.2) found that small perturbations are quantised away in bf16/fp16, so
every operation of C — the MLP, the normalisation, the gate and the norm penalty — runs in float32 even inside an
autocast region. Only the returned delta is cast back to the input's dtype. Where it matters, add it in float32:
`z_tilde = z.float() + C(z.float())` — in bf16 an entry of size x has a spacing of x·2^-7 ≈ 0.008x, while an entry of
delta is about eps·x = 0.02x at eps = 0.02, so a bf16 sum would keep barely two bits of delta.

Size: with hidden size H and width W, C has 2·H·W + W² weights, 2·W + H biases and the gate. Width 256 on H = 4096
(Janus-Pro-7B) gives 2,167,297 ≈ 2.2M parameters, the size of the paper's "only 2.1M" (Sec. 4.1; the paper does not
give W). The default width is H, as Appendix B.3 words it ("the first two layers have the same width as the UMM
hidden size"), which on H = 4096 is 50M parameters — pass --perturber-width 256 for the paper's size.

    python -c "from perturber import Perturber; print(sum(p.numel() for p in Perturber(4096, 256).parameters()))"
    # 2167297
    python -c "import torch; from perturber import Perturber; C = Perturber(64, 32); z = torch.randn(2, 16, 64); \\
               d = C(z); r = d.norm(dim=-1) / C.token_rms(z)[..., 0]; print(tuple(d.shape), round(C.eps.item(), 4), \\
               round(r.min().item(), 4), round(r.max().item(), 4))"
    # (2, 16, 64) 0.01 0.01 0.01: the gate starts at eps_max / 2, and every token moves by exactly eps · rms(z)
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class Perturber(nn.Module):
    """delta = eps_max · sigmoid(theta) · rms(z) · normalize(mlp(z)), in float32, for every token of z (B, N, H)."""

    def __init__(self, hidden_size: int, width: int | None = None, eps_max: float = 0.02, eps_init: float = 0.5):
        super().__init__()
        if hidden_size < 1:
            raise ValueError(f"hidden_size must be >= 1, got {hidden_size}")
        width = hidden_size if width is None else width
        if width < 1:
            raise ValueError(f"width (--perturber-width) must be >= 1, got {width}")
        if not (eps_max > 0 and math.isfinite(eps_max)):
            raise ValueError(f"eps_max (--eps) must be a finite number > 0, got {eps_max}")
        if not 0 < eps_init < 1:
            raise ValueError(f"eps_init is the starting gate eps / eps_max and must be in (0, 1), got {eps_init}")
        self.hidden_size, self.width, self.eps_max = hidden_size, width, float(eps_max)
        self.mlp = nn.Sequential(
            nn.Linear(hidden_size, width), nn.GELU(),
            nn.Linear(width, width), nn.GELU(),
            nn.Linear(width, hidden_size),  # the direction head
        )
        # the scalar gate, stored as a logit so that eps = eps_max · sigmoid(theta) can never leave [0, eps_max]
        self.theta = nn.Parameter(torch.tensor(math.log(eps_init / (1 - eps_init))))

    @property
    def eps(self) -> torch.Tensor:
        """The current perturbation strength, a float32 scalar in [0, eps_max] (differentiable w.r.t. theta)."""
        return self.eps_max * torch.sigmoid(self.theta.float())

    @staticmethod
    def token_rms(z: torch.Tensor) -> torch.Tensor:
        """The unit of eps: sqrt(mean over tokens of ||z_i||^2) per sample, (B, 1, 1) float32, no gradient."""
        with torch.autocast(device_type=z.device.type, enabled=False):
            return z.detach().float().pow(2).sum(-1).mean(-1).sqrt().clamp(min=1e-12)[:, None, None]

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """delta for every token of z (B, N, H), in z's dtype; the math inside is float32 whatever autocast says."""
        if z.dim() != 3 or z.shape[-1] != self.hidden_size:
            raise ValueError(f"z must have shape (B, N, {self.hidden_size}), got {tuple(z.shape)}")
        with torch.autocast(device_type=z.device.type, enabled=False):
            direction = self.mlp(z.float())                                   # (B, N, H) float32
            direction = F.normalize(direction, dim=-1, eps=1e-12)             # unit norm per token
            delta = self.eps * self.token_rms(z) * direction                  # (B, N, H) float32, norm eps · rms
        return delta.to(z.dtype)

    def penalty(self, lam: float) -> torch.Tensor:
        """Eq. 7's regulariser lam·||delta||^2, float32, in eps's units (||delta_i|| / rms(z), averaged over tokens, so
        lam means the same for 64 tokens or 576 and for tokens of norm 6 or 600). Every token of C's delta has
        ||delta_i|| / rms(z) = eps by construction, so this is lam·eps^2, and it reaches only the gate."""
        if lam < 0:
            raise ValueError(f"lam (the norm penalty weight) must be >= 0, got {lam}")
        return lam * self.eps.pow(2)                                          # () float32

    def extra_repr(self) -> str:
        return f"hidden_size={self.hidden_size}, width={self.width}, eps_max={self.eps_max} (relative to rms(z))"


def random_delta(z: torch.Tensor, eps: float) -> torch.Tensor:
    """Table 4's random-noise ablation (`--perturb random`): delta of a random direction per token with the full
    budget, ||delta_i|| = eps · rms(z) as C's at its largest; (B, N, H) float32, nothing learnt."""
    return eps * Perturber.token_rms(z) * F.normalize(torch.randn_like(z.float()), dim=-1)
