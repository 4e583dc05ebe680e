"""Reference DeepSeek-V3-style Transformer in plain PyTorch, built from a :class:`ModelSpec`.

One class covers every preset, from a 4-layer test model to DeepSeek-V3 671B: MLA
(DeepSeek-V2 arXiv 2405.04434 §2.1, V3 arXiv 2412.19437 §2.1.1) or MHA/GQA attention,
DeepSeekMoE layers with shared and routed experts behind a group-limited sigmoid or
softmax gate with an aux-loss-free routing bias (V3 §2.1.2, ``inference/model.py``
``Gate.forward``), and multi-token prediction modules (V3 §2.2). Llama, Qwen3 and GPT-3
shapes come from the same code (SwiGLU or GELU, RMSNorm or LayerNorm, RoPE or learned
positions, optional biases, tied head).

It is the planner's numerical reference: ``sum(p.numel())`` equals
:func:`planner.costmodel.params.count_params` (``total`` for the main model, ``mtp`` for
the MTP modules), and the tensors below are the ones the cost model charges for. Clarity
over speed: experts run in a Python loop over exact top-k routing (no capacity limit, no
token dropping, as V3 §2.1.2 trains). Nothing here knows about parallelism.

Left out: YaRN context extension, FP8, KV caching and the absorbed MLA form, the
sequence-wise balance loss (V3 alpha = 1e-4), ALiBi. ModelSpec has no RoPE base nor
V3's ``route_scale`` (2.5); this file uses theta 10000 and a scale of 1. Neither changes
a parameter count.

Reading order follows the paper: norms and RoPE -> MLA -> MHA/GQA -> MLP (also one
expert) -> Gate -> MoE -> Block -> MTP -> Transformer.

Shape suffix legend:
    B = batch, S = sequence length, T = tokens (B * S), D = hidden_size, V = vocab_size,
    H = query heads, G = key/value heads, C = per-head dim, R = decoupled RoPE dim,
    L = latent dim (kv_lora_rank or q_lora_rank), E = routed experts, K = top_k,
    N = expert groups.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from planner.errors import UnsupportedError
from planner.specs.model import (
    FFNActivation,
    ModelSpec,
    Normalization,
    PositionEmbedding,
    RouterScore,
)

ROPE_THETA = 10000.0
"""RoPE base (V3 ``ModelArgs.rope_theta``); ModelSpec has no field for it."""
INIT_STD = 0.02
"""Std of the normal init of every matrix (GPT-2 / Megatron default; V3 §4.2 uses 0.006)."""

Rope = tuple[Tensor, Tensor] | None
"""cos and sin of the RoPE angles, each [S, R/2]; None when the model has no RoPE."""


def make_norm(spec: ModelSpec, width: int) -> nn.Module:
    """RMSNorm (V3, Llama) or LayerNorm with a bias (GPT-3), as ``spec.normalization`` says."""
    if spec.normalization is Normalization.LAYERNORM:
        return nn.LayerNorm(width, eps=1e-5)
    return nn.RMSNorm(width, eps=1e-6)


def rope_tables(seq_len: int, dim: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin of the angle position * theta^(-2i/dim) for each channel pair i, [S, dim/2]."""
    inv_freq = ROPE_THETA ** (-torch.arange(0, dim, 2, device=device, dtype=torch.float32) / dim)
    angles_SR = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    return angles_SR.cos(), angles_SR.sin()


def apply_rope(x_BSHR: Tensor, rope: Rope) -> Tensor:
    """Rotate channel pairs (x[2i], x[2i+1]) by their angle, as V3's complex ``apply_rotary_emb``."""
    if rope is None:
        return x_BSHR
    cos, sin = (t[:, None, :] for t in rope)  # [S, 1, R/2], broadcast over heads
    x1, x2 = x_BSHR[..., 0::2], x_BSHR[..., 1::2]
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x_BSHR)


class MLA(nn.Module):
    """Multi-head Latent Attention, textbook ("naive") form (V2 §2.1, V3 §2.1.1 eq. 1-11).

    Queries: x -> wq_a -> q_norm -> wq_b (or one wq without query compression), split per
    head into [q_nope | q_rope]. Keys and values: x -> wkv_a -> [latent c_KV | k_rope];
    kv_norm(c_KV) -> wkv_b, split per head into [k_nope | v]. The decoupled RoPE key k_rope
    is one per token, shared by every head. Softmax scale 1/sqrt(nope + rope).
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        mla, d, h = spec.mla, spec.hidden_size, spec.num_attention_heads
        self.num_heads = h
        self.q_lora_rank, self.kv_lora_rank = mla.q_lora_rank, mla.kv_lora_rank
        self.qk_nope_head_dim, self.qk_rope_head_dim = mla.qk_nope_head_dim, mla.qk_rope_head_dim
        self.v_head_dim = mla.v_head_dim
        self.softmax_scale = mla.qk_head_dim**-0.5
        if mla.q_lora_rank:
            self.wq_a = nn.Linear(d, mla.q_lora_rank, bias=False)  # W_DQ
            self.q_norm = make_norm(spec, mla.q_lora_rank)
            self.wq_b = nn.Linear(mla.q_lora_rank, h * mla.qk_head_dim, bias=False)  # W_UQ, W_QR
        else:
            self.wq = nn.Linear(d, h * mla.qk_head_dim, bias=False)
        self.wkv_a = nn.Linear(d, mla.kv_lora_rank + mla.qk_rope_head_dim, bias=False)  # W_DKV, W_KR
        self.kv_norm = make_norm(spec, mla.kv_lora_rank)
        self.wkv_b = nn.Linear(mla.kv_lora_rank, h * (mla.qk_nope_head_dim + mla.v_head_dim), bias=False)
        self.wo = nn.Linear(h * mla.v_head_dim, d, bias=False)

    def forward(self, x_BSD: Tensor, rope: Rope) -> Tensor:
        B, S, _ = x_BSD.shape
        H, R = self.num_heads, self.qk_rope_head_dim
        q = self.wq_b(self.q_norm(self.wq_a(x_BSD))) if self.q_lora_rank else self.wq(x_BSD)
        q_nope_BSHC, q_rope_BSHR = q.view(B, S, H, -1).split([self.qk_nope_head_dim, R], dim=-1)
        latent_BSL, k_rope_BSR = self.wkv_a(x_BSD).split([self.kv_lora_rank, R], dim=-1)
        kv_BSHC = self.wkv_b(self.kv_norm(latent_BSL)).view(B, S, H, -1)
        k_nope_BSHC, v_BSHC = kv_BSHC.split([self.qk_nope_head_dim, self.v_head_dim], dim=-1)
        q_rope_BSHR = apply_rope(q_rope_BSHR, rope)
        k_rope_BS1R = apply_rope(k_rope_BSR.unsqueeze(2), rope)  # one RoPE key for all heads
        q_BSHC = torch.cat([q_nope_BSHC, q_rope_BSHR], dim=-1)
        k_BSHC = torch.cat([k_nope_BSHC, k_rope_BS1R.expand(-1, -1, H, -1)], dim=-1)
        o_BHSC = F.scaled_dot_product_attention(
            q_BSHC.transpose(1, 2), k_BSHC.transpose(1, 2), v_BSHC.transpose(1, 2),
            is_causal=True, scale=self.softmax_scale,
        )
        return self.wo(o_BHSC.transpose(1, 2).flatten(2))


class Attention(nn.Module):
    """Multi-head or grouped-query attention (G key/value heads shared by H/G query heads),
    with RoPE, optional biases (GPT-3 on all projections, Qwen2 on q/k/v) and optional
    per-head RMSNorm on queries and keys (Qwen3)."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        d, h, g, c = spec.hidden_size, spec.num_attention_heads, spec.kv_heads, spec.kv_channels
        self.num_heads, self.num_kv_heads, self.head_dim = h, g, c
        qkv_bias = spec.add_bias_linear or spec.add_qkv_bias
        self.wq = nn.Linear(d, h * c, bias=qkv_bias)
        self.wk = nn.Linear(d, g * c, bias=qkv_bias)
        self.wv = nn.Linear(d, g * c, bias=qkv_bias)
        self.wo = nn.Linear(h * c, d, bias=spec.add_bias_linear)
        self.q_norm = make_norm(spec, c) if spec.qk_norm else nn.Identity()
        self.k_norm = make_norm(spec, c) if spec.qk_norm else nn.Identity()

    def forward(self, x_BSD: Tensor, rope: Rope) -> Tensor:
        B, S, _ = x_BSD.shape
        q_BSHC = apply_rope(self.q_norm(self.wq(x_BSD).view(B, S, self.num_heads, -1)), rope)
        k_BSGC = apply_rope(self.k_norm(self.wk(x_BSD).view(B, S, self.num_kv_heads, -1)), rope)
        v_BSGC = self.wv(x_BSD).view(B, S, self.num_kv_heads, -1)
        o_BHSC = F.scaled_dot_product_attention(
            q_BSHC.transpose(1, 2), k_BSGC.transpose(1, 2), v_BSGC.transpose(1, 2),
            is_causal=True, enable_gqa=True,
        )
        return self.wo(o_BHSC.transpose(1, 2).flatten(2))


class MLP(nn.Module):
    """Feed-forward network, also one routed or shared expert: SwiGLU w2(silu(w1 x) * w3 x)
    (three matrices) or GELU w2(gelu(w1 x)) (two)."""

    def __init__(self, spec: ModelSpec, intermediate: int):
        super().__init__()
        d, bias = spec.hidden_size, spec.add_bias_linear
        self.w1 = nn.Linear(d, intermediate, bias=bias)
        self.w2 = nn.Linear(intermediate, d, bias=bias)
        gated = spec.ffn_activation is FFNActivation.SWIGLU
        self.w3 = nn.Linear(d, intermediate, bias=bias) if gated else None

    def forward(self, x: Tensor) -> Tensor:
        if self.w3 is None:
            return self.w2(F.gelu(self.w1(x)))
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Gate(nn.Module):
    """Router of a DeepSeekMoE layer: group-limited top-k with an aux-loss-free bias.

    As V3 ``inference/model.py`` ``Gate.forward``: scores s = sigmoid(x W^T) (V3 eq. 15) or
    softmax(x W^T) (DeepSeekMoE, V2); the per-expert bias b is added for choosing experts
    only (V3 eq. 16). Experts are viewed as N groups; a group's score is the sum of its top-2
    biased scores (sigmoid) or its highest one (softmax); only the best ``num_limited_groups``
    groups stay eligible, then the top-k experts among them are chosen. Gate weights are the
    un-biased scores of the chosen experts, normalised to sum 1 for sigmoid (V3 eq. 13).
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        moe = spec.moe
        self.top_k, self.num_groups, self.limited_groups = moe.top_k, moe.num_expert_groups, moe.limited_groups
        self.sigmoid = moe.router_score is RouterScore.SIGMOID
        self.route_scale = 1.0
        self.weight = nn.Parameter(torch.empty(moe.num_experts, spec.hidden_size))
        # b_i: saved with the model, changed only by update_bias, never by gradients.
        self.register_buffer("bias", torch.zeros(moe.num_experts))

    def forward(self, x_TD: Tensor) -> tuple[Tensor, Tensor]:
        """Gate weights [T, K] and chosen expert indices [T, K] for each token."""
        logits_TE = F.linear(x_TD, self.weight)
        scores_TE = logits_TE.sigmoid() if self.sigmoid else logits_TE.softmax(dim=-1)
        choice_TE = scores_TE.detach() + self.bias
        if self.limited_groups < self.num_groups:
            choice_TNE = choice_TE.view(x_TD.size(0), self.num_groups, -1)
            if self.sigmoid:
                top2 = min(2, choice_TNE.size(-1))
                group_scores_TN = choice_TNE.topk(top2, dim=-1).values.sum(dim=-1)
            else:
                group_scores_TN = choice_TNE.amax(dim=-1)
            best_groups = group_scores_TN.topk(self.limited_groups, dim=-1).indices
            keep_TN = torch.zeros_like(group_scores_TN, dtype=torch.bool).scatter_(1, best_groups, True)
            choice_TE = choice_TNE.masked_fill(~keep_TN.unsqueeze(-1), float("-inf")).flatten(1)
        indices_TK = choice_TE.topk(self.top_k, dim=-1).indices
        weights_TK = scores_TE.gather(1, indices_TK)
        if self.sigmoid:
            weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
        return weights_TK * self.route_scale, indices_TK

    @torch.no_grad()
    def update_bias(self, tokens_per_expert: Tensor, gamma: float) -> None:
        """Aux-loss-free balancing step (V3 §2.1.2): raise b_i by gamma for an under-loaded
        expert, lower it by gamma for an over-loaded one (relative to the mean load)."""
        load_E = tokens_per_expert.to(self.bias)
        self.bias += gamma * torch.sign(load_E.mean() - load_E)


class MoE(nn.Module):
    """DeepSeekMoE layer: every shared expert on every token, plus the gate-weighted top-k
    routed experts (V3 eq. 12). ``tokens_per_expert`` accumulates the routed load, for
    :meth:`Gate.update_bias`; the training loop resets it."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        moe = spec.moe
        self.gate = Gate(spec)
        self.experts = nn.ModuleList(MLP(spec, moe.expert_ffn_hidden_size) for _ in range(moe.num_experts))
        self.shared_experts = nn.ModuleList(
            MLP(spec, moe.shared_ffn_hidden_size) for _ in range(moe.num_shared_experts)
        )
        self.register_buffer("tokens_per_expert", torch.zeros(moe.num_experts), persistent=False)

    def forward(self, x_BSD: Tensor) -> Tensor:
        x_TD = x_BSD.flatten(0, 1)
        weights_TK, indices_TK = self.gate(x_TD)
        with torch.no_grad():
            self.tokens_per_expert += torch.bincount(indices_TK.flatten(), minlength=len(self.experts))
        out_TD = torch.zeros_like(x_TD)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(indices_TK == e)
            if token.numel():
                out_TD = out_TD.index_add(0, token, expert(x_TD[token]) * weights_TK[token, slot, None])
        for shared in self.shared_experts:
            out_TD = out_TD + shared(x_TD)
        return out_TD.view_as(x_BSD)


class Block(nn.Module):
    """Pre-norm Transformer block: x + attn(norm(x)), then x + ffn(norm(x))."""

    def __init__(self, spec: ModelSpec, moe: bool):
        super().__init__()
        self.attn_norm = make_norm(spec, spec.hidden_size)
        self.attn = MLA(spec) if spec.mla else Attention(spec)
        self.ffn_norm = make_norm(spec, spec.hidden_size)
        self.ffn = MoE(spec) if moe else MLP(spec, spec.ffn_hidden_size)

    def forward(self, x_BSD: Tensor, rope: Rope) -> Tensor:
        x_BSD = x_BSD + self.attn(self.attn_norm(x_BSD), rope)
        return x_BSD + self.ffn(self.ffn_norm(x_BSD))


class MTP(nn.Module):
    """One multi-token-prediction module k (V3 §2.2 eq. 21-22): h' = M_k [hnorm(h^{k-1});
    enorm(Emb(t_{i+k}))], then one Transformer block (MoE if the model is); ``norm`` is its
    own final norm before the shared output head. Embedding and head are the main model's."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        d = spec.hidden_size
        self.hnorm = make_norm(spec, d)
        self.enorm = make_norm(spec, d)
        self.proj = nn.Linear(2 * d, d, bias=False)  # M_k
        self.block = Block(spec, moe=spec.moe is not None)
        self.norm = make_norm(spec, d)

    def forward(self, h_BSD: Tensor, emb_BSD: Tensor, rope: Rope) -> Tensor:
        """The module's hidden states h^k (before ``norm``), same positions as the inputs."""
        h_BSD = self.proj(torch.cat([self.hnorm(h_BSD), self.enorm(emb_BSD)], dim=-1))
        return self.block(h_BSD, rope)


class Transformer(nn.Module):
    """Decoder-only language model described by ``spec``, with ``spec.mtp_depth`` MTP modules."""

    def __init__(self, spec: ModelSpec):
        super().__init__()
        _check_supported(spec)
        self.spec = spec
        d = spec.hidden_size
        self.embed = nn.Embedding(spec.vocab_size, d)
        learned = spec.position_embedding is PositionEmbedding.LEARNED
        self.pos_embed = nn.Embedding(spec.default_seq_length, d) if learned else None
        first_moe = spec.moe.num_dense_layers if spec.moe else spec.num_layers
        self.layers = nn.ModuleList(Block(spec, moe=i >= first_moe) for i in range(spec.num_layers))
        self.norm = make_norm(spec, d)
        self.head = nn.Linear(d, spec.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTP(spec) for _ in range(spec.mtp_depth))
        if not self.embed.weight.is_meta:  # a meta-device build (for counting) has nothing to init
            self.apply(_init_weights)
        if spec.tie_word_embeddings:
            self.head.weight = self.embed.weight

    def rope(self, seq_len: int, device: torch.device) -> Rope:
        """RoPE tables for ``seq_len`` positions, or None without RoPE."""
        if self.spec.position_embedding is not PositionEmbedding.ROPE:
            return None
        dim = self.spec.mla.qk_rope_head_dim if self.spec.mla else self.spec.kv_channels
        return rope_tables(seq_len, dim, device)

    def embed_tokens(self, tokens_BS: Tensor) -> Tensor:
        """Input of the first block: token embeddings (plus learned positions)."""
        h_BSD = self.embed(tokens_BS)
        if self.pos_embed is not None:
            h_BSD = h_BSD + self.pos_embed(torch.arange(tokens_BS.size(1), device=tokens_BS.device))
        return h_BSD

    def hidden(self, tokens_BS: Tensor) -> tuple[Tensor, Rope]:
        """Hidden states after the last block (before the final norm), and the RoPE tables."""
        h_BSD = self.embed_tokens(tokens_BS)
        rope = self.rope(tokens_BS.size(1), tokens_BS.device)
        for layer in self.layers:
            h_BSD = layer(h_BSD, rope)
        return h_BSD, rope

    def forward(self, tokens_BS: Tensor) -> Tensor:
        """Next-token logits [B, S, V] of the main model."""
        h_BSD, _ = self.hidden(tokens_BS)
        return self.head(self.norm(h_BSD))

    def loss(self, tokens_BS: Tensor, targets_BS: Tensor, mtp_weight: float = 0.3) -> Tensor:
        """Cross-entropy of the main model plus mtp_weight * the mean MTP loss (V3 eq. 24-25).

        ``targets[:, i]`` is the token after ``tokens[:, i]``. MTP module k predicts
        ``targets[:, i + k]`` at position i from h^{k-1}_i and Emb(tokens[:, i + k]), for the
        S - k positions where both exist. Position information reaches the MTP modules
        through h (and RoPE), not through the embedding of the extra token.
        """
        h_BSD, rope = self.hidden(tokens_BS)
        return self.output_loss(h_BSD, rope, tokens_BS, targets_BS, mtp_weight)

    def output_loss(
        self, h_BSD: Tensor, rope: Rope, tokens_BS: Tensor, targets_BS: Tensor, mtp_weight: float = 0.3
    ) -> Tensor:
        """:meth:`loss` from the last block's hidden states on: final norm, head, MTP modules."""
        loss = _cross_entropy(self.head(self.norm(h_BSD)), targets_BS)
        if not self.mtp:
            return loss
        S, mtp_losses = tokens_BS.size(1), []
        for k, module in enumerate(self.mtp, start=1):
            rope_k = None if rope is None else (rope[0][: S - k], rope[1][: S - k])
            h_BSD = module(h_BSD[:, :-1], self.embed(tokens_BS[:, k:]), rope_k)
            mtp_losses.append(_cross_entropy(self.head(module.norm(h_BSD)), targets_BS[:, k:]))
        return loss + mtp_weight * torch.stack(mtp_losses).mean()


def _cross_entropy(logits_BSV: Tensor, targets_BS: Tensor) -> Tensor:
    return F.cross_entropy(logits_BSV.flatten(0, 1).float(), targets_BS.flatten())


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding, Gate)):
        nn.init.normal_(module.weight, std=INIT_STD)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


def _check_supported(spec: ModelSpec) -> None:
    """Reject specs this model does not implement (ModelSpec already rejects MLA with
    biases or qk_norm)."""
    if spec.position_embedding is PositionEmbedding.ALIBI:
        raise UnsupportedError("position_embedding = alibi: not implemented by the reference model")
