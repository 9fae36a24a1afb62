"""What the text families share about Hugging Face folders: LoRA adapters through peft, and writing
or reading a model folder that holds a transformers model (or a peft adapter) beside its tokenizer."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers.utils import logging as hf_logging

from genlab.config.transformer import LoraConfig
from genlab.errors import GenlabError
from genlab.quiet import library_noise_silenced

hf_logging.disable_progress_bar()  # per-shard bars for a model that loads in milliseconds are noise
ADAPTER_FILE = "adapter_config.json"  # peft writes it; its presence marks an adapter-only folder


def lora_wrap(net: Any, lora: LoraConfig, task_type: str) -> Any:
    """`net` with peft LoRA adapters; peft freezes everything else, so only the adapters train."""
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model
    from transformers.pytorch_utils import Conv1D

    # GPT-2-style layers store their weight transposed (Conv1D); peft must be told rather than guess and warn
    transposed = any(isinstance(m, Conv1D) for m in net.modules())
    with library_noise_silenced():
        return get_peft_model(net, PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                                  target_modules=lora.target_modules, task_type=task_type,
                                                  fan_in_fan_out=transposed))


def save_folder(net: Any, tokenizer: Any, lora: LoraConfig | None, path: Path,
                state_dict: dict[str, Any] | None = None) -> None:
    """The model (LoRA merged into it, or the adapter alone) and its tokenizer, as transformers writes them;
    `state_dict`: the weights to write instead of the net's own (gathered from FSDP shards)."""
    if lora is not None and lora.export == "merged":
        net = copy.deepcopy(net).merge_and_unload()  # a plain transformers model; training keeps its adapters
    if state_dict is not None:  # gathered weights share no storage, so transformers cannot see what is tied
        tied = getattr(net, "all_tied_weights_keys", None) or {}
        state_dict = {k: v for k, v in state_dict.items() if k not in tied}
    net.save_pretrained(path, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(path)


def layer_classes(net: Any, lora: LoraConfig | None = None) -> set[type]:
    """The classes transformers keeps whole when it splits a model across devices (its decoder and encoder
    layers): the units FSDP shards by. A model with LoRA adapters is refused."""
    if lora is not None:
        raise GenlabError("model.lora: LoRA is not sharded yet; train it with train.strategy: ddp (its adapters "
                          "are small: each rank holds them whole)")
    net = net.get_base_model() if hasattr(net, "get_base_model") else net
    names = set(getattr(net, "_no_split_modules", None) or ())
    return {type(m) for m in net.modules() if type(m).__name__ in names}


def part_of(state: dict[str, Any] | None, prefix: str) -> dict[str, Any] | None:
    """The entries of a module's state dict under `prefix.`, without it (a family's net inside its state)."""
    if state is None:
        return None
    return {k[len(prefix) + 1:]: v for k, v in state.items() if k.startswith(prefix + ".")}


def causal_lm_folder(path: Path) -> tuple[Any, Any]:
    """(LM, tokenizer) of a text-generation folder through transformers and peft alone, an adapter put back on the
    base model it names: all that decoding needs, without the family's training stack (Lightning, torchmetrics)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    def base() -> Any:
        from peft import PeftConfig

        return AutoModelForCausalLM.from_pretrained(PeftConfig.from_pretrained(path).base_model_name_or_path)

    with library_noise_silenced():  # the folder's own weights as safetensors only, as the family's folders hold them
        lm = load_folder(path, lambda p: AutoModelForCausalLM.from_pretrained(p, use_safetensors=True), base)
    return lm.eval(), AutoTokenizer.from_pretrained(path)


def load_folder(path: Path, load: Callable[[str | Path], Any], base: Callable[[], Any]) -> Any:
    """`load(path)`, or for an adapter folder the `base()` model with the adapter put back on."""
    if not (Path(path) / ADAPTER_FILE).is_file():
        return load(path)
    from peft import PeftModel

    return PeftModel.from_pretrained(base(), path)
