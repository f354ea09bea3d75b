"""GainAKT3Exp: causality, head flags, the mastery closed form, determinism, bf16, a golden value."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gainakt3exp.data.sequences import Batch
from gainakt3exp.errors import ConfigError
from gainakt3exp.model.network import GainAKT3Exp, ModelOutput
from gainakt3exp.objective.controller import Objective
from gainakt3exp.paths import CONFIG_DIR

DEFAULTS = json.loads((CONFIG_DIR / "parameter_default.json").read_text())["defaults"]
C, B, L = 4, 3, 6


def _model(**overrides) -> GainAKT3Exp:
    kwargs = dict(num_c=C, seq_len=L + 1, d_model=16, n_heads=2, num_encoder_blocks=2, d_ff=24, dropout=0.1,
                  emb_type="qid", attention_bias="none", query_embedding="own", use_mastery_head=True,
                  use_gain_head=True, mastery_gain_scale=0.1, gain_scope="all_skills", mastery_link="clamp", mastery_in_prediction="none",
                  gain_head_init_scale=1.0, mastery_head_init_scale=1.0, shared_gain=False, question_embedding="none")
    kwargs.update(overrides)
    return GainAKT3Exp(**kwargs).eval()


def _inputs(seed: int = 1):
    gen = torch.Generator().manual_seed(seed)
    c = torch.randint(0, C, (B, L), generator=gen)
    r = torch.randint(0, 2, (B, L), generator=gen)
    q = torch.randint(0, C, (B, L), generator=gen)
    return c, r, q


def _final_streams(model, c, r, q):
    """(H, V) after the last block, captured with a forward hook."""
    captured = {}
    handle = model.blocks[-1].register_forward_hook(lambda mod, inp, outp: captured.update(hv=outp))
    out = model(c, r, q)
    handle.remove()
    return out, captured["hv"]


@pytest.mark.parametrize("emb_type,attention_bias", [("qid", "none"), ("concept_plus_response", "none"),
                                                     ("qid", "alibi")])
def test_prediction_mastery_and_gains_ignore_future_responses(emb_type, attention_bias):
    torch.manual_seed(0)
    model = _model(emb_type=emb_type, attention_bias=attention_bias)
    c, r, q = _inputs()
    with torch.no_grad():
        base, base_steps = model(c, r, q), model(c, r, q, reduced=True).steps
        for t in range(L - 1):
            r_flip = r.clone()
            r_flip[:, t + 1:] = 1 - r_flip[:, t + 1:]
            flipped, flipped_steps = model(c, r_flip, q), model(c, r_flip, q, reduced=True).steps
            for a, b in zip(base[:3], flipped[:3]):
                torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
            for a, b in zip(base_steps[:-1], flipped_steps[:-1]):  # the reduced pass too (num_c is last)
                torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1], rtol=0, atol=1e-6)
            assert not torch.allclose(base.logits[:, t + 1:], flipped.logits[:, t + 1:])  # the flip is seen later


@pytest.mark.parametrize("mastery_on,gains_on", [(True, True), (True, False), (False, True), (False, False)])
def test_output_shapes_and_missing_heads_are_none(mastery_on, gains_on):
    torch.manual_seed(0)
    out = _model(use_mastery_head=mastery_on, use_gain_head=gains_on)(*_inputs())
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (B, L) and out.logits.dtype == torch.float32
    assert (out.mastery is not None) == mastery_on and (out.gains is not None) == gains_on
    for head in (out.mastery, out.gains):
        if head is not None:
            assert head.shape == (B, L, C)
    if gains_on:
        assert (out.gains >= 0).all()


def test_mastery_is_initial_mastery_plus_scaled_cumulative_gains_capped_at_one():
    torch.manual_seed(0)
    scale = 3.0  # large, so that the cap at 1 is reached
    model = _model(mastery_gain_scale=scale)
    c, r, q = _inputs()
    with torch.no_grad():
        out, (h, _) = _final_streams(model, c, r, q)
        m0 = torch.sigmoid(model.mastery_head(h[:, 0])).numpy()  # (B, C)
    g = out.gains.numpy()
    expected = np.empty((B, L, C), dtype=np.float64)
    for t in range(L):
        expected[:, t] = np.minimum(1.0, m0 + scale * g[:, 1: t + 1].sum(axis=1))
    np.testing.assert_allclose(out.mastery.numpy(), expected, atol=1e-6)
    assert (out.mastery <= 1).all() and (out.mastery == 1).any()
    # computed in place, it is bitwise the out-of-place expression of the definition
    g_from_1 = torch.cat([torch.zeros_like(out.gains[:, :1]), out.gains[:, 1:]], dim=1)
    assert torch.equal(out.mastery, torch.clamp(torch.from_numpy(m0).unsqueeze(1) + scale * g_from_1.cumsum(1),
                                                max=1.0))


def test_mastery_without_gain_head_is_sigmoid_of_context_stream():
    torch.manual_seed(0)
    model = _model(use_gain_head=False)
    with torch.no_grad():
        out, (h, _) = _final_streams(model, *_inputs())
        torch.testing.assert_close(out.mastery, torch.sigmoid(model.mastery_head(h)))


def test_unsupported_emb_type_is_refused():
    with pytest.raises(ConfigError, match="emb_type"):
        _model(emb_type="qid_cl")


def test_n_heads_not_dividing_d_model_is_refused():
    with pytest.raises(ConfigError, match="n_heads"):
        _model(n_heads=3)


def test_from_params_reads_the_run_parameters():
    params = dict(DEFAULTS, seq_len=7, d_model=8, n_heads=2, num_encoder_blocks=1, d_ff=12, use_gain_head=False)
    model = GainAKT3Exp.from_params(params, num_c=C)
    assert model.gain_head is None and model.pos_emb.weight.shape == (7, 8) and len(model.blocks) == 1
    with pytest.raises(ConfigError, match="d_model"):
        GainAKT3Exp.from_params({k: v for k, v in params.items() if k != "d_model"}, num_c=C)


def test_forward_is_deterministic_under_deterministic_algorithms():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        outs = []
        for _ in range(2):
            torch.manual_seed(0)
            model = _model().train()
            outs.append(model(*_inputs()))
            outs[-1].logits.sum().backward()
        for a, b in zip(outs[0][:3], outs[1][:3]):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(previous)


@pytest.mark.parametrize("attention_bias", ["none", "alibi"])
def test_forward_under_bf16_autocast_matches_float32(attention_bias):
    """bf16 matrix products, float32 outputs: logits, mastery and gains within 0.02 of the float32 pass (measured
    max |diff| 0.002-0.005 on this model; a float16 bias, a lost cast or a bf16 cumulative sum is far off)."""
    torch.manual_seed(0)
    model = _model(attention_bias=attention_bias)
    reference = model(*_inputs())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*_inputs())
    for name, got, want in zip(("logits", "mastery", "gains"), out[:3], reference[:3]):
        assert got.dtype == torch.float32, name
        assert torch.allclose(got, want, atol=0.02, rtol=0), (name, float((got - want).abs().max()))
    assert (out.mastery <= 1).all()


def _gradients(amp: bool) -> torch.Tensor:
    torch.manual_seed(0)
    model = _model().train()
    torch.manual_seed(5)  # the same dropout masks in both passes
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        out = model(*_inputs())
    (out.logits.sum() + out.mastery.mean() + out.gains.mean()).backward()
    assert all(p.grad is not None for p in model.parameters())
    return torch.cat([p.grad.flatten() for p in model.parameters()])


def test_training_step_under_bf16_autocast_gives_the_float32_gradients():
    """Train mode: dropout masks and the split head under autocast, then a backward pass. Every parameter gets a
    gradient, and the whole gradient points where float32's does (measured: cosine 0.99999, relative error 0.4%)."""
    g16, g32 = _gradients(True), _gradients(False)
    assert torch.isfinite(g16).all()
    assert float(F.cosine_similarity(g16, g32, dim=0)) > 0.999
    assert float((g16 - g32).norm() / g32.norm()) < 0.02


def test_golden_first_forward_and_loss_of_a_tiny_seeded_model():
    """Golden numbers: update deliberately, in the same commit as a change that moves them."""
    torch.manual_seed(0)
    params = dict(DEFAULTS, seq_len=L + 1, d_model=16, n_heads=2, num_encoder_blocks=2, d_ff=24, dropout=0.1)
    model = GainAKT3Exp.from_params(params, num_c=C).eval()
    c, r, q = _inputs(seed=3)
    gen = torch.Generator().manual_seed(4)
    y = torch.randint(0, 2, (B, L), generator=gen).float()
    mask = torch.ones(B, L, dtype=torch.bool)
    mask[2, 4:] = False
    batch = Batch(c=c, r=r, q=q, y=y * mask, mask=mask, score=mask, rows=torch.arange(B))
    objective = Objective(params)
    objective.begin_epoch(0)
    with torch.no_grad():
        out = model(c, r, q, reduced=True)
        total, parts = objective(out, batch)
    assert round(float(out.logits.sum()), 6) == pytest.approx(GOLDEN["logits_sum"], abs=2e-6)
    assert round(float(parts["bce"]), 6) == pytest.approx(GOLDEN["bce"], abs=2e-6)
    assert round(float(total), 6) == pytest.approx(GOLDEN["total"], abs=2e-6)


GOLDEN = {"logits_sum": -2.043499, "bce": 0.709672, "total": 0.846043}


def test_dropout_keeps_the_expected_fraction_and_scales_the_rest():
    from gainakt3exp.model.network import _Dropout

    torch.manual_seed(0)
    drop = _Dropout(0.2).train()
    y = drop(torch.ones(400_000))
    kept = y != 0
    # p is rounded to 16 bits: 13107 of 65536 levels dropped; the kept values are scaled so E[y] = x exactly.
    assert drop.dropped_levels == 13107
    assert torch.equal(y[kept], torch.full_like(y[kept], 65536 / (65536 - 13107)))
    assert abs(kept.float().mean().item() - 0.8) < 0.003
    # Each of the four 16-bit lanes of a 64-bit draw keeps 80%: no lane is biased.
    lanes = kept.view(-1, 4).float().mean(dim=0)
    assert torch.all((lanes - 0.8).abs() < 0.006), lanes
    assert torch.equal(drop.eval()(torch.ones(5)), torch.ones(5))


def test_dropout_edges_zero_odd_sizes_and_near_one():
    from gainakt3exp.model.network import _Dropout

    x = torch.randn(3, 7)  # 21 elements: not a multiple of four
    assert torch.equal(_Dropout(0.0).train()(x), x)
    torch.manual_seed(1)
    y = _Dropout(0.5).train()(x)
    assert y.shape == x.shape and torch.equal(y[y != 0], 2 * x[y != 0])
    near_one = _Dropout(0.999999).train()
    assert near_one.dropped_levels == 65535 and torch.isfinite(near_one(torch.ones(1000))).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_dropout_equals_the_product_with_its_mask_bitwise_forward_and_backward(dtype):
    """Dropout gives the values of x * keep * scale (keep = the 0/1 mask, the formula of earlier runs), and its
    gradient grad * scale * keep: earlier runs still reproduce identical. (torch.equal compares values: a dropped
    negative cell is +0.0 now, -0.0 before.)"""
    from gainakt3exp.model.network import _Dropout

    drop = _Dropout(0.2).train()
    x = torch.randn(37, 29).to(dtype).requires_grad_()
    x_ref = x.detach().clone().requires_grad_()
    grad = torch.randn(37, 29).to(dtype)
    torch.manual_seed(3)
    y = drop(x)
    torch.manual_seed(3)  # the same draws, the mask rebuilt as the formula of earlier runs did
    words = torch.empty((x.numel() + 3) // 4, dtype=torch.int64).random_(-(1 << 63), None)
    keep = words.view(torch.int16)[:x.numel()].view(x.shape) >= drop.threshold
    y_ref = x_ref * keep * drop.scale
    y.backward(grad)
    y_ref.backward(grad)
    assert y.dtype == dtype and torch.equal(y, y_ref) and torch.equal(x.grad, x_ref.grad)
    assert 0 < int((y == 0).sum()) < y.numel()


@pytest.mark.parametrize("steps", [L, 1])  # B*L >= C: the lookup table; B*1 < C: the concatenation
def test_split_prediction_head_equals_the_linear_on_the_concatenation(steps):
    """_predict computes Linear(3D, d_ff) on [h, v, concept_emb(q)] with the concept part as a lookup table."""
    torch.manual_seed(0)
    model = _model()
    c, r, q = _inputs(seed=5)
    q = q[:, :steps]
    h = torch.randn(B, steps, 16, requires_grad=True)
    v = torch.randn(B, steps, 16, requires_grad=True)
    got = model._predict(h, v, q)
    reference = model.prediction_head(torch.cat([h, v, model.concept_emb(q)], dim=-1)).squeeze(-1)
    assert torch.allclose(got, reference, atol=1e-6)
    grads = torch.autograd.grad(got.sum(), [h, v, model.concept_emb.weight, model.prediction_head[0].weight])
    ref_grads = torch.autograd.grad(reference.sum(), [h, v, model.concept_emb.weight,
                                                      model.prediction_head[0].weight])
    for g, ref in zip(grads, ref_grads):
        assert torch.allclose(g, ref, atol=1e-6)


@pytest.mark.parametrize("mastery_on,gains_on", [(True, True), (True, False), (False, True)])
def test_partial_passes_give_the_same_outputs_and_skip_the_unneeded_work(mastery_on, gains_on):
    """logits=False skips the prediction head and the last block's FFN beyond the steps the mastery head
    reads; interpretation=False skips the mastery and gain heads. What is computed equals the full pass."""
    torch.manual_seed(0)
    model = _model(use_mastery_head=mastery_on, use_gain_head=gains_on)
    c, r, q = _inputs(seed=7)
    ffn_steps = []
    model.blocks[-1].ffn.register_forward_hook(lambda mod, inp, outp: ffn_steps.append(inp[0].shape[1]))
    with torch.no_grad():
        full = model(c, r, q)
        interp = model(c, r, q, logits=False)
        pred = model(c, r, q, interpretation=False)
    assert ffn_steps == [L, 1 if mastery_on and gains_on else L if mastery_on else 0, L]
    assert interp.logits is None and pred.mastery is None and pred.gains is None
    assert torch.allclose(pred.logits, full.logits, atol=1e-6)
    for got, ref in ((interp.mastery, full.mastery), (interp.gains, full.gains)):
        assert (got is None) == (ref is None)
        if ref is not None:
            assert torch.allclose(got, ref, atol=1e-6)


def test_mastery_in_prediction_logit_adds_the_logit_of_the_next_skills_mastery():
    """z = head + logit(m_t[q_t]) in every pass (full, reduced, prediction-only), with the same weights."""
    torch.manual_seed(0)
    base = _model().eval()
    reading = _model(mastery_in_prediction="logit").eval()
    reading.load_state_dict(base.state_dict())
    c, r, q = _inputs()
    with torch.no_grad():
        full = base(c, r, q)
        m_q = full.mastery.gather(-1, q.unsqueeze(-1)).squeeze(-1)
        want = full.logits + torch.logit(m_q.clamp(1e-4, 1 - 1e-4))
        torch.testing.assert_close(reading(c, r, q).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reading(c, r, q, reduced=True).logits, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reading(c, r, q, interpretation=False).logits, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="mastery_in_prediction"):
        _model(mastery_in_prediction="logit", use_mastery_head=False)


@pytest.mark.parametrize("scope,link", [("all_skills", "clamp"), ("practised_skill", "logistic")])
def test_mastery_only_predicts_the_next_skills_mastery_and_trains_it(scope, link):
    """mastery_only: P(correct) = m_t[q_t] in every pass, and the BCE's gradient reaches the mastery and gain heads
    but not the unused prediction head."""
    torch.manual_seed(0)
    model = _model(mastery_in_prediction="mastery_only", gain_scope=scope, mastery_link=link)
    c, r, q = _inputs()
    with torch.no_grad():
        full = model(c, r, q)
        m_q = full.mastery.gather(-1, q.unsqueeze(-1)).squeeze(-1).clamp(1e-4, 1 - 1e-4)
        torch.testing.assert_close(torch.sigmoid(full.logits), m_q, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(torch.sigmoid(model(c, r, q, interpretation=False).logits), m_q,
                                   rtol=1e-5, atol=1e-6)
    model.train()
    out = model(c, r, q, reduced=True)
    torch.testing.assert_close(torch.sigmoid(out.logits), out.steps.mastery_at_q.clamp(1e-4, 1 - 1e-4),
                               rtol=1e-5, atol=1e-6)
    F.binary_cross_entropy_with_logits(out.logits, r.float()).backward()
    assert all(p.grad is None for p in model.prediction_head.parameters())
    assert float(model.gain_head.weight.grad.abs().sum()) > 0
    assert float(model.mastery_head.weight.grad.abs().sum()) > 0
    with pytest.raises(ConfigError, match="mastery_in_prediction"):
        _model(mastery_in_prediction="mastery_only", use_mastery_head=False)


def test_concept_plus_response_embeds_a_step_as_a_concept_vector_plus_a_response_vector():
    torch.manual_seed(0)
    model = _model(emb_type="concept_plus_response")
    streams = {}
    model.blocks[0].register_forward_pre_hook(lambda mod, args: streams.update(hv=args[:2]))
    c = torch.arange(C).repeat(2, 1)  # every concept, answered wrong (row 0) and right (row 1)
    r = torch.tensor([[0] * C, [1] * C])
    with torch.no_grad():
        model(c, r, c)
    for stream, response_emb in zip(streams["hv"], (model.context_response_emb, model.value_response_emb)):
        # right minus wrong is the same vector for every concept: the concept's part is shared by both answers
        difference = stream[1] - stream[0]
        torch.testing.assert_close(difference, (response_emb.weight[1] - response_emb.weight[0]).expand(C, -1))
    assert model.context_emb.num_embeddings == model.value_emb.num_embeddings == C  # qid has 2C tokens
    assert _model().context_emb.num_embeddings == 2 * C


@pytest.mark.parametrize("head, other, bias_scaled", [("gain", "mastery", True), ("mastery", "gain", False)])
def test_an_init_scale_scales_pytorchs_initial_weights_of_its_own_head_only(head, other, bias_scaled):
    """gain_head_init_scale scales the gain head's weights and bias; mastery_head_init_scale the mastery head's
    weights, not its bias (m_0 starts as one value per skill); nothing else moves."""
    torch.manual_seed(0)
    default = _model()
    torch.manual_seed(0)
    small = _model(**{f"{head}_head_init_scale": 0.01})
    mine, theirs = getattr(small, f"{head}_head"), getattr(default, f"{head}_head")
    torch.testing.assert_close(mine.weight, 0.01 * theirs.weight)
    if bias_scaled:
        torch.testing.assert_close(mine.bias, 0.01 * theirs.bias)
    else:
        torch.testing.assert_close(mine.bias, theirs.bias, rtol=0, atol=0)
    torch.testing.assert_close(getattr(small, f"{other}_head").weight, getattr(default, f"{other}_head").weight,
                               rtol=0, atol=0)


def test_alibi_subtracts_a_per_head_slope_times_the_distance_from_the_attention_scores():
    torch.manual_seed(0)
    model = _model(attention_bias="alibi", n_heads=2)
    torch.testing.assert_close(model.alibi_slopes, torch.tensor([2.0 ** -4, 2.0 ** -8]))
    block, (c, r, q) = model.blocks[0], _inputs()
    got = {}
    block.register_forward_hook(lambda mod, args, out: got.update(args=args, out=out))
    with torch.no_grad():
        model(c, r, q)
        h, v, _, bias = got["args"]
        # the scores by hand: softmax over tau <= t of q_t . k_tau / sqrt(d_head) - slope_h * (t - tau)
        heads = [block._split_heads(proj(x)) for proj, x in ((block.q_proj, h), (block.k_proj, h), (block.v_proj, v))]
        scores = heads[0] @ heads[1].transpose(-1, -2) / (heads[0].shape[-1] ** 0.5)
        t = torch.arange(L)
        distance = (t.view(-1, 1) - t.view(1, -1)).float()
        scores = scores - model.alibi_slopes.view(1, -1, 1, 1) * distance
        scores = scores.masked_fill(distance < 0, float("-inf"))
        attn = (scores.softmax(-1) @ heads[2]).transpose(1, 2).reshape(B, L, -1)
        out = block.out_proj(attn)
        h1 = block.ln_context(h + out)
        torch.testing.assert_close(got["out"][1], block.ln_value(v + out), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(got["out"][0], block.ln_ffn(h1 + block.ffn(h1)), rtol=1e-5, atol=1e-5)
        assert bias.shape == (2, L, L)


def test_alibi_draws_the_same_weights_and_saves_the_same_keys_as_plain_attention():
    torch.manual_seed(0)
    plain = _model()
    torch.manual_seed(0)
    alibi = _model(attention_bias="alibi")
    assert plain.state_dict().keys() == alibi.state_dict().keys()  # the slopes are not saved: checkpoints load
    for key, value in plain.state_dict().items():
        torch.testing.assert_close(alibi.state_dict()[key], value, rtol=0, atol=0)
    with torch.no_grad():
        assert not torch.allclose(plain(*_inputs()).logits, alibi(*_inputs()).logits)
    with pytest.raises(ConfigError, match="attention_bias='rope': must be none .* or alibi"):
        _model(attention_bias="rope")


@pytest.mark.parametrize("stream", ["context", "value"])
def test_a_shared_query_embedding_is_one_table_trained_by_both_uses(stream):
    """query_embedding context / value: the head's next-concept vectors are the stream's concept embedding (one
    parameter, counted once by the optimizer); every other weight starts as with `own`, and a gradient step reaches
    the shared table from the stream (step c_t) and from the head (next concept q_t)."""
    torch.manual_seed(0)
    own = _model(emb_type="concept_plus_response")
    torch.manual_seed(0)
    shared = _model(emb_type="concept_plus_response", query_embedding=stream)
    table = getattr(shared, f"{stream}_emb").weight
    assert shared.concept_emb.weight is table
    assert len(list(shared.parameters())) == len(list(own.parameters())) - 1
    for key, value in own.state_dict().items():
        if key != "concept_emb.weight":
            torch.testing.assert_close(shared.state_dict()[key], value, rtol=0, atol=0)
    torch.testing.assert_close(shared.state_dict()["concept_emb.weight"], table, rtol=0, atol=0)

    c = torch.tensor([[0, 0, 0]])
    r = torch.tensor([[1, 0, 1]])
    q = torch.tensor([[1, 1, 1]])  # concept 0 is only practised, concept 1 only asked about
    for model in (shared, own):
        model(c, r, q).logits.sum().backward()
    assert table.grad[0].abs().sum() > 0 and table.grad[1].abs().sum() > 0  # through the stream / the head
    assert own.concept_emb.weight.grad[1].abs().sum() > 0 and own.concept_emb.weight.grad[0].abs().sum() == 0
    assert getattr(own, f"{stream}_emb").weight.grad[1].abs().sum() == 0  # own: the stream never sees concept 1


def test_a_shared_query_embedding_needs_one_row_per_concept():
    with pytest.raises(ConfigError, match="query_embedding=value shares the value stream's concept embedding, which emb_type qid does not have"):
        _model(query_embedding="value")  # qid: one row per concept-response token
    with pytest.raises(ConfigError, match="query_embedding='stream'"):
        _model(emb_type="concept_plus_response", query_embedding="stream")


@pytest.mark.parametrize("scope", ["all_skills", "practised_skill"])
def test_a_shared_gain_adds_one_part_to_every_skills_gain_weights_and_learns_from_every_skill(scope):
    """shared_gain: g_t[k] = ReLU((W_k + u) . v_t + b_k + b_u); every other weight starts as without it (the shared
    part is made last), the full and the reduced (training) pass agree, and a step of one skill trains u."""
    torch.manual_seed(0)
    own = _model(gain_scope=scope)
    torch.manual_seed(0)
    shared = _model(gain_scope=scope, shared_gain=True, gain_head_init_scale=0.5)
    torch.manual_seed(0)
    half = _model(gain_scope=scope, gain_head_init_scale=0.5)
    for key, value in own.state_dict().items():
        expected = half.state_dict()[key]  # the gain head scaled as asked, the rest as without the shared part
        torch.testing.assert_close(shared.state_dict()[key], expected, rtol=0, atol=0)
    assert set(shared.state_dict()) - set(own.state_dict()) == {"shared_gain_head.weight", "shared_gain_head.bias"}
    c, r, q = _inputs()
    got = {}
    shared.blocks[-1].register_forward_hook(lambda mod, args, out: got.update(v=out[1]))
    with torch.no_grad():
        full = shared(c, r, q)
        v, u = got["v"], shared.shared_gain_head
        by_hand = torch.relu(v @ (shared.gain_head.weight + u.weight).t() + shared.gain_head.bias + u.bias)
        if scope == "practised_skill":  # the gain reaches the practised skill only
            by_hand = torch.zeros_like(by_hand).scatter_(2, c.unsqueeze(-1), by_hand.gather(2, c.unsqueeze(-1)))
        torch.testing.assert_close(full.gains, by_hand, rtol=1e-5, atol=1e-6)
        reduced = shared(c, r, q, reduced=True).steps
        torch.testing.assert_close(reduced.mastery_at_q, full.mastery.gather(2, q.unsqueeze(-1)).squeeze(-1),
                                   rtol=1e-5, atol=1e-6)
    one = torch.zeros_like(c)  # every step practises skill 0
    shared.train()
    shared(one, r, one, reduced=True).steps.gain_at_c.sum().backward()  # reads skill 0 only
    assert shared.shared_gain_head.weight.grad.abs().sum() > 0
    assert shared.gain_head.weight.grad[1:].abs().sum() == 0  # the other skills' own parts get nothing
    with pytest.raises(ConfigError, match="shared_gain=true shares the gain head's weights between skills, but use_gain_head is false"):
        _model(shared_gain=True, use_gain_head=False)

