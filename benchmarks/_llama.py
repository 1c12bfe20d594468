"""The tensor names and shapes of a Llama-architecture state dict, for generated models.

The benchmarks that write synthetic checkpoints (``scale.py``, ``executors.py``,
``lora.py``, ``vs_mergekit.py``) take their layout from here (a sibling module:
each script's folder is on ``sys.path`` when it runs), so all of them name and
shape tensors as Hugging Face's ``LlamaForCausalLM`` does.
"""

from __future__ import annotations

#: The linear weights of one decoder layer, in state-dict order.
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def llama_layer_shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, ...]]:
    """``{name within a decoder layer: shape}``: square attention projections, the
    gated MLP (``gate``/``up`` ``(intermediate, hidden)``, ``down`` the transpose) and
    the two RMSNorm weights."""
    shapes: dict[str, tuple[int, ...]] = {
        f"self_attn.{p}.weight": (hidden, hidden) for p in LLAMA_LINEAR[:4]
    }
    shapes["mlp.gate_proj.weight"] = (intermediate, hidden)
    shapes["mlp.up_proj.weight"] = (intermediate, hidden)
    shapes["mlp.down_proj.weight"] = (hidden, intermediate)
    shapes["input_layernorm.weight"] = (hidden,)
    shapes["post_attention_layernorm.weight"] = (hidden,)
    return shapes


def llama_shapes(
    hidden: int, intermediate: int, layers: int, vocab: int
) -> dict[str, tuple[int, ...]]:
    """``{state-dict key: shape}`` of a whole model: the token embedding, ``layers``
    decoder layers (:func:`llama_layer_shapes`), the final norm and ``lm_head``."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    layer = llama_layer_shapes(hidden, intermediate)
    for i in range(layers):
        shapes.update({f"model.layers.{i}.{key}": shape for key, shape in layer.items()})
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes
