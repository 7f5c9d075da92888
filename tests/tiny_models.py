"""Tiny random models of every supported architecture, built from transformers
config classes with no network."""

from __future__ import annotations

import torch
import transformers as tf

VOCAB = 64

_COMMON = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
               bos_token_id=1, eos_token_id=2, pad_token_id=0)

TINY_ARCHITECTURES = {
    "gemma3": lambda: tf.Gemma3ForCausalLM(tf.Gemma3TextConfig(**_COMMON, head_dim=8, sliding_window=4,
                                                                layer_types=["sliding_attention", "sliding_attention", "full_attention"])),
    "gemma2": lambda: tf.Gemma2ForCausalLM(tf.Gemma2Config(**_COMMON, head_dim=8, sliding_window=4,
                                                          final_logit_softcapping=2.0)),
    "gemma": lambda: tf.GemmaForCausalLM(tf.GemmaConfig(**_COMMON, head_dim=8)),
    "llama": lambda: tf.LlamaForCausalLM(tf.LlamaConfig(**_COMMON)),
    "mistral": lambda: tf.MistralForCausalLM(tf.MistralConfig(**_COMMON)),
    # mixture of experts: 4 experts, 2 per token; Qwen2-MoE adds its gated shared expert,
    # Qwen3-MoE keeps block 1 dense (mlp_only_layers), as some released checkpoints do
    "mixtral": lambda: tf.MixtralForCausalLM(tf.MixtralConfig(**_COMMON, num_local_experts=4, num_experts_per_tok=2)),
    "qwen2_moe": lambda: tf.Qwen2MoeForCausalLM(tf.Qwen2MoeConfig(**_COMMON, num_experts=4, num_experts_per_tok=2,
                                                                  moe_intermediate_size=32,
                                                                  shared_expert_intermediate_size=64)),
    "qwen3_moe": lambda: tf.Qwen3MoeForCausalLM(tf.Qwen3MoeConfig(**_COMMON, head_dim=8, num_experts=4,
                                                                  num_experts_per_tok=2, moe_intermediate_size=32,
                                                                  mlp_only_layers=[1])),
    "qwen2": lambda: tf.Qwen2ForCausalLM(tf.Qwen2Config(**_COMMON)),
    "qwen3": lambda: tf.Qwen3ForCausalLM(tf.Qwen3Config(**_COMMON, head_dim=8)),
    "phi3": lambda: tf.Phi3ForCausalLM(tf.Phi3Config(**_COMMON)),
    "olmo2": lambda: tf.Olmo2ForCausalLM(tf.Olmo2Config(**_COMMON)),
    "gpt2": lambda: tf.GPT2LMHeadModel(tf.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64,
                                                    bos_token_id=1, eos_token_id=2)),
    "gpt_neox": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                                              num_hidden_layers=3, num_attention_heads=4,
                                                              max_position_embeddings=64, use_parallel_residual=False,
                                                              bos_token_id=1, eos_token_id=2)),
    "gpt_neox_parallel": lambda: tf.GPTNeoXForCausalLM(tf.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32,
                                                                       intermediate_size=64, num_hidden_layers=3,
                                                                       num_attention_heads=4, max_position_embeddings=64,
                                                                       use_parallel_residual=True,
                                                                       bos_token_id=1, eos_token_id=2)),
}


def make_tiny(name: str, seed: int = 0) -> torch.nn.Module:
    """A tiny random model of architecture ``name`` in eval mode, float32."""
    torch.manual_seed(seed)
    model = TINY_ARCHITECTURES[name]().eval()
    model.config.architectures = [type(model).__name__]  # as a saved checkpoint records it
    # Random init gives near-uniform outputs; scale weights so layers matter.
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() >= 2:
                param.mul_(3.0)
    return model


def make_tokenizer(directory) -> "object":
    """A word-level tokenizer: ids 0-3 are ``<pad> <s> </s> <unk>``, then ``w4 .. w63``.
    Saved to and reloaded from ``directory`` so it carries a local ``name_or_path``
    like a real checkpoint's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {**{t: i for i, t in enumerate(specials)}, **{f"w{i}": i for i in range(4, VOCAB)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                  unk_token="<unk>")
    tok.save_pretrained(directory)
    return AutoTokenizer.from_pretrained(directory)


def tiny_checkpoint_and_text(root, architecture: str = "llama", documents: int = 300):
    """A saved tiny checkpoint (with its tokenizer) in ``root/ckpt`` and a text file of
    ``documents`` short documents in ``root/t.txt``; returns both paths."""
    make_tiny(architecture).save_pretrained(root / "ckpt")
    make_tokenizer(root / "ckpt")
    text = root / "t.txt"
    text.write_text("\n".join(" ".join(f"w{4 + (3 * j + i) % 60}" for i in range(4 + j % 11)) for j in range(documents)))
    return root / "ckpt", text
