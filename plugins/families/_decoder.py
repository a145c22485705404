"""What the rotary decoder families share: head counts and sizes, the config checks llama.cpp's
graphs need, and the expected shape of each HF tensor from one table.

A family says how it differs with class attributes (``free_head_dim``, ``rope_types``,
``refused_flags``) and by overriding :meth:`DecoderFamily.rope_dims` (partial rotary) or
:meth:`DecoderFamily.shape_table` (other MLP names, biased norms); what is left in its module is
what makes it that family.
"""

from __future__ import annotations

from collections.abc import Sequence
from gguf import MODEL_ARCH, MODEL_TENSOR

from lmconv.architectures import Architecture, Config
from lmconv.errors import InputError
from lmconv.rules import Generated, RowPermute, Rule

from ._gguf import arch_name, fold_llama3_rope_factors, gguf_name, llama3_rope_factors, renames, rope_parameters, tensor_name

#: the tensors whose rows llama.cpp's interleaved rotary wants permuted
ROTARY = (".self_attn.q_proj.", ".self_attn.k_proj.")

Shape = tuple[int | None, ...]
#: (HF name ending without ``.weight``/``.bias``, the weight's shape, the bias's shape or None)
ShapeTable = Sequence[tuple[str, Shape, Shape | None]]

DECODER_INTS = ("num_hidden_layers", "num_attention_heads", "hidden_size", "intermediate_size", "vocab_size")


def shape_of(hf_name: str, table: ShapeTable) -> Shape | None:
    """The shape ``table`` gives ``hf_name`` (the first ending that matches), or None."""
    kind = hf_name.rsplit(".", 1)[-1]
    stem = hf_name.removesuffix("." + kind)
    for suffix, weight, bias in table:
        if stem.endswith(suffix):
            return weight if kind == "weight" else bias
    return None


class DecoderFamily(Architecture):
    """A llama-shaped decoder: ``model.embed_tokens``, ``model.layers.N.self_attn.{q,k,v,o}_proj``,
    an MLP, norms, ``lm_head``."""

    #: gguf-py's architecture: GGUF's ``general.architecture`` and the name in messages
    model_arch: MODEL_ARCH
    hf_skip = ("rotary_emb.inv_freq",)
    hf_embedding = "model.embed_tokens.weight"
    required_ints = DECODER_INTS
    optional_ints = ("num_key_value_heads", "head_dim", "max_position_embeddings")
    #: llama.cpp's graph takes the config's ``head_dim``; False: only ``hidden_size / num_attention_heads``
    free_head_dim = True
    #: rope types llama.cpp runs for this family (None: not checked here)
    rope_types: tuple[str, ...] | None = ("default", "linear", "yarn")
    #: config flags that must be off: llama.cpp's graph has no tensors for them
    refused_flags: tuple[str, ...] = ()

    @property
    def gguf_arch(self) -> str:
        return arch_name(self.model_arch)

    # ---- sizes -----------------------------------------------------------------------
    def heads(self, config: Config) -> tuple[int, int]:
        """(query heads, key/value heads)."""
        n_head = int(config["num_attention_heads"])
        return n_head, int(config.get("num_key_value_heads") or n_head)

    def head_dim(self, config: Config) -> int:
        derived = int(config["hidden_size"]) // int(config["num_attention_heads"])
        return int(config.get("head_dim") or derived) if self.free_head_dim else derived

    def rope_dims(self, config: Config) -> int:
        """The rotated dimensions of a head (all of them unless the family rotates a part)."""
        return self.head_dim(config)

    # ---- checks ----------------------------------------------------------------------
    def check_consistency(self, config: Config, origin: str | None) -> None:
        n_head, n_kv = self.heads(config)
        hidden = int(config["hidden_size"])
        if (not self.free_head_dim or not config.get("head_dim")) and hidden % n_head:
            raise InputError(f"hidden_size {hidden} is not a multiple of num_attention_heads {n_head}", path=origin)
        if not self.free_head_dim and config.get("head_dim") and int(config["head_dim"]) * n_head != hidden:
            raise InputError(f"head_dim {config['head_dim']} × {n_head} heads is not hidden_size {hidden}; "
                             f"llama.cpp's {self.gguf_arch} graph has no other head size", path=origin)
        if n_head % n_kv:
            raise InputError(f"num_attention_heads {n_head} is not a multiple of num_key_value_heads {n_kv}", path=origin)
        dims, size = self.rope_dims(config), self.head_dim(config)
        if dims % 2 or dims < 2:
            what = f"head size {size}" if dims == size else f"{dims} rotated dimensions per head (head size × partial_rotary_factor)"
            raise InputError(f"{what} is odd or zero; rotary embeddings need an even number", path=origin)
        for key in self.refused_flags:
            if config.get(key):
                raise InputError(f"{key} is set: llama.cpp's {self.gguf_arch} graph has no tensors for it", path=origin)
        kind = rope_parameters(config)["rope_type"] if self.rope_types is not None else None
        if self.rope_types is not None and kind not in self.rope_types:
            raise InputError(f"rope type {kind!r} is not one llama.cpp's {self.gguf_arch} graph runs "
                             f"({', '.join(self.rope_types)})", path=origin)

    # ---- shapes ----------------------------------------------------------------------
    def shape_table(self, config: Config) -> list[tuple[str, Shape, Shape | None]]:
        """Attention and gated MLP (each with an optional bias), bias-free norms, embeddings, head."""
        n_head, n_kv = self.heads(config)
        hidden, inter, size = int(config["hidden_size"]), int(config["intermediate_size"]), self.head_dim(config)
        q, kv = n_head * size, n_kv * size
        return [
            (".self_attn.q_proj", (q, hidden), (q,)), (".self_attn.k_proj", (kv, hidden), (kv,)),
            (".self_attn.v_proj", (kv, hidden), (kv,)), (".self_attn.o_proj", (hidden, q), (hidden,)),
            (".mlp.gate_proj", (inter, hidden), (inter,)), (".mlp.up_proj", (inter, hidden), (inter,)),
            (".mlp.down_proj", (hidden, inter), (hidden,)),
            ("layernorm", (hidden,), None), ("model.norm", (hidden,), None),
            ("model.embed_tokens", (None, hidden), None), ("lm_head", (None, hidden), None),
        ]

    def expected_shape(self, hf_name: str, config: Config) -> Shape | None:
        return shape_of(hf_name, self.shape_table(config))

    # ---- GGUF rules ------------------------------------------------------------------
    def renamed(self, hf_names: Sequence[str], *, permute_qk: bool) -> list[Rule]:
        """One rule per HF name to llama.cpp's name; with ``permute_qk``, Q and K rows (weights and
        biases) permuted into the interleaved rotary order llama.cpp's graph expects (K with the
        KV head count)."""
        rules: list[Rule] = []
        for hf in hf_names:
            if permute_qk and any(r in hf for r in ROTARY):
                is_q = ".q_proj." in hf
                rules.append(RowPermute(hf, gguf_name(self.model_arch, hf),
                                        heads=lambda c, q=is_q: self.heads(c)[0 if q else 1]))
            else:
                rules += renames(self.model_arch, [hf])
        return rules

    def rope_freqs_rule(self) -> Rule:
        """llama3 rope scaling as llama.cpp's ``rope_freqs`` tensor, folded back into the config."""
        return Generated(tensor_name(MODEL_TENSOR.ROPE_FREQS),
                         lambda c: llama3_rope_factors(c, self.head_dim(c)),
                         lambda values, c: fold_llama3_rope_factors(values, c, self.head_dim(c)))
