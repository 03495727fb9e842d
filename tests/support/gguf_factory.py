"""Write a tiny random-weight llama GGUF that real llama.cpp loads, so LLM tests need no model download.

The model is a 2-layer llama with a byte-level BPE ("gpt2") tokenizer — the 256 byte tokens in GPT-2's
byte-to-unicode mapping, a few dozen merges, and the ChatML special tokens — plus a ChatML chat template,
so ``Llama.create_chat_completion`` formats prompts exactly as for a real Qwen-style model.

Its output is gibberish, but shaped to be test-friendly:

* every token embedding carries a large constant in dimension 0, and the transformer blocks' weights are
  small, so after the final RMS norm dimension 0 of the hidden state is always large and positive;
* the output rows of special tokens, control/non-ASCII bytes have a large negative weight there.

So generation only ever yields printable-ASCII tokens and never an end-of-generation token: it runs until
``max_tokens`` (or a stop sequence), which makes token counts and streaming predictable. The RNG is
seeded, so the file is byte-for-byte deterministic.
"""

from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np

N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 4
N_FF = 128
N_CTX = 4096

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# GPT-2 style merges ("left right"), each using tokens that exist by the time it is listed.
MERGES = [
    "Ġ t", "Ġ a", "h e", "i n", "r e", "o n", "Ġt he", "e r", "Ġ s", "a t", "Ġ w", "Ġ o", "e n",
    "Ġ c", "i t", "i s", "a n", "o r", "e s", "Ġ b", "e d", "Ġ f", "in g", "Ġ p", "o u", "Ġa n",
    "a l", "a r", "Ġt o", "Ġ m", "Ġo f", "Ġ in", "Ġ d", "Ġ h", "Ġan d", "l l", "l e", "o m",
]  # fmt: skip


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character mapping."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs, strict=True)}


def build_vocab() -> tuple[list[str], list[int], list[str], list[bool]]:
    """Tokens, token types, merges, and which tokens the model may emit."""
    byte_map = bytes_to_unicode()
    tokens = [byte_map[b] for b in range(256)]
    # Only printable ASCII bytes (and merges of them) may be generated.
    allowed = [0x20 <= b <= 0x7E for b in range(256)]
    for merge in MERGES:
        left, right = merge.split(" ")
        assert left in tokens and right in tokens, merge
        merged = left + right
        if merged not in tokens:
            tokens.append(merged)
            allowed.append(True)
    types = [int(gguf.TokenType.NORMAL)] * len(tokens)
    for tok in SPECIAL_TOKENS:
        tokens.append(tok)
        types.append(int(gguf.TokenType.CONTROL))
        allowed.append(False)
    return tokens, types, list(MERGES), allowed


def write_tiny_llama_gguf(path: Path, seed: int = 1234) -> Path:
    """Write the tiny model to ``path`` (about 1 MB) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    tokens, types, merges, allowed = build_vocab()
    n_vocab = len(tokens)
    head_dim = N_EMBD // N_HEAD

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny-random-llama")
    w.add_context_length(N_CTX)
    w.add_embedding_length(N_EMBD)
    w.add_block_count(N_LAYER)
    w.add_feed_forward_length(N_FF)
    w.add_head_count(N_HEAD)
    w.add_head_count_kv(N_HEAD_KV)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(n_vocab)
    w.add_file_type(int(gguf.LlamaFileType.ALL_F32))

    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("qwen2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(tokens.index("<|endoftext|>"))
    w.add_eos_token_id(tokens.index("<|im_end|>"))
    w.add_pad_token_id(tokens.index("<|endoftext|>"))
    w.add_add_bos_token(False)
    w.add_chat_template(CHATML_TEMPLATE)

    def rand(*shape: int, scale: float) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    # numpy shapes are (rows, cols); gguf stores them reversed as ggml's ne = (cols, rows).
    embd = rand(n_vocab, N_EMBD, scale=1.0)
    embd[:, 0] = 8.0  # the constant that survives to the final norm (see module docstring)
    w.add_tensor("token_embd.weight", embd)
    for i in range(N_LAYER):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", rand(N_HEAD * head_dim, N_EMBD, scale=0.2))
        w.add_tensor(p + "attn_k.weight", rand(N_HEAD_KV * head_dim, N_EMBD, scale=0.2))
        w.add_tensor(p + "attn_v.weight", rand(N_HEAD_KV * head_dim, N_EMBD, scale=0.05))
        w.add_tensor(p + "attn_output.weight", rand(N_EMBD, N_HEAD * head_dim, scale=0.05))
        w.add_tensor(p + "ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", rand(N_FF, N_EMBD, scale=0.05))
        w.add_tensor(p + "ffn_up.weight", rand(N_FF, N_EMBD, scale=0.05))
        w.add_tensor(p + "ffn_down.weight", rand(N_EMBD, N_FF, scale=0.05))
    w.add_tensor("output_norm.weight", np.ones(N_EMBD, dtype=np.float32))
    out = rand(n_vocab, N_EMBD, scale=1.0)
    out[:, 0] = np.where(np.array(allowed), 0.0, -30.0).astype(np.float32)
    w.add_tensor("output.weight", out)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


if __name__ == "__main__":
    import sys

    print(write_tiny_llama_gguf(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-llama.gguf")))
