"""Training FLOPs per token and KV-cache bytes per token.

Convention (the one that reproduces ISCA'25 "Insights into DeepSeek-V3" Table 4 MFU
exactly; seeds-digest §2.9 and §6.1):

    FLOPs/token (train) = 6 * (matrix weights one token uses, LM head included, input
                               embedding excluded)
                          + 3 * 2 * h * (d_qk + d_v) * ctx   per layer,

where a matmul does one multiply and one add per weight (2 FLOPs) in the forward pass and
twice that in backward (input and weight gradients), hence 6. The attention term is the
score (QK^T, d_qk wide) and value (PV, d_v wide) matmuls over ``ctx`` keys per query:
ctx = seq/2 for causal attention counted as FlashAttention does (the lower triangle),
ctx = seq for the non-causal (Megatron) convention. Norms, activations, softmax and
the router's top-k are not counted; the router's affinity matmul is.

MTP modules are reported separately and not included: the published MFU does not count
them (seeds-digest §2.9).

DeepSeek LLM (arXiv 2401.02954 §3.2, eq. 2) defines the scaling-law compute per token as
M = 72 * n_layer * d_model^2 + 12 * n_layer * d_model * l_seq: non-embedding, vocabulary
excluded, non-causal attention. :func:`nonembedding_flops_per_token` is that quantity
counted from the real architecture; :func:`deepseek_llm_m` is the paper's closed form.
"""

from __future__ import annotations

from planner.costmodel import params as P
from planner.specs.model import AttentionKind, ModelSpec

BF16_BYTES = 2


def attention_core_flops_fwd(model: ModelSpec, seq_length: int, causal: bool) -> float:
    """Forward FLOPs of QK^T and PV for one token in one layer."""
    ctx = seq_length / 2 if causal else seq_length
    return 2 * model.num_attention_heads * (model.qk_head_dim + model.v_head_dim) * ctx


def body_matrix_weights_active(model: ModelSpec) -> int:
    """Matrix weights of all Transformer blocks that one token uses (no embedding/head)."""
    attn = P.attention(model).matrix * model.num_layers
    dense = P.ffn(model, model.ffn_hidden_size).matrix * model.num_dense_ffn_layers if model.num_dense_ffn_layers else 0
    moe = P.moe_layer(model, active=True).matrix * model.num_moe_layers if model.moe else 0
    return attn + dense + moe


def head_matrix_weights(model: ModelSpec) -> int:
    """The LM head's matmul weights (a tied head still multiplies)."""
    return model.vocab_size * model.hidden_size


def flops_per_token_train(model: ModelSpec, seq_length: int, causal: bool = True) -> float:
    """Forward + backward FLOPs per token of the main model (no MTP)."""
    weights = body_matrix_weights_active(model) + head_matrix_weights(model)
    attn = attention_core_flops_fwd(model, seq_length, causal) * model.num_layers
    return 3 * (2 * weights + attn)


def mtp_flops_per_token_train(model: ModelSpec, seq_length: int, causal: bool = True) -> float:
    """Forward + backward FLOPs per token of the MTP modules (each also runs the head)."""
    if not model.mtp_depth:
        return 0.0
    weights = P.mtp_module(model, active=True).matrix + head_matrix_weights(model)
    attn = attention_core_flops_fwd(model, seq_length, causal)
    return 3 * (2 * weights + attn) * model.mtp_depth


def nonembedding_flops_per_token(model: ModelSpec, seq_length: int) -> float:
    """DeepSeek LLM's M from the architecture: no embedding or head, non-causal attention."""
    attn = attention_core_flops_fwd(model, seq_length, causal=False) * model.num_layers
    return 3 * (2 * body_matrix_weights_active(model) + attn)


def deepseek_llm_m(num_layers: int, hidden_size: int, seq_length: int) -> float:
    """DeepSeek LLM eq. (2): M = 72 n d^2 + 12 n d l (the paper's closed form)."""
    n, d, l = num_layers, hidden_size, seq_length
    return 72 * n * d * d + 12 * n * d * l


def kv_cache_bytes_per_token(model: ModelSpec, bytes_per_element: int = BF16_BYTES) -> int:
    """Inference KV cache per token over all layers of the main model.

    MLA caches the compressed latent c^KV and the shared RoPE key k^R (d_c + d_h^R per
    layer; V2 §2.1.3); MHA/GQA caches a key and a value per key/value head.
    """
    if model.attention_kind is AttentionKind.MLA:
        per_layer = model.mla.kv_lora_rank + model.mla.qk_rope_head_dim
    else:
        per_layer = 2 * model.kv_heads * model.kv_channels
    return per_layer * model.num_layers * bytes_per_element
