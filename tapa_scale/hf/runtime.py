"""Running an export from Python: what evaluation tools call for `--hf DIR`.

`load_hf_logits(dir)` loads the export exactly as a user would (AutoModelForCausalLM with
trust_remote_code) and returns a callable with the same contract as a native model's logits, so the
sliding-window perplexity of an export and of the original checkpoint go through one code path.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def dtype_kwarg() -> str:
    """from_pretrained's dtype argument: `dtype` since transformers 4.56, `torch_dtype` before."""
    import transformers

    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


def load_hf_model(hf_dir: str | Path, device: str | torch.device = "cpu", dtype: Optional[str] = "fp32"):
    """The export as a transformers model in eval mode (dtype None = as stored)."""
    from transformers import AutoModelForCausalLM

    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"dtype {dtype!r}: expected one of {', '.join(DTYPES)} or None (as stored)")
    kwargs = {"trust_remote_code": True, dtype_kwarg(): DTYPES[dtype] if dtype else "auto"}
    model = AutoModelForCausalLM.from_pretrained(str(hf_dir), **kwargs)
    return model.to(device).eval()


def load_hf_logits(hf_dir: str | Path, device: str | torch.device = "cpu",
                   dtype: Optional[str] = "fp32") -> Callable[..., torch.Tensor]:
    """-> logits(input_ids (B, N) int64, position_ids=None) -> (B, N, vocab) float32 logits.

    Positions default to 0..N-1 in every row (a window scored from its own start, as the native
    evaluator does); no cache is kept between calls.
    """
    model = load_hf_model(hf_dir, device, dtype)
    dev = next(model.parameters()).device

    @torch.no_grad()
    def logits(input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        pos = None if position_ids is None else position_ids.to(dev)
        out = model(input_ids=input_ids.to(dev), position_ids=pos, use_cache=False)
        return out.logits.float()

    logits.model = model  # for callers that need the config or the tokenizer's vocab size
    return logits


def load_hf_loss_fn(hf_dir: str | Path, device: str | torch.device = "cpu",
                    dtype: Optional[str] = "fp32") -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """-> loss_fn(input_ids (b, w), labels (b, w)) -> per-token NLL (b, w) float32 on CPU, natural log:
    the contract of tapa_scale.eval.perplexity, so `--hf DIR` scores an export like a checkpoint."""
    logits_of = load_hf_logits(hf_dir, device, dtype)

    def loss_fn(input_ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        logits = logits_of(input_ids)
        nll = torch.nn.functional.cross_entropy(logits.flatten(0, 1), labels.to(logits.device).flatten(),
                                                reduction="none")
        return nll.view(labels.shape).cpu()

    loss_fn.model = logits_of.model
    return loss_fn
