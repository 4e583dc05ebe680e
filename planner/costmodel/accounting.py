"""ModelAccount: the numbers ``planner describe`` prints for a model.

Parameters by component (:mod:`planner.costmodel.params`), training FLOPs per token in
the causal and non-causal conventions and KV-cache bytes per token
(:mod:`planner.costmodel.flops`). ``as_dict`` is the stable JSON shape.
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.costmodel import flops as F
from planner.costmodel.params import ParamCounts, count_params
from planner.specs.model import ModelSpec


@dataclass(frozen=True)
class ModelAccount:
    model: ModelSpec
    seq_length: int
    """Tokens per sequence the attention FLOPs assume."""
    params: ParamCounts
    flops_per_token_train: float
    """Causal attention (FlashAttention convention); MTP excluded."""
    flops_per_token_train_noncausal: float
    """Full attention matrix (Megatron convention); MTP excluded."""
    flops_per_token_train_mtp: float
    """MTP modules, causal; add to the above for the work a GPU really does."""
    flops_per_token_nonembedding: float
    """DeepSeek LLM's M: non-embedding, non-causal (arXiv 2401.02954 §3.2)."""
    kv_cache_bytes_per_token: int
    """BF16 KV cache over all layers."""

    def as_dict(self) -> dict:
        p = self.params
        return {
            "model": self.model.name,
            "attention": self.model.attention_kind.value,
            "seq_length": self.seq_length,
            "params_total": p.total,
            "params_active": p.active,
            "params_active_excluding_embedding": p.active_excluding_embedding,
            "params": {
                "embedding": p.embedding,
                "head": p.head,
                "attention": p.attention,
                "dense_ffn": p.dense_ffn,
                "routed_experts": p.routed_experts,
                "routed_experts_active": p.routed_experts_active,
                "shared_experts": p.shared_experts,
                "router": p.router,
                "norms": p.norms,
                "mtp": p.mtp,
            },
            "flops_per_token_train": float(self.flops_per_token_train),
            "flops_per_token_train_noncausal": float(self.flops_per_token_train_noncausal),
            "flops_per_token_train_mtp": float(self.flops_per_token_train_mtp),
            "flops_per_token_nonembedding": float(self.flops_per_token_nonembedding),
            "kv_cache_bytes_per_token": self.kv_cache_bytes_per_token,
        }


def describe_model(model: ModelSpec, seq_length: int | None = None) -> ModelAccount:
    """Account for ``model`` at ``seq_length`` tokens (default: its pre-training length)."""
    seq = seq_length or model.default_seq_length
    return ModelAccount(
        model=model,
        seq_length=seq,
        params=count_params(model),
        flops_per_token_train=F.flops_per_token_train(model, seq, causal=True),
        flops_per_token_train_noncausal=F.flops_per_token_train(model, seq, causal=False),
        flops_per_token_train_mtp=F.mtp_flops_per_token_train(model, seq),
        flops_per_token_nonembedding=F.nonembedding_flops_per_token(model, seq),
        kv_cache_bytes_per_token=F.kv_cache_bytes_per_token(model),
    )
