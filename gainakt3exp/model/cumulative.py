"""The gain head and cumulative mastery reduced to what the objective reads, without (B, L, C) tensors in memory.

    steps = cumulative_steps(v, gain_head.weight, gain_head.bias, m0, c, q, scale)
    steps.mastery_mean, steps.mastery_at_c, steps.gain_at_c, steps.cap_excess   # each (B, L)

With the gain head on, GainAKT3Exp defines (docs/model.md), for every skill k:
    g_t = ReLU(W v_t + b)                              gains (B, L, C)
    S_t = sum_{1 <= tau <= t} g_tau   (S_0 = 0)         cumulative gains
    u_t = m_0 + scale * S_t,   m_t = min(1, u_t)        mastery
The objective and the per-step metrics read only per-step reductions of these (B, L, C) tensors: the skill sums of g
and of m, and their values at the current skill c_t and the next skill q_t. `cumulative_steps` computes exactly
those, block by block of batch rows (a few MiB each, so every pass stays in cache), and its backward pass computes
their exact gradient without materialising the cumulative sums:

    mean_k m_t[k] = mean_k m_0[k] + scale * mean_k S_t[k] - E_t / C,   E_t = sum_k relu(u_t[k] - 1)

(min(1, u) = u - relu(u - 1)). E_t, the part of mastery cut off by the cap, is the only term that needs per-skill
work: d E_t / d S_t[k] = scale * [u_t[k] > 1], and since S is non-decreasing along t the capped steps of a skill are
a suffix, so the gradient reaching g_tau[k] through every later E_t is scale * R(max(tau, T_k)), where R is the
reverse cumulative sum of dL/dE and T_k the first capped step: one interpolation per cell in the backward pass.
The gradient through the values gathered at c_t and q_t is scattered back over the (B, L, L) steps that feed them.
Equal to the (B, L, C) definition up to float rounding (tests/test_cumulative.py checks values and gradients).
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch

#: Cells (rows x steps x skills) of one block of the fused pass: 2^20 float32 cells = 4 MiB per (B, L, C) tensor.
BLOCK_CELLS = 1 << 20


class StepValues(NamedTuple):
    """Per-step reductions of mastery and gains (each (B, L) float32; None when the head is off).

    gain_sum = sum_k g_t[k] (= sum_k |g_t[k]|, gains are ReLU outputs), gain_at_c = g_t[c_t];
    mastery_mean = mean_k m_t[k], mastery_at_c = m_t[c_t], mastery_at_q = m_t[q_t];
    cap_excess = E_t = sum_k max(0, m_0[k] + scale * S_t[k] - 1) (cumulative mastery only: the part the cap
    at 1 removes; its value at a row's last valid step is the row's consistency sum, see losses.consistency_loss).
    """

    gain_sum: Optional[torch.Tensor]
    gain_at_c: Optional[torch.Tensor]
    mastery_mean: Optional[torch.Tensor]
    mastery_at_c: Optional[torch.Tensor]
    mastery_at_q: Optional[torch.Tensor]
    cap_excess: Optional[torch.Tensor]
    num_c: int


def steps_from_full(m: Optional[torch.Tensor], g: Optional[torch.Tensor], c: torch.Tensor, q: torch.Tensor,
                    cap_excess: Optional[torch.Tensor] = None) -> StepValues:
    """StepValues of full (B, L, C) mastery and gains (the per-step sigmoid mastery head, or evaluation passes)."""
    def at(x, idx):
        return x.gather(-1, idx.unsqueeze(-1)).squeeze(-1)

    num_c = (m if m is not None else g).shape[-1]
    return StepValues(
        gain_sum=None if g is None else g.sum(-1), gain_at_c=None if g is None else at(g, c),
        mastery_mean=None if m is None else m.mean(-1), mastery_at_c=None if m is None else at(m, c),
        mastery_at_q=None if m is None else at(m, q), cap_excess=cap_excess, num_c=num_c)


def cumulative_steps(v: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, m0: torch.Tensor,
                     c: torch.Tensor, q: torch.Tensor, scale: float, *, with_mastery: bool = True) -> StepValues:
    """StepValues of g = ReLU(v W^T + b) and m = min(1, m_0 + scale * cumsum_{tau >= 1} g), without (B, L, C) tensors.

    v (B, L, D) value stream, weight (C, D), bias (C,), m0 (B, C) mastery before any gain (ignored without mastery),
    c, q (B, L) long. Differentiable in v, weight, bias and m0.
    """
    if v.shape[1] < 2 or not with_mastery:  # nothing to accumulate: one plain pass is as cheap
        g = torch.relu(torch.nn.functional.linear(v, weight, bias).float())
        if not with_mastery:
            return steps_from_full(None, g, c, q)
        s = torch.cat([torch.zeros_like(g[:, :1]), g[:, 1:]], 1).cumsum(1)
        u = m0.unsqueeze(1) + scale * s
        return steps_from_full(torch.clamp(u, max=1.0), g, c, q, torch.relu(u - 1).sum(-1))
    gain_sum, gain_at_c, s_at_c, s_at_q, excess = _CumulativeGains.apply(
        v.float(), weight.float(), bias.float(), m0.float(), c, q, float(scale))
    num_c = weight.shape[0]
    mean_s = torch.cat([torch.zeros_like(gain_sum[:, :1]), gain_sum[:, 1:]], 1).cumsum(1) / num_c  # mean_k S_t
    mastery_mean = m0.mean(-1, keepdim=True) + scale * mean_s - excess / num_c
    mastery_at_c = torch.clamp(m0.gather(1, c) + scale * s_at_c, max=1.0)
    mastery_at_q = torch.clamp(m0.gather(1, q) + scale * s_at_q, max=1.0)
    return StepValues(gain_sum=gain_sum, gain_at_c=gain_at_c, mastery_mean=mastery_mean, mastery_at_c=mastery_at_c,
                      mastery_at_q=mastery_at_q, cap_excess=excess, num_c=num_c)


def _blocks(b: int, l: int, c: int):
    """Row ranges [i, j) of about BLOCK_CELLS cells each (at least one row)."""
    rows = max(1, BLOCK_CELLS // max(l * c, 1))
    return [(i, min(b, i + rows)) for i in range(0, b, rows)]


def _forward_block(pre, start, c, q, scale: float, keep: bool):
    """The elementwise part of the forward pass of one block of rows.

    pre (n, L, C) = v W^T + b; start (n, C) = (m_0 - 1) / scale; c, q (n, L). With y_t = start + S_t (so
    u_t - 1 = scale * y_t) one running sum gives S and the cap. Returns gain_sum, gain_at_c (n, L); S_t[c_t],
    S_t[q_t], E_t for t = 1..L-1 (n, L-1); and, with keep (training), g and the cap mask [u_t > 1] (n, L-1, C) as
    0/1 floats for the backward pass.
    """
    g = pre.relu_()
    gain_sum = g.sum(-1)
    gain_at_c = g.gather(2, c.unsqueeze(-1)).squeeze(-1)
    g0 = g[:, 0].clone()
    g[:, 0] = start  # the running sum starts from (m_0 - 1) / scale instead of g_0
    y = torch.cumsum(g, 1)[:, 1:]  # y_1..y_{L-1}
    g[:, 0] = g0
    s_at = [y.gather(2, idx[:, 1:].unsqueeze(-1)).squeeze(-1) - start.gather(1, idx[:, 1:]) for idx in (c, q)]
    over = y.relu_()  # relu(u_t - 1) / scale
    excess = over.sum(-1) * scale
    cap = torch.sign(over) if keep else None  # 1 where u_t > 1, else 0
    return gain_sum, gain_at_c, s_at[0], s_at[1], excess, g if keep else None, cap


def _backward_block(g, cap, d_excess, r, d_sum, d_at_c, d_s_c, d_s_q, c, q, feeds, scale: float):
    """The elementwise part of the backward pass of one block: dL/dpre (n, L, C) and R_{T_k} (n, C).

    r (n, L-1) = R_t = sum_{t' >= t} dL/dE_t'; R_{T_k} = sum_t cap_t[k] dL/dE_t. The E-gradient of g_tau[k] is
    scale * (R_tau if capped else R_{T_k}); S_t[c_t] and S_t[q_t] collect g_tau at that skill for 1 <= tau <= t
    (feeds (L, L) = [1 <= tau <= t]); the skill sum and g_t[c_t] add their own gradients; ReLU masks the rest.
    """
    n, l, n_c = g.shape
    r_first = torch.bmm(d_excess.unsqueeze(1), cap)  # (n, 1, C)
    grad = torch.empty_like(g)
    grad[:, 0] = 0.0  # g_0 feeds no S_t
    torch.lerp(r_first * scale, (r * scale).unsqueeze(-1), cap, out=grad[:, 1:])
    for idx, d_s in ((c, d_s_c), (q, d_s_q)):
        grad.scatter_add_(2, idx.unsqueeze(1).expand(n, l, l), feeds * d_s.unsqueeze(1))
    grad.add_(d_sum.unsqueeze(-1))
    grad.scatter_add_(2, c.unsqueeze(-1), d_at_c.unsqueeze(-1))
    return torch.ops.aten.threshold_backward(grad, g, 0.0), r_first.squeeze(1)


class _CumulativeGains(torch.autograd.Function):
    """Outputs (B, L): gain_sum, gain_at_c, S_t[c_t], S_t[q_t], E_t. See the module docstring for the math.

    Saved for backward, per block: g (the ReLU output, for its mask) and the cap mask [u_t > 1] as 0/1 floats."""

    @staticmethod
    def forward(ctx, v, weight, bias, m0, c, q, scale):
        b, l, d = v.shape
        n_c = weight.shape[0]
        out = [v.new_zeros(b, l) for _ in range(5)]  # gain_sum, gain_at_c, s_at_c, s_at_q, excess
        # (S_0 = 0 and E_0 = sum_k relu(m_0 - 1) = 0 since m_0 <= 1: column 0 of the last three stays 0)
        start = (m0 - 1.0) / scale  # (B, C)
        w_aug = torch.cat([weight, bias.unsqueeze(1)], 1).t()  # (D+1, C): the bias as a weight of a ones column
        keep = any(ctx.needs_input_grad)  # evaluation passes (no_grad) keep nothing for a backward pass
        saved = []
        with torch.autocast(v.device.type, enabled=False):
            for i, j in _blocks(b, l, n_c):
                pre = torch.mm(_with_ones(v[i:j]), w_aug).view(j - i, l, n_c)
                got = _forward_block(pre, start[i:j], c[i:j], q[i:j], scale, keep)
                out[0][i:j], out[1][i:j] = got[0], got[1]
                for k in (2, 3, 4):
                    out[k][i:j, 1:] = got[k]
                saved.append(got[5:])
        ctx.save_for_backward(v, w_aug, c, q)
        ctx.blocks, ctx.scale = (saved if keep else None), scale
        return tuple(out)

    @staticmethod
    def backward(ctx, d_sum, d_at_c, d_s_c, d_s_q, d_excess):
        v, w_aug, c, q = ctx.saved_tensors
        scale = ctx.scale
        b, l, d = v.shape
        n_c = w_aug.shape[1]
        zeros = v.new_zeros(b, l)
        d_sum, d_at_c, d_s_c, d_s_q, d_excess = (zeros if t is None else t.float()
                                                 for t in (d_sum, d_at_c, d_s_c, d_s_q, d_excess))
        r = d_excess[:, 1:].flip(1).cumsum(1).flip(1)  # R_t = sum_{t' >= t} dL/dE_t', t = 1..L-1 (B, L-1)
        steps = torch.arange(l, device=v.device)
        feeds = ((steps.view(l, 1) <= steps.view(1, l)) & (steps.view(l, 1) >= 1)).to(v.dtype)  # [1 <= tau <= t]
        dv = torch.empty_like(v)
        dw_aug = torch.zeros(n_c, d + 1, dtype=v.dtype, device=v.device)  # [dL/dW, dL/db]
        d_m0 = torch.empty(b, n_c, dtype=v.dtype, device=v.device)  # dL/dm_0[k] through E = R_{T_k}
        w = w_aug[:d].t()  # (C, D)
        with torch.autocast(v.device.type, enabled=False):
            for (i, j), (g, cap) in zip(_blocks(b, l, n_c), ctx.blocks):
                grad, d_m0[i:j] = _backward_block(g, cap, d_excess[i:j, 1:], r[i:j], d_sum[i:j], d_at_c[i:j],
                                                      d_s_c[i:j], d_s_q[i:j], c[i:j], q[i:j], feeds, scale)
                grad = grad.reshape(-1, n_c)
                torch.mm(grad, w, out=dv[i:j].view(-1, d))
                dw_aug.addmm_(grad.t(), _with_ones(v[i:j]))
        ctx.blocks = None
        return dv, dw_aug[:, :d].contiguous(), dw_aug[:, d].contiguous(), d_m0, None, None, None


def _with_ones(v: torch.Tensor) -> torch.Tensor:
    """(n, L, D) -> (n * L, D + 1) with a ones column, so one matrix product applies weight and bias."""
    flat = v.reshape(-1, v.shape[-1])
    return torch.cat([flat, flat.new_ones(flat.shape[0], 1)], 1)


# ------------------------------------------------------------------------------- gains of the practised skill only

def mastery_link(m0: torch.Tensor, l0: torch.Tensor, s: torch.Tensor, scale: float, link: str) -> torch.Tensor:
    """Mastery after cumulative gains S: clamp: min(1, m_0 + scale * S) (docs/model.md); logistic:
    sigmoid(logit(m_0) + scale * S), gains in logit units (l0 = logit(m_0), the mastery head's output)."""
    if link == "logistic":
        return torch.sigmoid(l0 + scale * s)
    return torch.clamp(m0 + scale * s, max=1.0)


def practised_steps(g_c: torch.Tensor, l0: torch.Tensor, c: torch.Tensor, q: torch.Tensor, scale: float,
                    link: str, num_c: int) -> StepValues:
    """StepValues when a step's gain goes to the practised skill only (gain_scope practised_skill): g_t[k] = 0 for
    k != c_t, so every per-skill sum reduces to sums over the window's own steps, (B, L, L) at most.

    g_c (B, L) = g_t[c_t] >= 0; l0 (B, C) the mastery head's logits (m_0 = sigmoid(l0)); c, q (B, L).
    S_t[k] = sum_{1 <= tau <= t, c_tau = k} g_c[tau]. A skill's mastery differs from m_0 only after its
    practice, and between two practices it stays put, so at step t the skill practised at tau keeps the mastery
    it reached at tau as long as tau is its last practice up to t (tau <= t < next practice of c_tau):
        mean_k m_t[k] = mean_k m_0[k] + (1/C) sum_{live (t, tau)} (m_tau[c_tau] - m_0[c_tau])
        cap excess E_t = sum_{live (t, tau)} relu(m_0[c_tau] + scale * S_tau[c_tau] - 1)   (clamp link)
    Padding is trailing (the Batch contract), so padded steps never reach a valid step's sums.
    """
    b, l = g_c.shape
    steps = torch.arange(l, device=g_c.device)
    upto = (steps.view(1, l) <= steps.view(l, 1)) & (steps.view(1, l) >= 1)  # [t, tau]: 1 <= tau <= t
    same_c = c.unsqueeze(2) == c.unsqueeze(1)  # (B, t, tau): the same skill
    g = g_c.float()

    def summed(match):  # (B, t, tau) bool -> sum over tau of g_c[tau] (B, L)
        return torch.bmm((match & upto).to(g.dtype), g.unsqueeze(-1)).squeeze(-1)

    m0 = torch.sigmoid(l0.float())
    s_c, s_q = summed(same_c), summed(q.unsqueeze(2) == c.unsqueeze(1))
    m0_c, m0_q = m0.gather(1, c), m0.gather(1, q)
    m_c = mastery_link(m0_c, l0.float().gather(1, c), s_c, scale, link)
    m_q = mastery_link(m0_q, l0.float().gather(1, q), s_q, scale, link)
    later = same_c & (steps.view(1, l, 1) > steps.view(1, 1, l))  # (B, tau', tau): tau' > tau, same skill
    nxt = torch.where(later.any(1), later.float().argmax(1), torch.full_like(c, l))  # next practice of c_tau
    live = ((steps.view(1, l, 1) >= steps.view(1, 1, l)) & (steps.view(1, l, 1) < nxt.unsqueeze(1))).to(g.dtype)
    mastery_mean = m0.mean(-1, keepdim=True) + torch.bmm(live, (m_c - m0_c).unsqueeze(-1)).squeeze(-1) / num_c
    excess = None
    if link == "clamp":
        over = torch.relu(m0_c + scale * s_c - 1.0)
        excess = torch.bmm(live, over.unsqueeze(-1)).squeeze(-1)
    return StepValues(gain_sum=g, gain_at_c=g, mastery_mean=mastery_mean, mastery_at_c=m_c, mastery_at_q=m_q,
                      cap_excess=excess, num_c=num_c)


def practised_full(g_c: torch.Tensor, l0: torch.Tensor, c: torch.Tensor, scale: float, link: str,
                   num_c: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Full (B, L, C) gains and mastery of the practised-skill scope (evaluation passes that need every skill)."""
    gains = torch.zeros(*c.shape, num_c, dtype=torch.float32, device=c.device).scatter_(
        2, c.unsqueeze(-1), g_c.float().unsqueeze(-1))
    s = torch.cat([torch.zeros_like(gains[:, :1]), gains[:, 1:]], 1).cumsum(1)
    l0 = l0.float().unsqueeze(1)
    return gains, mastery_link(torch.sigmoid(l0), l0, s, scale, link)
