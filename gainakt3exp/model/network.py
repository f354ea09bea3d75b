"""GainAKT3Exp: a two-stream causal transformer with per-skill mastery and learning-gain heads (docs/model.md).

    model = GainAKT3Exp.from_params(params, num_c=100)
    out = model(batch.c, batch.r, batch.q)   # ModelOutput(logits (B,L), mastery (B,L,C)|None, gains (B,L,C)|None)
    out = model(c, r, q, logits=False)       # an interpretability-only pass: logits None
    out = model(c, r, q, reduced=True)       # training: out.steps (B, L) reductions, no (B, L, C) mastery/gains

Shapes: B batch, L steps (L <= seq_len - 1), D d_model, C num_c.
Each step is embedded into two streams: the context stream H (queries and keys) and the value stream V
(attention values). emb_type qid (the seed): one embedding per interaction token x_t = c_t + C * r_t;
concept_plus_response (AKT's): e(c_t) + e_r(r_t), so a concept's right and wrong answers share its embedding.
Attention is causal (step t sees steps <= t); padding is trailing, so causality alone keeps padded steps out of
every valid step. attention_bias alibi adds -slope_h * (t - tau) to head h's score of step tau at step t (ALiBi,
slopes 2^(-8h/H), h = 1..H): a recency prior, like AKT's attention that decays with distance; none (the seed)
adds nothing. query_embedding: the prediction head reads the next concept c_{t+1} through its own embedding
(own, the seed) or through the context or value stream's concept embedding, the same weights (AKT shares one
question embedding between its encoders and its prediction). shared_gain: the gain head's weights are each skill's
own plus one part shared by every skill (W_k + u), so rarely practised skills learn from every skill's steps;
mastery_head_init_scale scales the mastery head's initial weights (not its bias). Outputs are float32 even under
bf16 autocast.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import nn

from gainakt3exp.config.choices import resolve_question_embedding, rule_problems
from gainakt3exp.errors import ConfigError
from gainakt3exp.model.cumulative import StepValues, cumulative_steps, practised_full, practised_steps, steps_from_full

#: Keys of the run parameter dict that build the model (num_c comes from the data set).
MODEL_PARAM_KEYS = (
    "seq_len",
    "d_model",
    "n_heads",
    "num_encoder_blocks",
    "d_ff",
    "dropout",
    "emb_type",
    "attention_bias",
    "query_embedding",
    "question_embedding",
    "use_mastery_head",
    "use_gain_head",
    "mastery_gain_scale",
    "gain_scope",
    "mastery_link",
    "mastery_in_prediction",
    "gain_head_init_scale",
    "mastery_head_init_scale",
    "shared_gain",
)

#: Fixed numbers of the model that are not run parameters (recorded in each config.json with the objective's).
FIXED_CONSTANTS = {
    "dropout_mask_levels": 1 << 16,  # dropout p is used rounded to a multiple of 1 / this (see _Dropout)
    "mastery_logit_eps": 1e-4,  # mastery_in_prediction logit: m clamped to [eps, 1 - eps] before the logit
}


class ModelOutput(NamedTuple):
    """What the forward returns; heads that are switched off give None."""

    logits: Optional[torch.Tensor]  # z_t, logit of r_{t+1} (B, L); None when not asked for
    mastery: Optional[torch.Tensor]  # m_t per skill in [0, 1] (B, L, C)
    gains: Optional[torch.Tensor]  # g_t per skill, >= 0 (B, L, C)
    steps: Optional[StepValues] = None  # per-step reductions (reduced=True): what the objective reads
    difficulty: Optional[torch.Tensor] = None  # mu_q of each step's question (B, L), question_embedding rasch


class _Dropout(nn.Module):
    """Inverted dropout with 16-bit random draws: x * keep / (1 - p16), keep = (u16 >= p16), u16 ~ U{0..65535}/65536.

    p is rounded to a multiple of 2^-16 (p16 = round(p * 65536) / 65536; 0.2 -> 0.1999969) and the kept values
    are scaled by 1 / (1 - p16), so E[output] = x exactly. Four 16-bit draws come from one 64-bit draw of the
    torch generator: on CPU, nn.Dropout's bernoulli_ runs on one core and a float uniform_ per element costs 3x
    more; dropout sampling was ~17% of a training step (benchmarks/train_throughput.py --torch_profile).
    """

    LEVELS = FIXED_CONSTANTS["dropout_mask_levels"]  # = 2^16: the masks compare int16 views of random words

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)
        # Dropped count out of 65536 levels; at most 65535 so the scale stays finite.
        self.dropped_levels = min(round(self.p * self.LEVELS), self.LEVELS - 1)
        self.threshold = self.dropped_levels - self.LEVELS // 2  # u16 as int16 in [-32768, 32767]
        self.scale = self.LEVELS / (self.LEVELS - self.dropped_levels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.dropped_levels == 0:
            return x
        n = x.numel()
        # 64 random bits per word (the full int64 range), read as four int16 values
        words = torch.empty((n + 3) // 4, dtype=torch.int64, device=x.device).random_(-(1 << 63), None)
        u16 = words.view(torch.int16)[:n].view(x.shape)
        # x * scale with the dropped cells set to 0, in place on the product (autograd's masked_fill_ backward
        # does the same to the gradient): two passes instead of the four of x * keep * scale, whose bool mask is
        # first converted to a float tensor. A product by 1 is exact, so every kept value is that formula's float;
        # a dropped cell is +0.0 where a negative x gave -0.0, equal as a value (tests/test_model.py).
        return x.mul(self.scale).masked_fill_(u16 < self.threshold, 0.0)


class _EncoderBlock(nn.Module):
    """One two-stream block: Q, K from H, V from V; out updates both streams, the FFN only H."""

    def __init__(self, d_model: int, n_heads: int, d_ff: int, dropout: float):
        super().__init__()
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = _Dropout(dropout)
        self.ln_context = nn.LayerNorm(d_model)
        self.ln_value = nn.LayerNorm(d_model)
        self.ln_ffn = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(
            nn.Linear(d_model, d_ff), nn.ReLU(), _Dropout(dropout), nn.Linear(d_ff, d_model)
        )

    def _split_heads(self, x: torch.Tensor) -> torch.Tensor:
        b, l, d = x.shape
        return x.view(b, l, self.n_heads, d // self.n_heads).transpose(1, 2)  # (B, h, L, D/h)

    def forward(self, h: torch.Tensor, v: torch.Tensor, h_steps: Optional[int] = None,
                bias: Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
        """h_steps: compute the new H for the first h_steps steps only (None = all); V is always complete.
        Only H's FFN is skipped: H's first steps do not depend on later ones, V does not depend on the FFN.
        bias: (h, L, L) added to the attention scores, -inf above the diagonal (causal); None: causal only."""
        b, l, d = h.shape
        attn = F.scaled_dot_product_attention(
            self._split_heads(self.q_proj(h)),
            self._split_heads(self.k_proj(h)),
            self._split_heads(self.v_proj(v)),
            attn_mask=bias,
            is_causal=bias is None,
        )  # (B, h, L, D/h)
        out = self.dropout(self.out_proj(attn.transpose(1, 2).reshape(b, l, d)))  # (B, L, D)
        if h_steps is not None:
            h, out_h = h[:, :h_steps], out[:, :h_steps]
        else:
            out_h = out
        h1 = self.ln_context(h + out_h)
        v_new = self.ln_value(v + out)
        h_new = self.ln_ffn(h1 + self.ffn(h1))
        return h_new, v_new


class GainAKT3Exp(nn.Module):
    """The GainAKT3Exp model (docs/model.md). Every argument is required: defaults live only in parameter_default.json."""

    def __init__(
        self,
        *,
        num_c: int,
        seq_len: int,
        d_model: int,
        n_heads: int,
        num_encoder_blocks: int,
        d_ff: int,
        dropout: float,
        emb_type: str,
        attention_bias: str,
        query_embedding: str,
        use_mastery_head: bool,
        use_gain_head: bool,
        mastery_gain_scale: float,
        gain_scope: str,
        mastery_link: str,
        mastery_in_prediction: str,
        gain_head_init_scale: float,
        mastery_head_init_scale: float,
        shared_gain: bool,
        question_embedding: str,
        num_q: int = 0,
    ):
        """num_c and num_q (question ids; 0 = concepts only) come from the data set, every other argument from the
        run parameters (from_params). With questions a step's response can be HIDDEN (sequences.make_batch), so the
        interaction vocabulary has three responses."""
        super().__init__()
        question_embedding = resolve_question_embedding(question_embedding, num_q)
        problems = _architecture_problems(num_c, seq_len, d_model, n_heads, num_encoder_blocks, d_ff, dropout)
        problems += rule_problems({
            "emb_type": emb_type, "attention_bias": attention_bias, "query_embedding": query_embedding,
            "mastery_in_prediction": mastery_in_prediction, "use_mastery_head": use_mastery_head,
            "use_gain_head": use_gain_head, "gain_scope": gain_scope, "mastery_link": mastery_link,
            "shared_gain": shared_gain, "question_embedding": question_embedding})
        if question_embedding == "rasch" and num_q < 1:
            problems.append("question_embedding=rasch needs question ids, but the data set has none (num_q 0): set "
                            "question_embedding none or use a question-level data set")
        if problems:
            raise ConfigError("invalid model configuration: " + "; ".join(problems))
        self.mastery_in_prediction = mastery_in_prediction
        self.gain_scope, self.mastery_link = gain_scope, mastery_link
        self.num_c = num_c
        self.seq_len = seq_len
        self.use_mastery_head = use_mastery_head
        self.use_gain_head = use_gain_head
        self.mastery_gain_scale = float(mastery_gain_scale)

        self.emb_type = emb_type
        self.num_q = num_q
        responses = 3 if num_q else 2  # 0, 1, and HIDDEN where the data has multi-concept questions
        tokens = responses * num_c if emb_type == "qid" else num_c  # interaction tokens, or concepts
        self.context_emb = nn.Embedding(tokens, d_model)  # -> H_0
        self.value_emb = nn.Embedding(tokens, d_model)  # -> V_0
        self.concept_emb = nn.Embedding(num_c, d_model)  # query concept c_{t+1}
        self.pos_emb = nn.Embedding(seq_len, d_model)  # added to both streams
        if emb_type == "concept_plus_response":  # made after the seed's modules: qid draws the same initial weights
            self.context_response_emb = nn.Embedding(responses, d_model)
            self.value_response_emb = nn.Embedding(responses, d_model)

        if query_embedding != "own":  # tying draws no random numbers: every other weight starts as without it
            self.concept_emb.weight = getattr(self, f"{query_embedding}_emb").weight

        self.attention_bias = attention_bias
        if attention_bias == "alibi":  # not a weight (no state_dict entry, no random draw): checkpoints keep their keys
            slopes = torch.tensor([2.0 ** (-8.0 * (i + 1) / n_heads) for i in range(n_heads)])
            self.register_buffer("alibi_slopes", slopes, persistent=False)
        self.blocks = nn.ModuleList(
            _EncoderBlock(d_model, n_heads, d_ff, dropout) for _ in range(num_encoder_blocks)
        )
        self.prediction_head = nn.Sequential(
            nn.Linear(3 * d_model, d_ff), nn.ReLU(), _Dropout(dropout), nn.Linear(d_ff, 1)
        )
        self.gain_head = nn.Linear(d_model, num_c) if use_gain_head else None
        if self.gain_head is not None and gain_head_init_scale != 1.0:  # 1.0: PyTorch's init, as in the seed
            with torch.no_grad():
                self.gain_head.weight.mul_(gain_head_init_scale)
                self.gain_head.bias.mul_(gain_head_init_scale)
        self.mastery_head = nn.Linear(d_model, num_c) if use_mastery_head else None
        if self.mastery_head is not None and mastery_head_init_scale != 1.0:  # 1.0: PyTorch's init (the seed)
            with torch.no_grad():
                self.mastery_head.weight.mul_(mastery_head_init_scale)  # the bias keeps a per-skill m_0
        # shared_gain: the gain head's effective weights are W_k + u, b_k + b_u (see _gain_weights); made last, so
        # that without it every other weight starts as before, and started like the gain head (gain_head_init_scale)
        self.shared_gain_head = None
        if shared_gain:
            self.shared_gain_head = nn.Linear(d_model, 1)
            with torch.no_grad():
                self.shared_gain_head.weight.mul_(gain_head_init_scale)
                self.shared_gain_head.bias.mul_(gain_head_init_scale)
        # question_embedding rasch (AKT): e(c, r) + mu_q (d_c + f_r) for a step, e(c) + mu_q d_c for the query;
        # made last, so every other weight starts as without it; the difficulties mu start at 0, as in AKT
        self.question_difficulty = self.concept_variation = self.response_variation = None
        if question_embedding == "rasch":
            self.question_difficulty = nn.Embedding(num_q, 1)
            nn.init.zeros_(self.question_difficulty.weight)
            self.concept_variation = nn.Embedding(num_c, d_model)
            self.response_variation = nn.Embedding(responses, d_model)

    @classmethod
    def from_params(cls, params: dict, num_c: int, num_q: int = 0) -> "GainAKT3Exp":
        """Build the model from the run parameter dict (only MODEL_PARAM_KEYS are read) and the data set's num_c
        and num_q (question ids; 0 for a concept-level data set)."""
        missing = [k for k in MODEL_PARAM_KEYS if k not in params]
        if missing:
            raise ConfigError(
                f"model parameters missing: {', '.join(missing)}; "
                "fix: start from configs/parameter_default.json, which defines every key"
            )
        return cls(num_c=num_c, num_q=num_q, **{k: params[k] for k in MODEL_PARAM_KEYS})

    def forward(self, c: torch.Tensor, r: torch.Tensor, q: torch.Tensor, *, question: Optional[torch.Tensor] = None,
                next_question: Optional[torch.Tensor] = None, logits: bool = True, interpretation: bool = True,
                reduced: bool = False) -> ModelOutput:
        """c, r, q: (B, L) long (current concept, current response, next concept; padding already 0); question,
        next_question: (B, L) long question ids of steps t and t+1 (read by question_embedding rasch only).

        logits=False / interpretation=False leave out the prediction / the mastery and gain heads (their
        fields are None) and whatever only they need: without logits, the last block's FFN runs for the steps
        the mastery head reads (step 0 with the gain head, every step without it, none without the mastery
        head). Evaluation passes that need only one kind of output use them; the outputs that are computed
        equal the full pass's up to float rounding (a matmul over fewer rows may round differently, ~1e-7).

        reduced=True (training): `steps` holds the per-step reductions the objective reads (cumulative.StepValues)
        and, with the gain head, mastery and gains stay None: they are never materialised as (B, L, C) tensors
        (cumulative.cumulative_steps). Without the gain head the per-step mastery is returned too (monotonicity
        reads it).
        """
        rasch = None
        if self.question_difficulty is not None:
            if question is None or next_question is None:
                raise ConfigError("question_embedding rasch needs each step's question id, and this batch has none; "
                                  "fix: use a question-level data set (its sequence files have a questions column)")
            rasch = (self.question_difficulty(question).squeeze(-1), self.question_difficulty(next_question).squeeze(-1))
        out = self._forward(c, r, q, rasch, logits, interpretation, reduced)
        return out if rasch is None else out._replace(difficulty=rasch[0])

    def _forward(self, c, r, q, rasch, logits: bool, interpretation: bool, reduced: bool) -> ModelOutput:
        assert c.shape == r.shape == q.shape and c.dim() == 2, (c.shape, r.shape, q.shape)
        l = c.shape[1]
        if l > self.seq_len:
            raise ConfigError(
                f"seq_len={self.seq_len} but a batch has {l} steps; fix: set seq_len to the data files' window length"
            )
        pos = self.pos_emb.weight[:l]  # (L, D)
        if self.emb_type == "qid":
            x = c + self.num_c * r  # interaction token (B, L)
            h = self.context_emb(x) + pos  # context stream (B, L, D)
            v = self.value_emb(x) + pos  # value stream (B, L, D)
        else:  # concept_plus_response
            h = self.context_emb(c) + self.context_response_emb(r) + pos
            v = self.value_emb(c) + self.value_response_emb(r) + pos
        if rasch is not None:  # mu_q (d_c + f_r), AKT's interaction embedding
            shift = rasch[0].unsqueeze(-1) * (self.concept_variation(c) + self.response_variation(r))
            h, v = h + shift, v + shift

        gain_head = self.gain_head if interpretation else None
        mastery_head = self.mastery_head if interpretation else None
        last_h_steps = None  # steps of the last block's H that anything reads
        if not logits:
            last_h_steps = 0 if mastery_head is None else (1 if gain_head is not None else None)
        bias = self._attention_bias(l)
        for i, block in enumerate(self.blocks):
            h, v = block(h, v, last_h_steps if i == len(self.blocks) - 1 else None, bias)

        z = self._predict(h, v, q, None if rasch is None else rasch[1]) if logits else None  # z (B, L)
        reads_mastery = logits and self.mastery_in_prediction != "none"
        if reduced or (reads_mastery and mastery_head is None):  # a prediction pass still needs m_t[q_t]
            out = self._reduced(z, h, v, c, q, self.gain_head, self.mastery_head)
            if reads_mastery:
                z = z + self._mastery_logit(out.steps.mastery_at_q)
            if reduced:
                return out._replace(logits=z)
            return ModelOutput(logits=z, mastery=None, gains=None)

        if gain_head is not None and self.gain_scope == "practised_skill":
            gains = mastery = None
            g_c = self._practised_gain(v, c)
            if mastery_head is not None:
                gains, mastery = practised_full(g_c, mastery_head(h[:, 0]).float(), c, self.mastery_gain_scale,
                                                self.mastery_link, self.num_c)
            else:
                gains = torch.zeros(*c.shape, self.num_c, device=c.device).scatter_(2, c.unsqueeze(-1),
                                                                                    g_c.unsqueeze(-1))
            if reads_mastery:
                z = z + self._mastery_logit(mastery.gather(-1, q.unsqueeze(-1)).squeeze(-1))
            return ModelOutput(logits=z, mastery=mastery, gains=gains)

        gains = None
        if gain_head is not None:
            gains = F.linear(v, *self._gain_weights()).float().relu_()  # g (B, L, C)

        mastery = None
        if mastery_head is not None:
            if gains is not None:
                m0 = torch.sigmoid(mastery_head(h[:, :1]).float())  # m_0 (B, 1, C)
                # m_t = min(1, m_0 + scale * sum_{1<=tau<=t} g_tau), in place on one (B, L, C) copy of g: the same
                # float operations as out of place (bitwise equal), a third of the time at C=1,200
                mastery = gains.clone()
                mastery[:, 0] = 0.0
                mastery.cumsum_(dim=1).mul_(self.mastery_gain_scale).add_(m0).clamp_(max=1.0)
            else:
                mastery = torch.sigmoid(mastery_head(h).float())  # (B, L, C)
        if reads_mastery:
            z = z + self._mastery_logit(mastery.gather(-1, q.unsqueeze(-1)).squeeze(-1))
        return ModelOutput(logits=z, mastery=mastery, gains=gains)

    def _attention_bias(self, l: int) -> Optional[torch.Tensor]:
        """(h, L, L) scores added by attention_bias alibi: -slope_h * (t - tau) for tau <= t, -inf after t; None
        for none (the blocks then use is_causal)."""
        if self.attention_bias == "none":
            return None
        steps = torch.arange(l, device=self.alibi_slopes.device)
        back = (steps.view(l, 1) - steps.view(1, l)).float()  # t - tau
        return torch.where(back >= 0, -self.alibi_slopes.view(-1, 1, 1) * back, float("-inf"))

    def _practised_gain(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """g_t[c_t] = ReLU(W[c_t] . v_t + b[c_t]) (B, L): the gain head's row of the practised skill only."""
        weight, bias = self._gain_weights()
        w = F.embedding(c, weight)  # (B, L, D)
        return F.relu((w * v).sum(-1) + bias[c]).float()

    def _gain_weights(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The gain head's weight (C, D) and bias (C,): its own, or with shared_gain its own plus the shared part
        (u, b_u) broadcast to every skill, so g_t[k] = ReLU((W_k + u) . v_t + b_k + b_u)."""
        if self.shared_gain_head is None:
            return self.gain_head.weight, self.gain_head.bias
        return (self.gain_head.weight + self.shared_gain_head.weight,
                self.gain_head.bias + self.shared_gain_head.bias)

    @staticmethod
    def _mastery_logit(m_q: torch.Tensor) -> torch.Tensor:
        """logit(m_t[q_t]), the mastery of the skill answered next, added to the head's logit (mastery_in_prediction
        logit): the BCE then trains mastery as the skill-specific part of the prediction."""
        eps = FIXED_CONSTANTS["mastery_logit_eps"]
        return torch.logit(m_q.clamp(eps, 1.0 - eps))

    def _reduced(self, z, h, v, c, q, gain_head, mastery_head) -> ModelOutput:
        """The training outputs: logits and StepValues (mastery and gains, reduced per step)."""
        if gain_head is not None and self.gain_scope == "practised_skill":
            g_c = self._practised_gain(v, c)
            if mastery_head is None:
                steps = StepValues(gain_sum=g_c, gain_at_c=g_c, mastery_mean=None, mastery_at_c=None,
                                   mastery_at_q=None, cap_excess=None, num_c=self.num_c)
            else:
                steps = practised_steps(g_c, mastery_head(h[:, 0]).float(), c, q, self.mastery_gain_scale,
                                        self.mastery_link, self.num_c)
            return ModelOutput(logits=z, mastery=None, gains=None, steps=steps)
        if gain_head is not None:
            m0 = torch.sigmoid(mastery_head(h[:, 0]).float()) if mastery_head is not None else None  # m_0 (B, C)
            steps = cumulative_steps(v, *self._gain_weights(), m0, c, q, self.mastery_gain_scale,
                                     with_mastery=mastery_head is not None)
            return ModelOutput(logits=z, mastery=None, gains=None, steps=steps)
        if mastery_head is not None:
            mastery = torch.sigmoid(mastery_head(h).float())  # (B, L, C)
            return ModelOutput(logits=z, mastery=mastery, gains=None, steps=steps_from_full(mastery, None, c, q))
        return ModelOutput(logits=z, mastery=None, gains=None, steps=None)

    def _predict(self, h: torch.Tensor, v: torch.Tensor, q: torch.Tensor,
                 mu_next: Optional[torch.Tensor] = None) -> torch.Tensor:
        """z = head([h, v, concept_emb(q)]), with the head's first layer split by input; with question_embedding
        rasch the query is concept_emb(q) + mu_next * concept_variation(q) (mu_next: the next question's difficulty).

        W [h; v; e_q] + b = W_hv [h; v] + (W_e e_q + b): the concept part depends on q alone, so it is computed
        once per concept as a (C, d_ff) table and looked up, instead of a (B*L, D) x (D, d_ff) product per step.
        Same parameters and same function as Linear(3D, d_ff) on the concatenation (up to float rounding); a
        third fewer multiply-adds in the head, forward and backward (benchmarks/train_throughput.py). A batch
        with fewer steps than concepts (B*L < C) takes the concatenation, which is then cheaper.
        """
        first, relu, dropout, last = self.prediction_head
        b, l, d = h.shape
        if self.mastery_in_prediction == "mastery_only":  # the prediction is logit m_t[q_t] alone (added by the caller)
            return h.new_zeros(b, l, dtype=torch.float32)
        w = first.weight  # (d_ff, 3D)
        if self.mastery_in_prediction == "logit_skill_free":  # the next skill reaches the prediction via mastery only
            hv = torch.cat([h, v], dim=-1).reshape(b * l, 2 * d)
            hidden = torch.addmm(first.bias, hv, w[:, : 2 * d].t())  # (B*L, d_ff)
        elif b * l < self.num_c:
            query = self.concept_emb(q)
            if mu_next is not None:
                query = query + mu_next.unsqueeze(-1) * self.concept_variation(q)
            features = torch.cat([h, v, query], dim=-1).reshape(b * l, 3 * d)
            hidden = torch.addmm(first.bias, features, w.t())  # (B*L, d_ff)
        else:
            table = torch.addmm(first.bias, self.concept_emb.weight, w[:, 2 * d:].t())  # (C, d_ff)
            hv = torch.cat([h, v], dim=-1).reshape(b * l, 2 * d)
            hidden = torch.addmm(F.embedding(q.reshape(-1), table), hv, w[:, : 2 * d].t())  # (B*L, d_ff)
            if mu_next is not None:  # + mu W_e d_q, looked up from a (C, d_ff) table as the concept part is
                variation = self.concept_variation.weight @ w[:, 2 * d:].t()
                hidden = hidden + mu_next.reshape(-1, 1) * F.embedding(q.reshape(-1), variation)
        return last(dropout(relu(hidden))).view(b, l).float()


def _architecture_problems(num_c, seq_len, d_model, n_heads, num_encoder_blocks, d_ff, dropout) -> list[str]:
    """The shapes the model cannot be built with (config/choices.py holds the rules of its choice parameters)."""
    problems = []
    for key, value in (("num_c", num_c), ("seq_len", seq_len), ("d_model", d_model), ("n_heads", n_heads),
                       ("num_encoder_blocks", num_encoder_blocks), ("d_ff", d_ff)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            problems.append(f"{key}={value!r} must be an integer >= 1")
    if not problems and d_model % n_heads != 0:
        problems.append(f"n_heads={n_heads} must divide d_model={d_model}")
    if not (0.0 <= float(dropout) < 1.0):
        problems.append(f"dropout={dropout!r} must be in [0, 1)")
    return problems
