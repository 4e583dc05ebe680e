"""Parameter counts of a ModelSpec, component by component, from the architecture alone.

Each component is a :class:`Count` of matrix weights (which cost 2 FLOPs per weight per
token in a forward pass) and vector weights (norms, biases: no matmul FLOPs). Formulas,
per layer, with d = hidden size, h = query heads, g = key/value heads, c = head dim:

- MHA/GQA attention: Wq d*h*c, Wk and Wv d*g*c each, Wo h*c*d.
- MLA (DeepSeek-V2 §2.1; V3 inference/model.py): W_DQ d*d'_c, W_UQ d'_c*h*(d_h+d_h^R)
  (or one Wq d*h*(d_h+d_h^R) without query compression), W_DKV+W_KR d*(d_c+d_h^R),
  W_UK+W_UV d_c*h*(d_h+d_v), Wo h*d_v*d, plus RMSNorms on both latents.
- FFN of intermediate size f: SwiGLU 3*d*f (gate, up, down); GELU 2*d*f.
- MoE layer: routed experts, shared experts, and the router matrix E*d.
- MTP module (V3 §2.2): RMSNorms on the hidden state and the embedding, the projection
  M_k of 2d*d, one Transformer block; embedding and head are shared with the main model.

``total`` excludes MTP modules (DeepSeek-V3's 671B excludes its 14B of MTP weights,
V3 README), which are reported on their own.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import NamedTuple

from planner.specs.model import FFNActivation, ModelSpec, Normalization, PositionEmbedding


class Count(NamedTuple):
    """Weights of one component: matrices (matmul FLOPs) and vectors (norms, biases)."""

    matrix: int
    vector: int = 0

    @property
    def total(self) -> int:
        return self.matrix + self.vector

    def __mul__(self, n: int) -> Count:  # type: ignore[override]
        return Count(self.matrix * n, self.vector * n)

    def __add__(self, other: Count) -> Count:  # type: ignore[override]
        return Count(self.matrix + other.matrix, self.vector + other.vector)


def norm(model: ModelSpec, width: int) -> Count:
    """One normalisation layer of ``width`` channels (LayerNorm adds a bias)."""
    return Count(0, width * (2 if model.normalization is Normalization.LAYERNORM else 1))


def attention(model: ModelSpec) -> Count:
    """Attention block of one layer, without its input norm."""
    d, h = model.hidden_size, model.num_attention_heads
    mla = model.mla
    if mla is not None:
        q_dim = h * mla.qk_head_dim
        if mla.q_lora_rank:
            q = Count(d * mla.q_lora_rank + mla.q_lora_rank * q_dim) + norm(model, mla.q_lora_rank)
        else:
            q = Count(d * q_dim)
        kv = Count(
            d * (mla.kv_lora_rank + mla.qk_rope_head_dim)
            + mla.kv_lora_rank * h * (mla.qk_nope_head_dim + mla.v_head_dim)
        ) + norm(model, mla.kv_lora_rank)
        return q + kv + Count(h * mla.v_head_dim * d)
    c, g = model.kv_channels, model.kv_heads
    qkv_out = (h + 2 * g) * c
    weights = Count(d * qkv_out + h * c * d)
    if model.add_bias_linear:
        weights += Count(0, qkv_out + d)
    elif model.add_qkv_bias:
        weights += Count(0, qkv_out)
    if model.qk_norm:
        weights += norm(model, c) * 2
    return weights


def ffn(model: ModelSpec, intermediate: int) -> Count:
    """One dense FFN (or one expert) of the given intermediate size."""
    d = model.hidden_size
    if model.ffn_activation is FFNActivation.SWIGLU:
        weights = Count(3 * d * intermediate)
    else:
        weights = Count(2 * d * intermediate)
    if model.add_bias_linear:
        gated = model.ffn_activation is FFNActivation.SWIGLU
        weights += Count(0, intermediate * (2 if gated else 1) + d)
    return weights


def router(model: ModelSpec) -> Count:
    """The gate's affinity matrix of one MoE layer."""
    return Count(model.moe.num_experts * model.hidden_size) if model.moe else Count(0)


@dataclass(frozen=True)
class ParamCounts:
    """Parameters of a model by component (whole model, all layers)."""

    embedding: int
    """Input token embedding (plus learned position embeddings)."""
    head: int
    """Output projection; 0 when tied to the embedding."""
    attention: int
    dense_ffn: int
    """FFNs of the dense layers."""
    routed_experts: int
    shared_experts: int
    router: int
    norms: int
    """Per-layer input norms and the final norm."""
    mtp: int
    """MTP modules, not included in ``total``."""
    routed_experts_active: int
    """Routed-expert weights one token uses (top_k of num_experts, every MoE layer)."""

    @property
    def total(self) -> int:
        return (
            self.embedding + self.head + self.attention + self.dense_ffn
            + self.routed_experts + self.shared_experts + self.router + self.norms
        )

    @property
    def active(self) -> int:
        """Parameters one token touches (embedding and head included, as V3 counts 37B)."""
        return self.total - self.routed_experts + self.routed_experts_active

    @property
    def active_excluding_embedding(self) -> int:
        """Active parameters without the input embedding (a lookup, not a matmul); the
        convention of DeepSeek-V2-Lite's 2.4B (V2 paper §7)."""
        return self.active - self.embedding

    def as_dict(self) -> dict[str, int]:
        return {
            **asdict(self),
            "total": self.total,
            "active": self.active,
            "active_excluding_embedding": self.active_excluding_embedding,
        }


def layer_norms(model: ModelSpec) -> Count:
    """The two pre-norms of a Transformer block."""
    return norm(model, model.hidden_size) * 2


def moe_layer(model: ModelSpec, active: bool) -> Count:
    """FFN side of one MoE layer: experts (all, or the top-k one token uses) and router."""
    moe = model.moe
    routed = moe.top_k if active else moe.num_experts
    return (
        ffn(model, moe.expert_ffn_hidden_size) * routed
        + ffn(model, moe.shared_ffn_hidden_size) * moe.num_shared_experts
        + router(model)
    )


def mtp_module(model: ModelSpec, active: bool) -> Count:
    """One MTP module: two norms, the 2d -> d projection, one block (MoE if the model is)."""
    d = model.hidden_size
    block_ffn = moe_layer(model, active) if model.moe else ffn(model, model.ffn_hidden_size)
    # enorm + hnorm + the head's own final norm (V3 inference: enorm, hnorm, shared_head.norm)
    return norm(model, d) * 3 + Count(2 * d * d) + attention(model) + layer_norms(model) + block_ffn


def count_params(model: ModelSpec) -> ParamCounts:
    d, v = model.hidden_size, model.vocab_size
    embedding = v * d
    if model.position_embedding is PositionEmbedding.LEARNED:
        embedding += model.default_seq_length * d
    moe = model.moe
    dense_layers, moe_layers = model.num_dense_ffn_layers, model.num_moe_layers
    dense_ffn = ffn(model, model.ffn_hidden_size).total * dense_layers if dense_layers else 0
    routed = shared = active_routed = 0
    if moe:
        routed = ffn(model, moe.expert_ffn_hidden_size).total * moe.num_experts * moe_layers
        active_routed = routed // moe.num_experts * moe.top_k
        shared = ffn(model, moe.shared_ffn_hidden_size).total * moe.num_shared_experts * moe_layers
    return ParamCounts(
        embedding=embedding,
        head=0 if model.tie_word_embeddings else v * d,
        attention=attention(model).total * model.num_layers,
        dense_ffn=dense_ffn,
        routed_experts=routed,
        shared_experts=shared,
        router=router(model).total * moe_layers,
        norms=layer_norms(model).total * model.num_layers + norm(model, d).total,
        mtp=mtp_module(model, active=False).total * model.mtp_depth,
        routed_experts_active=active_routed,
    )
