"""The model of a validation-case row: the architecture columns as a :class:`ModelSpec`
(attention and MoE cells, their documented defaults), plus the fields the schema has no
column for, taken from the shipped preset of the same architecture
(:mod:`planner.validation.cases` lists every default)."""

from __future__ import annotations

import re
from collections import Counter
from functools import cache
from typing import TYPE_CHECKING, Any

from planner.errors import SpecError
from planner.presets import load_model, preset_names, revalidate, validate_spec
from planner.specs import FFNActivation, ModelSpec, Normalization, PositionEmbedding

if TYPE_CHECKING:
    from planner.validation.cases import Row

_SQUARED_RELU = re.compile(r"squared[- _]?relu|relu\^?2\b", re.IGNORECASE)


def case_model(cells: Row, notes: list[str]) -> ModelSpec:
    case = cells.text("case_id") or "case"
    hidden, heads = cells.need("hidden"), cells.need("heads")
    act = cells.choice("ffn_act", FFNActivation)
    if act is None:
        act = FFNActivation.SWIGLU
        notes.append("ffn_act empty: swiglu")
    gelu = act is FFNActivation.GELU
    # The schema encodes non-gated squared-ReLU FFNs (Nemotron) as gelu "with a note"
    # (validation README, ffn_act); such models are Llama-style elsewhere: rotary positions,
    # no linear biases, an untied head (Nemotron-4 15B report, arXiv 2402.16819 §2.1).
    gpt_style = gelu and not _SQUARED_RELU.search(cells.text("notes") or "")
    if gelu and not gpt_style:
        notes.append("ffn_act gelu noted squared-ReLU: rotary positions, no linear biases, untied head")
    spec: dict[str, Any] = {
        "name": cells.text("model_name") or case,
        "source": cells.text("source") or "",
        "num_layers": cells.need("layers"),
        "hidden_size": hidden,
        "num_attention_heads": heads,
        "vocab_size": cells.need("vocab"),
        "default_seq_length": cells.need("seq_len"),
        "ffn_activation": act,
        # GPT-style (Megatron GPT defaults, GPT-2/3) for gelu; Llama/DeepSeek-style for swiglu.
        "normalization": Normalization.LAYERNORM if gelu else Normalization.RMSNORM,
        "position_embedding": PositionEmbedding.LEARNED if gpt_style else PositionEmbedding.ROPE,
        "add_bias_linear": gpt_style,
        "tie_word_embeddings": gpt_style,
    }
    spec.update(_attention(cells, heads, notes))
    if "mla" in spec and gelu:
        # No MLA model has linear biases (ModelSpec rejects them): a gelu MLA row keeps the
        # GPT-style norm and positions but drops the biases.
        spec["add_bias_linear"] = False
        notes.append("ffn_act gelu with mla: no linear biases (no MLA model has them)")
    moe = _moe(cells, notes)
    if moe is not None:
        spec["moe"] = moe
    spec["mtp_depth"] = _default(cells, "mtp_depth", 0, notes, quiet=moe is None)
    ffn = cells.int("ffn_hidden")
    needs_ffn = moe is None or moe["num_dense_layers"] > 0
    if ffn is None and needs_ffn and gelu:
        ffn = 4 * hidden
        notes.append(f"ffn_hidden empty: {ffn} (4 x hidden, the GPT/Megatron default)")
    if ffn is not None:
        spec["ffn_hidden_size"] = ffn
    elif needs_ffn:
        raise SpecError("ffn_hidden", None, "is required for the dense FFN layers of a swiglu model")
    model = validate_spec(ModelSpec, spec, origin=case)
    return _with_preset_fields(model, notes)


def _attention(cells: Row, heads: int, notes: list[str]) -> dict[str, Any]:
    kind = cells.text("attention")
    kv = cells.int("kv_heads")
    if kind is None:
        kind = "mla" if cells.text("mla_kv_lora_rank") else "gqa" if kv and kv < heads else "mha"
        notes.append(f"attention empty: {kind}")
    kind = kind.lower()
    if kind == "mla":
        mla = {
            "q_lora_rank": cells.int("mla_q_lora_rank"),
            "kv_lora_rank": cells.need("mla_kv_lora_rank"),
            "qk_nope_head_dim": cells.need("mla_qk_nope_head_dim"),
            "qk_rope_head_dim": cells.need("mla_qk_rope_head_dim"),
            "v_head_dim": cells.need("mla_v_head_dim"),
        }
        if mla["q_lora_rank"] is None:
            notes.append("mla_q_lora_rank empty: queries not compressed (as DeepSeek-V2-Lite)")
        return {"mla": mla}
    if kind not in ("mha", "gqa"):
        raise SpecError("attention", kind, "must be one of mha, gqa, mla")
    if kv is None:
        kv = _default_kv_heads(cells, heads, notes) if kind == "gqa" else heads
    elif kind == "mha" and kv != heads:
        notes.append(f"attention mha but kv_heads {kv} != heads {heads}: kv_heads taken (gqa)")
    out: dict[str, Any] = {"num_kv_heads": kv}
    head_dim = cells.int("head_dim")
    if head_dim is not None:
        out["head_dim"] = head_dim
    return out


def _default_kv_heads(cells: Row, heads: int, notes: list[str]) -> int:
    """kv_heads of a gqa row that leaves it empty: a shipped GQA model preset's with the
    same layers, hidden size and heads, else the commonest among the shipped GQA presets
    (8: Llama-2-70B, Llama 3, Mixtral, DeepSeek-LLM-67B) that divides heads and is a
    multiple of tp (``check_plan``'s rule)."""
    tp = cells.int("tp") or 1
    gqa = [p for p in _model_presets() if p.mla is None and p.kv_heads < p.num_attention_heads]
    shape = (cells.int("layers"), cells.int("hidden"), heads)
    same = [p.kv_heads for p in gqa if (p.num_layers, p.hidden_size, p.num_attention_heads) == shape]
    if same:
        notes.append(f"kv_heads empty: {same[0]} (model preset of the same shape)")
        return same[0]
    counts = Counter(p.kv_heads for p in gqa)
    fits = [kv for kv, _ in counts.most_common() if heads % kv == 0 and kv % tp == 0]
    if not fits:
        raise SpecError("kv_heads", None, f"is required for gqa attention ({heads} heads, tp {tp})")
    notes.append(f"kv_heads empty: {fits[0]} (the commonest among the shipped GQA model presets)")
    return fits[0]


def _moe(cells: Row, notes: list[str]) -> dict[str, Any] | None:
    arch = (cells.text("arch") or "").lower()
    experts = cells.int("moe_experts")
    if not arch:
        arch = "moe" if experts else "dense"
        notes.append(f"arch empty: {arch}")
    if arch == "dense":
        if experts:
            raise SpecError("moe_experts", experts, "must be empty for arch dense")
        return None
    if arch != "moe":
        raise SpecError("arch", arch, "must be dense or moe")
    if experts is None:
        raise SpecError("moe_experts", None, "is required for arch moe")
    return {
        "num_experts": experts,
        "top_k": cells.need("moe_topk"),
        "expert_ffn_hidden_size": cells.need("moe_expert_ffn"),
        "num_shared_experts": _default(cells, "moe_shared_experts", 0, notes),
        "num_dense_layers": _default(cells, "moe_dense_layers", 0, notes),
    }


_SCHEMALESS_FIELDS = (
    "normalization", "position_embedding", "add_bias_linear", "add_qkv_bias", "qk_norm",
    "tie_word_embeddings",
)
_SCHEMALESS_MOE_FIELDS = (
    "shared_expert_ffn_hidden_size", "num_expert_groups", "num_limited_groups", "router_score",
)


def _signature(model: ModelSpec) -> tuple:
    """What the schema says about an architecture (vocab aside: it is often padded)."""
    moe = model.moe
    return (
        model.num_layers,
        model.hidden_size,
        model.num_attention_heads,
        model.mla.model_dump() if model.mla else (model.kv_heads, model.kv_channels),
        model.ffn_hidden_size if model.num_dense_ffn_layers else None,
        model.ffn_activation,
        (moe.num_experts, moe.top_k, moe.expert_ffn_hidden_size, moe.num_shared_experts, moe.num_dense_layers)
        if moe
        else None,
    )


@cache
def _model_presets() -> tuple[ModelSpec, ...]:
    return tuple(load_model(name) for name in preset_names("model"))


def _with_preset_fields(model: ModelSpec, notes: list[str]) -> ModelSpec:
    """Take the fields the schema lacks from a shipped preset of the same architecture."""
    sig = _signature(model)
    match = next((p for p in _model_presets() if _signature(p) == sig), None)
    if match is None:
        return model
    changes = {f: getattr(match, f) for f in _SCHEMALESS_FIELDS if getattr(match, f) != getattr(model, f)}
    moe_changes = {}
    if model.moe:
        moe_changes = {
            f: getattr(match.moe, f)
            for f in _SCHEMALESS_MOE_FIELDS
            if getattr(match.moe, f) != getattr(model.moe, f)
        }
    if not changes and not moe_changes:
        return model
    shown = [f"{k} {_show(v)}" for k, v in {**changes, **moe_changes}.items()]
    notes.append(f"architecture matches model preset {match.name}: took {', '.join(shown)} from it")
    if moe_changes:
        changes["moe"] = {**model.moe.model_dump(), **moe_changes}
    return revalidate(model, **changes)


def _default(cells: Row, column: str, value: int, notes: list[str], quiet: bool = False) -> int:
    given = cells.int(column)
    if given is not None:
        return given
    if not quiet:
        notes.append(f"{column} empty: {value}")
    return value


def _show(value: Any) -> str:
    return str(getattr(value, "value", value))
