"""Running megatron-core's tensor/sequence/pipeline parallel layers, schedules and DDP on CPU (gloo).

megatron-core assumes CUDA in a few places that our CPU path reaches. `enable()` (called by `init_groups`
when the device is the CPU) changes exactly these, and `disable()` / leaving `active()` puts them back:

- the name `torch` in each module of `_MODULES` -> a view of torch whose `torch.cuda.current_device()` is
  the CPU, whose `torch.cuda.synchronize()` is a no-op, whose CUDA generator calls are the CPU
  generator's and whose zeros/empty/ones/tensor map device="cuda" to the CPU (the functions each module
  needs it for are listed with it below). torch itself is not changed;
- megatron.core.tensor_parallel.random._get_cuda_rng_state / _set_cuda_rng_state -> the CPU generator's
  state (CudaRNGStatesTracker.fork, entered by sequence-parallel embeddings on every forward);
- LanguageModule.setup_embeddings_and_output_layer -> the same method with `torch.Tensor.cuda` made the
  identity for the duration of the call (the tied output weight is moved with `weight.data.cuda()`
  with pipeline parallelism); `torch.Tensor.cuda` is restored when the call returns;
- the distributed optimizer (megatron.core.optimizer.distrib_optimizer.DistributedOptimizer, ZeRO-1):
  its `__init__` and `megatron.core.optimizer.optimizer.clip_grad_by_total_norm_fp32` (the clipping
  every megatron optimizer calls) -> the same callables with CPU tensors answering `Tensor.type()` by
  their CUDA type name ('torch.FloatTensor' -> 'torch.cuda.FloatTensor') for the duration of the call.
  Both sort or assert on those names: `__init__` takes fp32 parameters only when their type is
  'torch.cuda.FloatTensor' (anything else is a TypeError) and picks which need an fp32 main copy by
  'torch.cuda.HalfTensor' / 'torch.cuda.BFloat16Tensor'; clipping asserts every gradient is
  'torch.cuda.FloatTensor'. Only names of CPU tensors are changed, and `Tensor.type` is restored
  when the call returns.

Not patched, so not available on CPU: the distributed optimizer's legacy gather/scatter checkpoint
formats (`get_parameter_state_dp_zero`, `sharding_type='dp_zero_gather_scatter'`: `Tensor.cuda()`
on the gathered shards), megatron's CPU-offloading HybridDeviceOptimizer, and
`overlap_grad_reduce` / `overlap_param_gather` (they run on CUDA streams, `torch.cuda.Stream`).

It refuses to switch on in a process that has initialised CUDA (the patched modules would put that
process's GPU buffers on the CPU), and refuses a megatron-core version other than `TESTED_VERSIONS`
with one line naming both; a patch whose target has moved fails with an error naming the patch.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import types
import warnings

import torch

TESTED_VERSIONS = ("0.16.1",)

# Modules whose module-level `torch` becomes `_CPU_TORCH`, with the functions that need it and why.
_MODULES = {
    # VocabParallelEmbedding.__init__ / ColumnParallelLinear.__init__ / RowParallelLinear.__init__
    # allocate weights on torch.cuda.current_device(); LinearWithGradAccumulationAndAsyncCommunication
    # (forward and backward under sequence parallelism) allocates its all-gather / reduce-scatter buffers there.
    "megatron.core.tensor_parallel.layers": "weights and sequence-parallel buffers on the CUDA device",
    # _gather_along_first_dim / _reduce_scatter_along_first_dim / _gather_along_last_dim (sequence parallel
    # scatter/gather of activations between the embedding, the layers and the output layer).
    "megatron.core.tensor_parallel.mappings": "sequence-parallel collective buffers on the CUDA device",
    # GlobalMemoryBuffer.get_tensor: the reusable all-gather buffer of sequence-parallel linears.
    "megatron.core.utils": "the global all-gather buffer on the CUDA device",
    # _ParamAndGradBuffer.__init__: DDP's contiguous gradient buffer (param.main_grad) is allocated on
    # torch.cuda.current_device().
    "megatron.core.distributed.param_and_grad_buffer": "DDP gradient buffers on the CUDA device",
    # forward_backward_no_pipelining / _pipelining_without_interleaving / _with_interleaving: the token
    # counter `total_num_tokens = torch.zeros(..., device="cuda")`, created even when it is not used.
    "megatron.core.pipeline_parallel.schedules": 'a token counter created with device="cuda"',
    # P2PCommunicator._communicate / _communicate_shapes: receive buffers on torch.cuda.current_device()
    # and torch.cuda.synchronize() after batched isend/irecv (a CUDA-stream race that gloo does not have).
    "megatron.core.pipeline_parallel.p2p_communication": "pipeline receive buffers and stream syncs",
    # CudaRNGStatesTracker.add / model_parallel_cuda_manual_seed seed and read torch.cuda's generator;
    # here that is the CPU generator (see _cpu_rng_state below for the tracker's fork()).
    "megatron.core.tensor_parallel.random": "the model-parallel RNG tracker's generator",
    # dist_checkpointing's writer (sharded checkpoints): FileSystemWriterAsync.preload_tensors calls
    # torch.cuda.synchronize() even for a synchronous save; save_state_dict_async_plan /
    # save_state_dict_async_finalize reduce flags created with device="cuda" / on torch.cuda.current_device();
    # AsyncCallsQueue and its workers do the same for their bookkeeping tensors.
    "megatron.core.dist_checkpointing.strategies.filesystem_async": "a CUDA sync before writing",
    "megatron.core.dist_checkpointing.strategies.state_dict_saver": "save flags on the CUDA device",
    "megatron.core.dist_checkpointing.strategies.async_utils": "async-save bookkeeping on the CUDA device",
    # MixedPrecisionOptimizer.__init__ (base of the distributed optimizer): its unit loss scale
    # (`_scale_one`) and apex's overflow flag (`_dummy_overflow_buf`) are torch.tensor(..., device='cuda').
    "megatron.core.optimizer.optimizer": "the distributed optimizer's unit loss scale on the CUDA device",
    # get_grad_norm_fp32 / clip_grad_by_total_norm_fp32 / count_zeros_fp32: the overflow flag, the
    # zero norm of a rank without gradients and the zero count are created with device='cuda'.
    "megatron.core.optimizer.clip_grads": 'global-norm and clipping scratch tensors with device="cuda"',
    # DistributedOptimizer.load_state_dict: the optimizer-state shards it allocates before a
    # checkpoint load (torch.empty(..., device=torch.cuda.current_device())).
    "megatron.core.optimizer.distrib_optimizer": "optimizer-state shards for a load on the CUDA device",
}



class _CPUCuda:
    """`torch.cuda` as the patched modules see it: the current device is the CPU, syncs are no-ops."""

    @staticmethod
    def current_device() -> torch.device:
        return torch.device("cpu")

    @staticmethod
    def synchronize(device=None) -> None:
        return None  # CPU ops complete before gloo returns; there is no stream to wait for

    get_rng_state = staticmethod(torch.get_rng_state)
    manual_seed = staticmethod(torch.manual_seed)

    def __getattr__(self, name):
        return getattr(torch.cuda, name)


def _cpu_factory(factory):
    """torch.zeros/empty/ones/tensor with device="cuda" (or a CUDA device) redirected to the CPU."""
    @functools.wraps(factory)
    def make(*args, device=None, **kwargs):
        if device is not None and torch.device(device).type == "cuda":
            device = "cpu"
        return factory(*args, device=device, **kwargs)
    return make


class _CPUTorch(types.ModuleType):
    """A view of the torch module for megatron code running on CPU; every other name is torch's own."""

    def __init__(self):
        super().__init__("torch")
        self.cuda = _CPUCuda()
        for name in ("zeros", "empty", "ones", "tensor"):
            setattr(self, name, _cpu_factory(getattr(torch, name)))

    def __getattr__(self, name):
        return getattr(torch, name)

    def __repr__(self) -> str:
        return "<torch as megatron-core sees it on CPU (tapa_scale.parallel.cpu_compat)>"


_CPU_TORCH = _CPUTorch()


def _tensor_cuda_is_identity(fn):
    """LanguageModule.setup_embeddings_and_output_layer, with pipeline parallelism and tied embeddings,
    moves the last stage's copy of the word embeddings with `weight.data.cuda()` before the all-reduce
    that copies them from the first stage. On CPU that copy stays where it is."""
    @functools.wraps(fn)
    def setup(self, *args, **kwargs):
        original = torch.Tensor.cuda
        torch.Tensor.cuda = lambda t, *a, **k: t
        try:
            return fn(self, *args, **kwargs)
        finally:
            torch.Tensor.cuda = original
    return setup


_CUDA_TYPE_PATCHES = 0  # nesting depth of calls that see CUDA type names (Tensor.type swapped while > 0)
_TENSOR_TYPE = torch.Tensor.type


def _cuda_named_type(tensor, dtype=None, non_blocking=False, **kwargs):
    """Tensor.type as the distributed optimizer's checks see it on CPU: with no argument a CPU tensor
    names its CUDA type ('torch.FloatTensor' -> 'torch.cuda.FloatTensor'); a conversion
    (`t.type(dtype)`) and every other tensor behave as torch's own."""
    if dtype is not None or kwargs or tensor.device.type != "cpu":
        return _TENSOR_TYPE(tensor, dtype, non_blocking, **kwargs)
    name = _TENSOR_TYPE(tensor)
    return "torch.cuda." + name[len("torch."):] if name.startswith("torch.") else name


def _with_cuda_type_names(fn):
    """`fn` with Tensor.type answering CUDA type names for CPU tensors while it runs (re-entrant)."""
    @functools.wraps(fn)
    def call(*args, **kwargs):
        global _CUDA_TYPE_PATCHES
        if _CUDA_TYPE_PATCHES == 0:
            torch.Tensor.type = _cuda_named_type
        _CUDA_TYPE_PATCHES += 1
        try:
            return fn(*args, **kwargs)
        finally:
            _CUDA_TYPE_PATCHES -= 1
            if _CUDA_TYPE_PATCHES == 0:
                torch.Tensor.type = _TENSOR_TYPE
    call.__wrapped_for_cpu__ = fn
    return call


def _get_cpu_rng_state(device="cuda", clone: bool = False, graph_safe: bool = False) -> torch.Tensor:
    """Replaces tensor_parallel.random._get_cuda_rng_state (read by CudaRNGStatesTracker.fork, which
    sequence-parallel embeddings enter on every forward): the CPU generator's state."""
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state: torch.Tensor, device=-1, graph_safe: bool = False) -> None:
    """Replaces tensor_parallel.random._set_cuda_rng_state (same callers): sets the CPU generator."""
    torch.set_rng_state(new_state)


_warned: list = []  # the versions already warned about in this process


def check_version(strict: bool = False) -> str:
    """megatron-core's version. Not one of TESTED_VERSIONS: with `strict` (the layer is about to switch
    on) a RuntimeError naming both; otherwise (the GPU path, which patches nothing) a warning, once per
    process."""
    import megatron.core

    version = megatron.core.__version__
    if version not in TESTED_VERSIONS:
        msg = f"tapa_scale was tested with megatron-core {', '.join(TESTED_VERSIONS)} and meets {version}"
        if strict:
            raise RuntimeError(f"{msg}: refusing to patch it for CPU runs (parallel/cpu_compat.py); install "
                               f"megatron-core=={TESTED_VERSIONS[-1]} (launch/requirements-py3*.lock) or "
                               f"review the patches")
        if version not in _warned:
            _warned.append(version)
            warnings.warn(f"{msg}: parallel layers, schedules and checkpoint writers may behave differently",
                          RuntimeWarning, stacklevel=2)
    return version


_saved: list = []  # (owner, attribute, original value) in the order applied, for disable(); non-empty = enabled


def _swap(owner, name: str, value) -> None:
    _saved.append((owner, name, getattr(owner, name)))
    setattr(owner, name, value)


def enable() -> None:
    """Apply the CPU patches (idempotent). Only for a process whose device is the CPU."""
    if _saved:
        return
    if torch.cuda.is_initialized():
        raise RuntimeError("cpu_compat: this process has initialised CUDA; the CPU patches would move its "
                           "megatron buffers off the GPU, so they are not applied (use device=cpu only)")
    check_version(strict=True)
    try:
        _apply()
    except BaseException:
        disable()
        raise


def _apply() -> None:
    for name in _MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            raise RuntimeError(f"cpu_compat: megatron module {name} not found ({e}); this megatron-core "
                               f"version is not supported on CPU") from None
        if getattr(module, "torch", None) is not torch:
            raise RuntimeError(f"cpu_compat: {name} no longer imports torch as `torch`; patch needs review")
        _swap(module, "torch", _CPU_TORCH)
    from megatron.core.tensor_parallel import random as tp_random
    for name, replacement in (("_get_cuda_rng_state", _get_cpu_rng_state), ("_set_cuda_rng_state", _set_cpu_rng_state)):
        if not callable(getattr(tp_random, name, None)):
            raise RuntimeError(f"cpu_compat: megatron.core.tensor_parallel.random.{name} not found; patch needs review")
        _swap(tp_random, name, replacement)
    from megatron.core.models.common.language_module.language_module import LanguageModule
    setup = LanguageModule.setup_embeddings_and_output_layer
    _swap(LanguageModule, "setup_embeddings_and_output_layer", _tensor_cuda_is_identity(setup))
    from megatron.core.optimizer import optimizer as mcore_optimizer
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
    if not callable(getattr(mcore_optimizer, "clip_grad_by_total_norm_fp32", None)):
        raise RuntimeError("cpu_compat: megatron.core.optimizer.optimizer.clip_grad_by_total_norm_fp32 not found; "
                           "patch needs review")
    _swap(mcore_optimizer, "clip_grad_by_total_norm_fp32",
          _with_cuda_type_names(mcore_optimizer.clip_grad_by_total_norm_fp32))
    _swap(DistributedOptimizer, "__init__", _with_cuda_type_names(DistributedOptimizer.__init__))


def disable() -> None:
    """Undo every patch enable() applied, newest first (idempotent)."""
    while _saved:
        owner, name, original = _saved.pop()
        setattr(owner, name, original)


@contextlib.contextmanager
def active():
    """The CPU patches for the duration of a `with` block (left as they were if already enabled)."""
    was = is_enabled()
    enable()
    try:
        yield
    finally:
        if not was:
            disable()


def is_enabled() -> bool:
    return bool(_saved)
