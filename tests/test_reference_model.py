"""Reference PyTorch model (planner.model.deepseek): its parameters are the accounting's,
attention is causal, routing is the V3 group-limited gate, and it trains."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from planner.errors import SpecError, UnsupportedError  # noqa: E402
from planner.costmodel.params import count_params  # noqa: E402
from planner.model.deepseek import MoE, Transformer  # noqa: E402
from planner.presets import load_model, preset_names, revalidate  # noqa: E402
from planner.specs import ModelSpec  # noqa: E402

GPT3_LIKE = ModelSpec(
    name="tiny-gpt3", num_layers=2, hidden_size=32, num_attention_heads=4, ffn_hidden_size=128,
    ffn_activation="gelu", normalization="layernorm", position_embedding="learned",
    add_bias_linear=True, vocab_size=128, tie_word_embeddings=True, default_seq_length=32,
)
QWEN3_LIKE = ModelSpec(  # GQA with head_dim != d / h, QK-norm, q/k/v biases, every layer MoE
    name="tiny-qwen3", num_layers=2, hidden_size=32, num_attention_heads=4, num_kv_heads=2,
    head_dim=16, qk_norm=True, add_qkv_bias=True, vocab_size=128, default_seq_length=32,
    moe={"num_experts": 4, "top_k": 2, "expert_ffn_hidden_size": 16},
)
V2_LITE_LIKE = ModelSpec(  # MLA without query compression, softmax gate, 2 shared, group-limited
    name="tiny-v2-lite", num_layers=3, hidden_size=32, num_attention_heads=2, ffn_hidden_size=64,
    vocab_size=128, default_seq_length=32, mtp_depth=2,
    mla={"kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4, "v_head_dim": 8},
    moe={"num_experts": 6, "top_k": 3, "expert_ffn_hidden_size": 16, "num_shared_experts": 2,
         "num_dense_layers": 1, "num_expert_groups": 3, "num_limited_groups": 2},
)
SPECS = {
    "tiny-moe-mla": load_model("tiny-moe-mla"),
    "tiny-dense": load_model("tiny-dense"),
    "tiny-gpt3": GPT3_LIKE,
    "tiny-qwen3": QWEN3_LIKE,
    "tiny-v2-lite": V2_LITE_LIKE,
}
SEQ = 16


def build(spec: ModelSpec, seed: int = 0) -> Transformer:
    torch.manual_seed(seed)
    return Transformer(spec)


def batch(spec: ModelSpec, seed: int = 1, size: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    seq = torch.randint(0, spec.vocab_size, (size, SEQ + 1), generator=g)
    return seq[:, :-1], seq[:, 1:]


def assert_counts_match(model: Transformer, spec: ModelSpec) -> None:
    counts = count_params(spec)
    main = sum(p.numel() for name, p in model.named_parameters() if not name.startswith("mtp."))
    mtp = sum(p.numel() for p in model.mtp.parameters())
    assert (main, mtp) == (counts.total, counts.mtp)
    assert sum(p.numel() for p in model.parameters()) == counts.total + counts.mtp


# --- parameter count = planner.costmodel.params ------------------------------------------


@pytest.mark.parametrize("name", sorted(SPECS))
def test_param_count_equals_accounting(name):
    assert_counts_match(build(SPECS[name]), SPECS[name])


@pytest.mark.parametrize(
    ("preset", "num_layers"),
    [("deepseek-v3", 4), ("deepseek-v2-lite", 2), ("llama3-8b", 2), ("gpt3-175b", 2), ("qwen3-235b-a22b", 1)],
)
def test_param_count_equals_accounting_at_full_width(preset, num_layers):
    """Real widths on the meta device (no memory); fewer layers keep the build fast."""
    spec = revalidate(load_model(preset), num_layers=num_layers)
    with torch.device("meta"):
        assert_counts_match(Transformer(spec), spec)


@pytest.mark.slow
@pytest.mark.parametrize("preset", preset_names("model"))
def test_param_count_equals_accounting_for_every_preset(preset):
    """Whole shipped presets, DeepSeek-V3's 671,026,404,352 + 11,610,067,968 MTP included."""
    spec = load_model(preset)
    with torch.device("meta"):
        assert_counts_match(Transformer(spec), spec)


def test_mla_with_biases_is_rejected_by_the_spec():
    with pytest.raises(SpecError, match="add_bias_linear"):
        revalidate(SPECS["tiny-moe-mla"], add_bias_linear=True)


def test_alibi_is_unsupported():
    with pytest.raises(UnsupportedError, match="alibi"):
        Transformer(revalidate(SPECS["tiny-dense"], position_embedding="alibi"))


# --- forward, loss, gradients, causality ---------------------------------------------------


def unrouted_expert_params(model: Transformer) -> set[str]:
    """Names of the parameters of routed experts that received no token."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, MoE):
            for e in torch.nonzero(module.tokens_per_expert == 0).flatten().tolist():
                names |= {f"{module_name}.experts.{e}.{n}" for n, _ in module.experts[e].named_parameters()}
    return names


@pytest.mark.parametrize("name", sorted(SPECS))
def test_forward_shape_loss_and_gradients(name):
    spec = SPECS[name]
    model = build(spec)
    tokens, targets = batch(spec)
    assert model(tokens).shape == (2, SEQ, spec.vocab_size)
    model.zero_grad()
    for buffer_name, buffer in model.named_buffers():
        if buffer_name.endswith("tokens_per_expert"):
            buffer.zero_()
    loss = model.loss(tokens, targets)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert loss.item() == pytest.approx(math.log(spec.vocab_size) * (1 + 0.3 * bool(spec.mtp_depth)), rel=0.1)
    loss.backward()
    idle = unrouted_expert_params(model)
    for param_name, p in model.named_parameters():
        if param_name in idle:
            assert p.grad is None, param_name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), param_name
            assert p.grad.abs().sum() > 0, param_name


@pytest.mark.parametrize("name", sorted(SPECS))
def test_causal(name):
    spec = SPECS[name]
    model = build(spec).eval()
    tokens, _ = batch(spec)
    t = SEQ // 2
    changed = tokens.clone()
    changed[:, t] = (changed[:, t] + 1) % spec.vocab_size
    with torch.no_grad():
        before, after = model(tokens), model(changed)
    torch.testing.assert_close(after[:, :t], before[:, :t], rtol=0, atol=1e-6)
    assert not torch.allclose(after[:, t], before[:, t])


# --- routing ----------------------------------------------------------------------------


def first_moe(model: Transformer) -> MoE:
    return next(m for m in model.modules() if isinstance(m, MoE))


def reference_choice(scores: torch.Tensor, spec: ModelSpec) -> set[int]:
    """One token's experts by brute force over the allowed group sets (V3 §2.1.2)."""
    moe = spec.moe
    size = moe.num_experts // moe.num_expert_groups
    groups = scores.view(moe.num_expert_groups, size)
    if moe.router_score == "sigmoid":
        group_scores = groups.topk(min(2, size), dim=-1).values.sum(-1)
    else:
        group_scores = groups.amax(-1)
    allowed = group_scores.topk(moe.limited_groups).indices.tolist()
    candidates = [e for e in range(moe.num_experts) if e // size in allowed]
    ranked = sorted(candidates, key=lambda e: -scores[e].item())
    return set(ranked[: moe.top_k])


@pytest.mark.parametrize("name", ["tiny-moe-mla", "tiny-v2-lite"])
def test_gate_is_group_limited_top_k(name):
    spec = SPECS[name]
    gate = first_moe(build(spec)).gate
    x = torch.randn(64, spec.hidden_size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        weights, indices = gate(x)
        logits = x @ gate.weight.T
    moe = spec.moe
    assert indices.shape == weights.shape == (64, moe.top_k)
    size = moe.num_experts // moe.num_expert_groups
    scores = logits.sigmoid() if moe.router_score == "sigmoid" else logits.softmax(-1)
    for t in range(64):
        chosen = indices[t].tolist()
        assert len(set(chosen)) == moe.top_k
        assert len({e // size for e in chosen}) <= moe.limited_groups
        assert set(chosen) == reference_choice(scores[t], spec)
    expected = scores.gather(1, indices)
    if moe.router_score == "sigmoid":
        expected = expected / expected.sum(-1, keepdim=True)
    torch.testing.assert_close(weights, expected)


def test_routing_bias_changes_selection_not_weights():
    spec = SPECS["tiny-moe-mla"]
    gate = first_moe(build(spec)).gate
    x = torch.randn(32, spec.hidden_size, generator=torch.Generator().manual_seed(3))
    favoured = 5
    with torch.no_grad():
        _, before = gate(x)
        gate.bias[favoured] = 10.0
        weights, after = gate(x)
        scores = (x @ gate.weight.T).sigmoid()
    assert not torch.equal(before, after)
    assert (after == favoured).any(dim=1).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(32))
    chosen = scores.gather(1, after)
    torch.testing.assert_close(weights, chosen / chosen.sum(-1, keepdim=True))


def test_update_bias_raises_under_loaded_experts():
    gate = first_moe(build(SPECS["tiny-moe-mla"])).gate
    load = torch.tensor([10.0, 0.0, 4.0, 4.0, 4.0, 6.0, 2.0, 2.0])  # mean 4
    gate.update_bias(load, gamma=0.001)
    expected = 0.001 * torch.tensor([-1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 1.0, 1.0])
    torch.testing.assert_close(gate.bias, expected)


def test_moe_routes_every_token_exactly():
    """No capacity limit: the layer equals the per-token sum of its chosen experts."""
    spec = SPECS["tiny-moe-mla"]
    moe = first_moe(build(spec))
    x = torch.randn(2, 8, spec.hidden_size, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        out = moe(x).flatten(0, 1)
        weights, indices = moe.gate(x.flatten(0, 1))
        for t, x_t in enumerate(x.flatten(0, 1)):
            ref = sum(w * moe.experts[e](x_t) for w, e in zip(weights[t], indices[t].tolist(), strict=True))
            ref = ref + sum(shared(x_t) for shared in moe.shared_experts)
            torch.testing.assert_close(out[t], ref, rtol=1e-5, atol=1e-6)
    assert moe.tokens_per_expert.sum() == 2 * 8 * spec.moe.top_k  # every token, top_k times


# --- training and determinism --------------------------------------------------------------


@pytest.mark.parametrize("name", ["tiny-moe-mla", "tiny-gpt3"])
def test_adamw_reduces_loss_on_a_fixed_batch(name):
    spec = SPECS[name]
    model = build(spec)
    tokens, targets = batch(spec, size=4)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(10):
        opt.zero_grad()
        loss = model.loss(tokens, targets)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses


def test_seeded_build_and_loss_are_deterministic():
    spec = SPECS["tiny-moe-mla"]
    a, b = build(spec, seed=7), build(spec, seed=7)
    for (name, pa), (_, pb) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        assert torch.equal(pa, pb), name
    tokens, targets = batch(spec)
    assert torch.equal(a.loss(tokens, targets), b.loss(tokens, targets))
    assert not torch.equal(build(spec, seed=8).embed.weight, a.embed.weight)
