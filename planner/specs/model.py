"""ModelSpec: the architecture of a decoder-only LLM, dense or MoE, MHA/GQA or MLA.

Covers what the planner needs to count parameters, FLOPs, bytes and activations:
dense models with MHA/GQA attention and SwiGLU or GELU FFNs (Llama, GPT-3), DeepSeekMoE
layers with shared and fine-grained routed experts, leading dense layers and
group-limited routing (DeepSeekMoE arXiv 2401.06066; DeepSeek-V2 arXiv 2405.04434 §2.2;
DeepSeek-V3 arXiv 2412.19437 §2.1.2), Multi-head Latent Attention (V2 §2.1) and
multi-token prediction modules (V3 §2.2). Field names follow Megatron-LM where it has
one (``num_layers``, ``hidden_size``, ``ffn_hidden_size``, ``num_attention_heads``).

Not represented: sliding-window attention, interleaved dense/MoE layer patterns other
than "the first k layers are dense", encoder-decoder models.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import NonNegativeInt, PositiveInt, model_validator

from planner.specs._base import Spec, rule_error


class FFNActivation(StrEnum):
    """Feed-forward block type."""

    SWIGLU = "swiglu"
    """Gated: down(silu(gate(x)) * up(x)); three weight matrices (Shazeer 2020)."""
    GELU = "gelu"
    """Non-gated: down(gelu(up(x))); two weight matrices (GPT-2/3, BLOOM)."""


class Normalization(StrEnum):
    """Layer normalisation type; affects parameter count (LayerNorm has a bias)."""

    RMSNORM = "rmsnorm"
    LAYERNORM = "layernorm"


class PositionEmbedding(StrEnum):
    """How positions enter the model; only ``learned`` adds parameters."""

    ROPE = "rope"
    LEARNED = "learned"
    ALIBI = "alibi"
    NONE = "none"


class AttentionKind(StrEnum):
    """Derived from the spec: MLA if ``mla`` is set, GQA if kv heads < heads, else MHA."""

    MHA = "mha"
    GQA = "gqa"
    MLA = "mla"


class RouterScore(StrEnum):
    """Expert affinity function of the MoE gate."""

    SOFTMAX = "softmax"
    """DeepSeekMoE, DeepSeek-V2, Mixtral, Qwen3."""
    SIGMOID = "sigmoid"
    """DeepSeek-V3 (§2.1.2 eq. 15), normalised over the selected experts."""


class MLASpec(Spec):
    """Multi-head Latent Attention dimensions (DeepSeek-V2 §2.1, V3 §2.1.1)."""

    q_lora_rank: PositiveInt | None = None
    """Query compression dimension d'_c; None means queries are not compressed (V2-Lite)."""
    kv_lora_rank: PositiveInt
    """Joint key/value compression dimension d_c; also the cached latent size."""
    qk_nope_head_dim: PositiveInt
    """Per-head query/key dimension without RoPE, d_h."""
    qk_rope_head_dim: PositiveInt
    """Per-head decoupled RoPE dimension d_h^R; the RoPE key is shared across heads."""
    v_head_dim: PositiveInt
    """Per-head value dimension."""

    @property
    def qk_head_dim(self) -> int:
        """Query/key head dimension seen by the attention kernel (192 for DeepSeek-V3)."""
        return self.qk_nope_head_dim + self.qk_rope_head_dim


class MoESpec(Spec):
    """Mixture-of-experts FFN: shared experts plus top-k of the routed experts."""

    num_experts: PositiveInt
    """Routed experts per MoE layer (N_r)."""
    top_k: PositiveInt
    """Routed experts activated per token (K_r)."""
    expert_ffn_hidden_size: PositiveInt
    """Intermediate size of one routed expert (Megatron ``moe_ffn_hidden_size``)."""
    num_shared_experts: NonNegativeInt = 0
    """Shared experts, applied to every token (N_s)."""
    shared_expert_ffn_hidden_size: PositiveInt | None = None
    """Intermediate size of one shared expert; defaults to ``expert_ffn_hidden_size``."""
    num_dense_layers: NonNegativeInt = 0
    """Leading layers whose FFN is dense (DeepSeek-V3: the first 3)."""
    num_expert_groups: PositiveInt = 1
    """Groups the routed experts are split into for group-limited routing (V3: 8, one per node)."""
    num_limited_groups: PositiveInt | None = None
    """Each token's experts come from at most this many groups (V3: 4 nodes); None = no limit."""
    router_score: RouterScore = RouterScore.SOFTMAX
    """Affinity function of the gate."""

    @model_validator(mode="after")
    def _check(self) -> MoESpec:
        if self.top_k > self.num_experts:
            raise rule_error("top_k", self.top_k, f"must be <= num_experts ({self.num_experts})")
        if self.num_experts % self.num_expert_groups:
            raise rule_error(
                "num_expert_groups",
                self.num_expert_groups,
                f"must divide num_experts ({self.num_experts})",
            )
        if self.num_limited_groups is not None:
            if self.num_limited_groups > self.num_expert_groups:
                raise rule_error(
                    "num_limited_groups",
                    self.num_limited_groups,
                    f"must be <= num_expert_groups ({self.num_expert_groups})",
                )
            reachable = self.num_limited_groups * (self.num_experts // self.num_expert_groups)
            if self.top_k > reachable:
                raise rule_error(
                    "top_k",
                    self.top_k,
                    f"must be <= the experts in num_limited_groups groups ({reachable})",
                )
        return self

    @property
    def shared_ffn_hidden_size(self) -> int:
        return self.shared_expert_ffn_hidden_size or self.expert_ffn_hidden_size

    @property
    def limited_groups(self) -> int:
        """Groups a token may reach (all of them when routing is not limited)."""
        return self.num_limited_groups or self.num_expert_groups


class ModelSpec(Spec):
    """A decoder-only transformer. Sizes are counts (no units); see the module docstring."""

    name: str
    """Short identifier, e.g. ``deepseek-v3``."""
    source: str = ""
    """Where the numbers come from (paper section, config file URL)."""
    num_layers: PositiveInt
    """Transformer blocks of the main model (MTP modules not included)."""
    hidden_size: PositiveInt
    """Model width d."""
    num_attention_heads: PositiveInt
    """Query heads n_h."""
    num_kv_heads: PositiveInt | None = None
    """Key/value heads (GQA groups, Megatron ``num_query_groups``); None = MHA. Not for MLA."""
    head_dim: PositiveInt | None = None
    """Per-head dimension when it is not hidden_size / heads (Qwen3: 128). Not for MLA."""
    ffn_hidden_size: PositiveInt | None = None
    """Intermediate size of the dense FFN (for MoE models: of the leading dense layers)."""
    ffn_activation: FFNActivation = FFNActivation.SWIGLU
    normalization: Normalization = Normalization.RMSNORM
    position_embedding: PositionEmbedding = PositionEmbedding.ROPE
    add_bias_linear: bool = False
    """Biases on every linear layer (GPT-3, BLOOM)."""
    add_qkv_bias: bool = False
    """Biases on the query/key/value projections only (Qwen2)."""
    qk_norm: bool = False
    """RMSNorm on each query and key head (Qwen3)."""
    vocab_size: PositiveInt
    """Rows of the embedding table (the padded size the model is trained with)."""
    tie_word_embeddings: bool = False
    """Output head shares the input embedding matrix."""
    default_seq_length: PositiveInt = 4096
    """Pre-training sequence length in tokens; the default for ``--seq-len``."""
    mla: MLASpec | None = None
    """Multi-head Latent Attention; None = standard MHA/GQA."""
    moe: MoESpec | None = None
    """Mixture-of-experts FFN; None = dense model."""
    mtp_depth: NonNegativeInt = 0
    """Multi-token prediction modules D (DeepSeek-V3: 1), each one extra block."""

    @model_validator(mode="after")
    def _check(self) -> ModelSpec:
        heads = self.num_attention_heads
        if self.mla is not None:
            for field in ("num_kv_heads", "head_dim"):
                if getattr(self, field) is not None:
                    raise rule_error(field, getattr(self, field), "does not apply to MLA; leave it out")
            for field in ("add_bias_linear", "add_qkv_bias", "qk_norm"):
                if getattr(self, field):
                    raise rule_error(field, True, "is not modelled with MLA (no MLA model uses it)")
        else:
            if self.num_kv_heads is not None and heads % self.num_kv_heads:
                raise rule_error(
                    "num_kv_heads",
                    self.num_kv_heads,
                    f"must divide num_attention_heads ({heads})",
                )
            if self.head_dim is None and self.hidden_size % heads:
                raise rule_error(
                    "num_attention_heads",
                    heads,
                    f"must divide hidden_size ({self.hidden_size}) unless head_dim is given",
                )
        if self.moe is not None and self.moe.num_dense_layers >= self.num_layers:
            raise rule_error(
                "moe.num_dense_layers",
                self.moe.num_dense_layers,
                f"must be < num_layers ({self.num_layers})",
            )
        if self.num_dense_ffn_layers > 0 and self.ffn_hidden_size is None:
            raise rule_error(
                "ffn_hidden_size",
                None,
                f"is required: the model has {self.num_dense_ffn_layers} dense FFN layers",
            )
        return self

    @property
    def attention_kind(self) -> AttentionKind:
        if self.mla is not None:
            return AttentionKind.MLA
        if self.num_kv_heads is not None and self.num_kv_heads < self.num_attention_heads:
            return AttentionKind.GQA
        return AttentionKind.MHA

    @property
    def kv_heads(self) -> int:
        """Key/value heads for MHA/GQA (MLA has one shared latent instead)."""
        return self.num_kv_heads or self.num_attention_heads

    @property
    def kv_channels(self) -> int:
        """Per-head dimension for MHA/GQA (Megatron ``kv_channels``)."""
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def qk_head_dim(self) -> int:
        """Query/key dimension per head as the attention kernel sees it."""
        return self.mla.qk_head_dim if self.mla else self.kv_channels

    @property
    def v_head_dim(self) -> int:
        return self.mla.v_head_dim if self.mla else self.kv_channels

    @property
    def is_moe(self) -> bool:
        return self.moe is not None

    @property
    def num_moe_layers(self) -> int:
        return self.num_layers - self.moe.num_dense_layers if self.moe else 0

    @property
    def num_dense_ffn_layers(self) -> int:
        return self.num_layers - self.num_moe_layers
