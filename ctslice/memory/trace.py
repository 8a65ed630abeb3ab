"""Tracing what a run allocates without allocating it: the real code, run on ``meta`` tensors.

Why trace instead of counting layers. What a U-Net step holds at its worst moment is what autograd
saved for the backward pass (in the dtypes autocast chose), plus the temporaries alive at that
moment, minus what gradient checkpointing dropped; for the codec it is whatever the chunked passes
and MONAI's GroupNorm keep alive at once. All of that follows from every layer's implementation, and
a hand count drifts the day a layer changes. So the real code runs (``SliceDiffusion.loss`` and the
optimizer step, ``Codec.encode``/``decode``, the windowed sampler) on PyTorch's ``meta`` device, where
every op computes shapes and dtypes but no values: a full-size A100 step traces in a second or two
on a laptop, using no memory. :class:`MetaTrace`, a ``TorchDispatchMode``, sees every op below
autograd, registers each new storage, and hears when it is freed (a weakref finalizer on the
storage), so it knows the bytes alive at every moment and their peak, which is what a caching
allocator's ``max_memory_allocated`` reports (less its 512-byte rounding). Traced peaks match a real
CPU run's tracked peaks to 0.2% (tiny config, with and without checkpointing).

What the meta device cannot do, and what is done instead:
- Autocast ignores meta tensors. :meth:`MetaTrace.autocast` applies PyTorch's documented per-op cast
  policies (``torch.amp`` op reference) with a ``TorchFunctionMode``, for CUDA or for CPU: they differ
  (CUDA runs GroupNorm and softmax in float32, CPU keeps them in bfloat16, so a CUDA bf16 step holds
  more), and keeps autocast's cache of cast trainable weights (2 bytes a parameter, held until the
  autocast region ends: the whole forward pass, or the whole windowed inference pass).
- On meta tensors ``scaled_dot_product_attention`` takes its math path (a tokens x tokens matrix); the
  trace calls the kernel the target would pick instead: on CUDA the flash (half precision) or
  memory-efficient kernel, on the CPU its flash kernel.
- Values do not exist: the few ``.item()`` calls on the way (MONAI's noise schedule and importance
  map, AdamW's step count) read a placeholder 1; only shapes matter here.
- Buffers allocated inside kernels that never become tensors (cuDNN/oneDNN workspaces, im2col) are
  invisible; ``--measure`` reports what they add.
"""

from __future__ import annotations

import weakref
from collections import Counter
from contextlib import contextmanager

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map

# Autocast's op policies by function name (the torch.amp "autocast op reference"). Ops not listed run in
# the dtype of their inputs. "fp32_output" ops keep their input and produce float32 (softmax(..., dtype)).
LOWER_PRECISION = frozenset({
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "linear",
    "matmul", "__matmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "einsum", "prelu",
    "scaled_dot_product_attention",
})
PROMOTE = frozenset({"cat", "concat", "concatenate", "stack", "addcdiv", "addcmul", "index_put", "scatter_add"})
FP32 = {
    "cuda": frozenset({
        "group_norm", "layer_norm", "mse_loss", "l1_loss", "smooth_l1_loss", "exp", "expm1", "log", "log1p",
        "pow", "__pow__", "__rpow__", "__rtruediv__", "__rdiv__", "rsqrt", "reciprocal", "norm", "normalize",
        "softplus", "cosine_similarity", "acos", "asin", "cosh", "sinh", "tan", "erfinv",
    }),
    "cpu": frozenset({"mse_loss", "l1_loss", "smooth_l1_loss", "avg_pool3d", "max_pool3d", "adaptive_avg_pool3d"}),
}
FP32_OUTPUT = {
    "cuda": frozenset({"softmax", "log_softmax", "softmin", "sum", "prod", "cumsum", "cumprod"}),
    "cpu": frozenset(),
}
CPU_FP32_PAD_MODES = ("replicate", "reflect")  # CPU autocast runs replication/reflection padding in float32


class MetaTrace(TorchDispatchMode):
    """Bytes of the storages created while active, by tag, at every moment and at the peak.

    Use as a context manager around meta-device code. ``tag(name)`` attributes what is allocated inside
    it; ``reset_peak()`` starts a new peak from what is alive now; ``at_peak`` holds the bytes per tag at
    the peak. ``autocast(device_type, dtype)`` emulates autocast on meta tensors (see the module notes).
    """

    def __init__(self, default_tag: str = "other") -> None:
        super().__init__()
        self._live: dict[int, tuple[int, str]] = {}
        self._tags = [default_tag]
        self._node_tags: dict[object, str] = {}  # autograd node -> tag of the forward code that made it
        self._by_tag: Counter[str] = Counter()
        self.current = 0
        self.peak = 0
        self.at_peak: dict[str, int] = {}
        self._policy = _Autocast()

    def __enter__(self) -> MetaTrace:
        self._policy.__enter__()
        return super().__enter__()

    def __exit__(self, *exc) -> None:
        super().__exit__(*exc)
        self._policy.__exit__(*exc)

    @contextmanager
    def tag(self, name: str):
        self._tags.append(name)
        try:
            yield
        finally:
            self._tags.pop()

    def push_tag(self, name: str) -> None:
        self._tags.append(name)

    def pop_tag(self) -> None:
        self._tags.pop()

    @contextmanager
    def autocast(self, device_type: str, dtype: torch.dtype | None, cache: bool = True):
        """Autocast as on ``device_type`` ("cuda" or "cpu") to ``dtype``; None switches it off inside.

        Like real autocast, casts of trainable weights are cached (and so kept) until the outermost
        autocast region ends; ``cache=False`` is for regions that real autocast runs block by block
        (checkpointed blocks recomputed in the backward pass each open their own region).
        """
        self._policy.states.append((device_type, dtype, cache))
        try:
            yield
        finally:
            self._policy.states.pop()
            if not self._policy.states:
                self._policy.cache.clear()

    def tag_graph(self, outputs, inputs, name: str) -> None:
        """Attributes the backward of the autograd graph between ``inputs`` and ``outputs`` to ``name``.

        Call it right after the forward code that built that graph (a module's forward hook). Graphs
        rebuilt while backward runs (checkpointed blocks recomputing) are never executed and are skipped.
        """
        if torch._C._current_autograd_node() is not None:
            return
        stop = {t.grad_fn for t in tree_leaves(inputs) if isinstance(t, torch.Tensor)}
        nodes = [t.grad_fn for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]
        while nodes:
            node = nodes.pop()
            if node is None or node in stop or node in self._node_tags:
                continue
            self._node_tags[node] = name
            nodes.extend(next_node for next_node, _ in node.next_functions)

    def reset_peak(self) -> None:
        self.peak = self.current
        self.at_peak = {k: v for k, v in self._by_tag.items() if v}

    def retag(self, tensor: torch.Tensor, name: str) -> None:
        """Attributes ``tensor``'s storage to ``name`` from now on (gradients are born as activations)."""
        key = tensor.untyped_storage()._cdata
        if key in self._live:
            size, old = self._live[key]
            self._by_tag[old] -= size
            self._by_tag[name] += size
            self._live[key] = (size, name)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._local_scalar_dense.default and args[0].device.type == "meta":
            return _placeholder(args[0])
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        for tensor in tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                self._track(tensor, inputs)
        return out

    def _track(self, tensor: torch.Tensor, inputs: set[int]) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in inputs or key in self._live:  # a view, an in-place result, or a tensor made before the trace
            return
        size, tag = storage.nbytes(), self._tags[-1]
        if len(self._tags) == 1:  # nothing explicit: a backward op belongs to whatever built its node
            tag = self._node_tags.get(torch._C._current_autograd_node(), tag)
        self._live[key] = (size, tag)
        self._by_tag[tag] += size
        self.current += size
        weakref.finalize(storage, self._free, key)
        if self.current > self.peak:
            self.peak = self.current
            self.at_peak = {k: v for k, v in self._by_tag.items() if v}

    def _free(self, key: int) -> None:
        size, tag = self._live.pop(key)
        self._by_tag[tag] -= size
        self.current -= size


def _placeholder(tensor: torch.Tensor):
    if tensor.dtype == torch.bool:
        return True
    return 1.0 if tensor.is_floating_point() or tensor.is_complex() else 1


class _Autocast(TorchFunctionMode):
    """Autocast's cast policies applied at the Python API, above autograd (as real autocast is)."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[tuple[str, torch.dtype | None, bool]] = []
        self.cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # id(weight) -> (weight, its cast)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device_type, dtype, cache = self.states[-1] if self.states else ("cpu", None, False)
        name = getattr(func, "__name__", "")
        if dtype is not None:
            args, kwargs = self._autocast(name, device_type, dtype, cache, args, kwargs)
        if name == "scaled_dot_product_attention":
            return (_cuda_attention if device_type == "cuda" else _cpu_attention)(*args, **kwargs)
        return func(*args, **kwargs)

    def _autocast(self, name: str, device_type: str, dtype: torch.dtype, cache: bool, args, kwargs):
        if name in LOWER_PRECISION:
            args, kwargs = self._cast((args, kwargs), dtype, cache)
        elif name in PROMOTE:
            widest = torch.float32 if any(t.dtype == torch.float32 for t in _eligible((args, kwargs))) else dtype
            args, kwargs = self._cast((args, kwargs), widest, cache)
        elif name in FP32[device_type] or (device_type == "cpu" and name == "pad" and _pad_mode(args, kwargs)
                                           in CPU_FP32_PAD_MODES):
            args, kwargs = self._cast((args, kwargs), torch.float32, False)
        elif name in FP32_OUTPUT[device_type] and args and _eligible(args[0]) and kwargs.get("dtype") is None:
            kwargs = {**kwargs, "dtype": torch.float32}
        return args, kwargs

    def _cast(self, tree, dtype: torch.dtype, cache: bool):
        def cast(t):
            if not (isinstance(t, torch.Tensor) and t.is_floating_point() and t.dtype not in (dtype, torch.float64)):
                return t
            if not (cache and t.is_leaf and t.requires_grad and t.dtype == torch.float32):
                return t.to(dtype)
            if id(t) not in self.cache:  # the weight is kept in the entry, so its id stays its own
                self.cache[id(t)] = (t, t.to(dtype))
            return self.cache[id(t)][1]

        return tree_map(cast, tree)


def _cuda_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """The kernel ``scaled_dot_product_attention`` picks on CUDA, whose memory is linear in the tokens: flash
    attention for half precision, memory-efficient attention otherwise. On meta tensors SDPA would take
    its math path and hold the full token x token matrix."""
    if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal,
                                                                   scale=scale)[0]
    return torch.ops.aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, query.requires_grad,
                                                                   dropout_p, is_causal, scale=scale)[0]


def _cpu_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None):
    """The CPU's fused kernel (a flash attention in blocks), whose memory is linear in the tokens."""
    return torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(query, key, value, dropout_p, is_causal,
                                                                      attn_mask=attn_mask, scale=scale)[0]


def _eligible(tree) -> list[torch.Tensor]:
    return [t for t in tree_leaves(tree) if isinstance(t, torch.Tensor) and t.is_floating_point()
            and t.dtype != torch.float64]


def _pad_mode(args, kwargs) -> str:
    return kwargs.get("mode", args[2] if len(args) > 2 else "constant")
