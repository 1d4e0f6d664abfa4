"""Qwen2 model shapes (Qwen2 report, arXiv 2407.10671, table 1) as typed recipes, plus demo sizes.

    from training.model_configs import qwen2_config, count_parameters, active_parameters
    config = qwen2_config("0.5B")                       # stage 1: 4,096 context, RoPE base 10,000
    config = qwen2_config("0.5B", max_position_embeddings=32_768, rope_theta=1e6)   # stage 2
    count_parameters("7B")                              # 7,615,616,512, computed without building the model
    qwen2_config("57B-A14B")                            # a Qwen2MoeConfig: 57.4B parameters, 14.2B active per token
    active_parameters("57B-A14B")                       # 14,249,270,784

Every size pads its embedding table as the released checkpoint does: 151,936 rows for 0.5B and 1.5B, 152,064 for
7B and 72B (their ``config.json`` files, and the only way to reach their published parameter counts). All use
SwiGLU, RMSNorm (eps 1e-6), grouped-query attention with a bias on the Q/K/V projections and RoPE. ``tiny`` and
``proxy`` are our own sizes for the CPU demo and for mixture search on scaled-down proxy models (report, 3.1).

The family's Mixture-of-Experts model, Qwen2-57B-A14B, is transformers' ``Qwen2MoeForCausalLM``: every layer's MLP
is 64 routed experts (SwiGLU, intermediate 2,560) of which a softmax router picks 8 per token (weights not
renormalised, ``norm_topk_prob=False``), plus an always-on shared expert 20,480 wide (8 x 2,560) behind a sigmoid
gate; the values are those of its released ``config.json`` (``intermediate_size`` 18,944 is there too but unused:
no layer is dense). ``qwen2_config`` turns on ``output_router_logits`` for the MoE sizes, so the forward pass adds
the router's load-balancing loss times ``router_aux_loss_coef`` (0.001, as released) to the language-model loss and
returns it as ``aux_loss``. ``tiny-moe`` is its CPU-test size.

transformers 5 keeps the RoPE base in ``config.rope_parameters["rope_theta"]`` (there is no ``config.rope_theta``);
``rope_theta_of`` and ``set_rope_theta`` read and write it in one place. Nothing here imports torch or transformers
at module load, so the Dagster code location can list the sizes cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pipelines.tokenizer import ENDOFTEXT_ID, PADDED_VOCAB_SIZE

if TYPE_CHECKING:
    from transformers import Qwen2Config, Qwen2MoeConfig

STAGE1_CONTEXT = 4_096
STAGE2_CONTEXT = 32_768
STAGE1_ROPE_THETA = 10_000.0
STAGE2_ROPE_THETA = 1_000_000.0
RMS_NORM_EPS = 1e-6
LARGE_VOCAB_SIZE = 152_064  # Qwen2-7B and Qwen2-72B pad further than the small sizes' 151,936
ROUTER_AUX_LOSS_COEF = 0.001  # Qwen2-57B-A14B's config.json


@dataclass(frozen=True)
class ModelShape:
    """The numbers that define one Qwen2 size."""

    num_hidden_layers: int
    """Transformer blocks."""
    hidden_size: int
    """Width of the residual stream (d_model)."""
    num_attention_heads: int
    """Query heads; head_dim = hidden_size / num_attention_heads."""
    num_key_value_heads: int
    """Key/value heads shared by groups of query heads (GQA)."""
    intermediate_size: int
    """Width of the SwiGLU MLP."""
    tie_word_embeddings: bool
    """Whether the output projection reuses the input embedding matrix."""
    vocab_size: int = PADDED_VOCAB_SIZE
    """Rows of the embedding table: the 151,646 tokenizer ids padded (to 151,936, or 152,064 for 7B and 72B)."""
    num_experts: int = 0
    """Routed experts per layer (Mixture-of-Experts); 0: a dense model whose MLP is ``intermediate_size`` wide."""
    num_experts_per_tok: int = 0
    """Routed experts each token goes through (top-k of the router)."""
    moe_intermediate_size: int = 0
    """Width of each routed expert's SwiGLU MLP."""
    shared_expert_intermediate_size: int = 0
    """Width of the shared expert every token goes through (Qwen2-57B-A14B: 8 x 2,560)."""

    def __post_init__(self) -> None:
        if self.num_experts and not (
            0 < self.num_experts_per_tok <= self.num_experts
            and self.moe_intermediate_size > 0
            and self.shared_expert_intermediate_size >= 0
        ):
            raise ValueError(f"an MoE shape needs 0 < num_experts_per_tok <= num_experts and experts' widths: {self}")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0


MODEL_SHAPES: dict[str, ModelShape] = {
    # 9.8M parameters, 9.7M of them the embedding table: the CPU demo and the tests.
    "tiny": ModelShape(2, 64, 4, 2, 176, tie_word_embeddings=True),
    # 4.9M parameters: proxy models for data-mixture search, many short runs on a laptop.
    "proxy": ModelShape(1, 32, 2, 1, 88, tie_word_embeddings=True),
    "0.5B": ModelShape(24, 896, 14, 2, 4_864, tie_word_embeddings=True),
    "1.5B": ModelShape(28, 1_536, 12, 2, 8_960, tie_word_embeddings=True),
    "7B": ModelShape(28, 3_584, 28, 4, 18_944, tie_word_embeddings=False, vocab_size=LARGE_VOCAB_SIZE),
    "72B": ModelShape(80, 8_192, 64, 8, 29_568, tie_word_embeddings=False, vocab_size=LARGE_VOCAB_SIZE),
    # Qwen2-57B-A14B (config.json of Qwen/Qwen2-57B-A14B): 57,408,658,944 parameters, 14,249,270,784 active.
    "57B-A14B": ModelShape(
        28,
        3_584,
        28,
        4,
        18_944,
        tie_word_embeddings=False,
        num_experts=64,
        num_experts_per_tok=8,
        moe_intermediate_size=2_560,
        shared_expert_intermediate_size=20_480,
    ),
    # The MoE for CPU tests: tiny's attention, 4 routed experts (2 per token) of 32 plus a shared expert of 64.
    "tiny-moe": ModelShape(
        2,
        64,
        4,
        2,
        176,
        tie_word_embeddings=True,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=32,
        shared_expert_intermediate_size=64,
    ),
}
MODEL_SIZES = tuple(MODEL_SHAPES)


def model_shape(size: str) -> ModelShape:
    if size not in MODEL_SHAPES:
        raise ValueError(f"unknown model size {size!r}: choose one of {', '.join(MODEL_SIZES)}")
    return MODEL_SHAPES[size]


def qwen2_config(
    size: str,
    *,
    max_position_embeddings: int | None = None,
    rope_theta: float | None = None,
    **overrides: Any,
) -> Qwen2Config | Qwen2MoeConfig:
    """A ``transformers.Qwen2Config`` for ``size`` (a ``Qwen2MoeConfig`` for the MoE sizes); stage-1 defaults
    (4,096 positions, RoPE base 10,000).

    ``overrides`` are passed to the config class as they are (e.g. ``vocab_size``, ``num_hidden_layers``,
    ``router_aux_loss_coef``).
    """
    from transformers import Qwen2Config, Qwen2MoeConfig

    shape = model_shape(size)
    theta = STAGE1_ROPE_THETA if rope_theta is None else float(rope_theta)
    if theta <= 0:
        raise ValueError(f"rope_theta must be positive, got {rope_theta}")
    positions = STAGE1_CONTEXT if max_position_embeddings is None else int(max_position_embeddings)
    if positions <= 0:
        raise ValueError(f"max_position_embeddings must be positive, got {max_position_embeddings}")
    kwargs: dict[str, Any] = dict(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        tie_word_embeddings=shape.tie_word_embeddings,
        hidden_act="silu",
        max_position_embeddings=positions,
        rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": theta},
        use_sliding_window=False,
        max_window_layers=shape.num_hidden_layers,
        attention_dropout=0.0,
        initializer_range=0.02,
        # The base models end documents with <|endoftext|>; no pad id: padding_idx would freeze that embedding.
        bos_token_id=ENDOFTEXT_ID,
        eos_token_id=ENDOFTEXT_ID,
    )
    if shape.is_moe:
        kwargs.update(
            num_experts=shape.num_experts,
            num_experts_per_tok=shape.num_experts_per_tok,
            moe_intermediate_size=shape.moe_intermediate_size,
            shared_expert_intermediate_size=shape.shared_expert_intermediate_size,
            decoder_sparse_step=1,  # every layer is an MoE layer
            mlp_only_layers=[],
            norm_topk_prob=False,
            qkv_bias=True,
            # Training needs the router logits: the forward pass then adds the load-balancing loss to ``loss``.
            output_router_logits=True,
            router_aux_loss_coef=ROUTER_AUX_LOSS_COEF,
        )
    kwargs.update(overrides)
    return (Qwen2MoeConfig if shape.is_moe else Qwen2Config)(**kwargs)


def rope_theta_of(config: Any) -> float:
    """The RoPE base of a Qwen2 config, wherever this transformers version keeps it."""
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) and "rope_theta" in params:
        return float(params["rope_theta"])
    theta = getattr(config, "rope_theta", None)  # transformers 4.x
    if theta is None:
        raise ValueError(f"{type(config).__name__} has no RoPE base (no rope_parameters['rope_theta'])")
    return float(theta)


def set_rope_theta(config: Any, theta: float) -> None:
    """Set the RoPE base in place (the stage-2 switch from 10,000 to 1,000,000); build the model afterwards."""
    if theta <= 0:
        raise ValueError(f"rope_theta must be positive, got {theta}")
    params = getattr(config, "rope_parameters", None)
    if isinstance(params, dict) or hasattr(config, "rope_parameters"):
        config.rope_parameters = {**(params or {"rope_type": "default"}), "rope_theta": float(theta)}
    else:
        config.rope_theta = float(theta)


def shape_of(config: Any) -> ModelShape:
    """The ``ModelShape`` of a Qwen2 or Qwen2-MoE config (e.g. one loaded from a checkpoint)."""
    moe = getattr(config, "num_experts", 0) or 0
    return ModelShape(
        num_hidden_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        intermediate_size=config.intermediate_size,
        tie_word_embeddings=bool(config.tie_word_embeddings),
        vocab_size=config.vocab_size,
        num_experts=moe,
        num_experts_per_tok=config.num_experts_per_tok if moe else 0,
        moe_intermediate_size=config.moe_intermediate_size if moe else 0,
        shared_expert_intermediate_size=config.shared_expert_intermediate_size if moe else 0,
    )


def size_name_of(config: Any) -> str | None:
    """The name of the recipe size a config has, or None for a custom shape."""
    shape = shape_of(config)
    return next((name for name, s in MODEL_SHAPES.items() if s == shape), None)


def count_parameters(size: str | ModelShape) -> int:
    """Trainable parameters of a size, counted from its shape (a tied output projection counts once)."""
    shape = model_shape(size) if isinstance(size, str) else size
    h, hd = shape.hidden_size, shape.head_dim
    q, kv = shape.num_attention_heads * hd, shape.num_key_value_heads * hd
    attention = (h * q + q) + 2 * (h * kv + kv) + q * h  # Q, K, V with bias; O without
    if shape.is_moe:
        # routed experts (gate, up, down each) + router + shared expert + its sigmoid gate (h -> 1, no bias)
        mlp = shape.num_experts * _expert_parameters(shape) + h * shape.num_experts
        mlp += 3 * h * shape.shared_expert_intermediate_size + h
    else:
        mlp = 3 * h * shape.intermediate_size  # gate, up, down
    layer = attention + mlp + 2 * h  # two RMSNorm weights
    embeddings = shape.vocab_size * h * (1 if shape.tie_word_embeddings else 2)
    return embeddings + shape.num_hidden_layers * layer + h  # final RMSNorm


def _expert_parameters(shape: ModelShape) -> int:
    return 3 * shape.hidden_size * shape.moe_intermediate_size


def active_parameters(size: str | ModelShape) -> int:
    """Parameters one token goes through: all of a dense model; an MoE model without the routed experts the
    router did not pick (``num_experts - num_experts_per_tok`` per layer). Embedding rows count in full, as in the
    published "A14B"."""
    shape = model_shape(size) if isinstance(size, str) else size
    idle = shape.num_hidden_layers * (shape.num_experts - shape.num_experts_per_tok) * _expert_parameters(shape)
    return count_parameters(shape) - (idle if shape.is_moe else 0)


def matmul_parameters(size: str | ModelShape) -> int:
    """Parameters that take part in a matmul per token: the active ones but the embedding lookup and the norms.

    With tied embeddings the output projection still is a matmul, so it counts here.
    """
    shape = model_shape(size) if isinstance(size, str) else size
    h = shape.hidden_size
    norms = (2 * shape.num_hidden_layers + 1) * h
    lookup = shape.vocab_size * h
    head = shape.vocab_size * h
    return active_parameters(shape) - norms - lookup + (head if shape.tie_word_embeddings else 0)
