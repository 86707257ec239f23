"""The K/V tensors behind the block manager's pages, in the engine's KV storage format, and
the host-memory pool swap preemption copies blocks to.

Each layer's cache is one object with two operations attention needs: `write` new tokens' K/V
into their slots (quantized when written, for int8 and fp8) and `gather` whole blocks back in
the model's dtype (dequantized into per-step buffers). Iterating over it yields every tensor it
holds, scales included, so byte counts of a pool include them. How many blocks the pool holds
is decided in `sizing.size_engine`, from the memory `memory_profile.measure_device_memory`
reads; the bytes per token, and why the scales look as they do, in `kv_dtype`.
"""

from __future__ import annotations

import torch

from workbench.engine.kv_dtype import check_kv_cache_dtype
from workbench.models.config import ModelConfig

INT8_MAX = 127  # symmetric: -128 is never used, so q and -q both exist
FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = torch.finfo(FP8_DTYPE).max  # 448
_TINY = torch.finfo(torch.float32).tiny  # an all-zero vector's scale: keeps 0 / scale finite


def allocate_kv_cache(cfg: ModelConfig, num_blocks: int, block_size: int, dtype, device,
                      kv_cache_dtype: str = "auto") -> list[PagedKV]:
    """One cache per layer, pages [num_blocks, block_size, kv_heads, head_dim]."""
    check_kv_cache_dtype(kv_cache_dtype)
    kind = {"auto": PagedKV, "int8": Int8PagedKV, "fp8_e4m3": Fp8PagedKV}[kv_cache_dtype]
    shape = (num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
    return [kind(shape, dtype, device) for _ in range(cfg.num_layers)]


# -- the scale rules --------------------------------------------------------------------------
def quantize_int8(x: torch.Tensor, scale_dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 over the last dim: scale = absmax / 127 (stored in `scale_dtype`),
    q = round(x / scale) with the stored scale. |x - q * scale| <= scale / 2; a stored scale
    rounded below absmax / 127 clips the largest value by under half a step too."""
    scale = (x.abs().amax(-1).float() / INT8_MAX).to(scale_dtype)
    q = torch.round(x.float() / scale.float().clamp_min(_TINY).unsqueeze(-1))
    return q.clamp_(-INT8_MAX, INT8_MAX).to(torch.int8), scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype) -> torch.Tensor:
    return q.to(dtype) * scale.to(dtype).unsqueeze(-1)


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """x / scale in float8_e4m3fn (3 mantissa bits: relative error <= 2^-4 for |x / scale| in
    [2^-6, 448], absolute <= 2^-10 x scale below), saturated at +-448 rather than left to the
    cast (CUDA's cast does not saturate)."""
    return (x.float() / scale.unsqueeze(-1)).clamp_(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def dequantize_fp8(q: torch.Tensor, scale: torch.Tensor, dtype) -> torch.Tensor:
    return (q.float() * scale.unsqueeze(-1)).to(dtype)


# -- one layer's pages, per storage format ----------------------------------------------------
class PagedKV:
    """K and V in the model's dtype (kv_cache_dtype "auto")."""

    def __init__(self, shape: tuple[int, ...], dtype, device):
        self.dtype = dtype
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)

    def tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v]

    def block_tensors(self) -> list[torch.Tensor]:
        """The tensors indexed by block (dim 0), as types index_copy_ moves on every device:
        what swapping a block moves."""
        return [self.k, self.v]

    def __iter__(self):
        return iter(self.tensors())

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.k.shape)

    def write(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store new tokens' K/V [T, KVH, D] at `slots`; return them as a later gather reads
        them back, so attention over them equals attention over the cache."""
        _put(self.k, slots, k)
        _put(self.v, slots, v)
        return k, v

    def gather(self, blocks: torch.Tensor, buffers: dict, key):
        """K and V of whole `blocks`, [n, block_size, KVH, D] in the model's dtype, in buffers
        allocated once per step and shared by every layer (allocating per layer is far
        slower)."""
        out = _buffers(buffers, key, lambda: (self._new(blocks), self._new(blocks)))
        torch.index_select(self.k, 0, blocks, out=out[0])
        torch.index_select(self.v, 0, blocks, out=out[1])
        return out

    def _new(self, blocks, dtype=None, dims: int = 4):
        shape = (blocks.numel(), *self.k.shape[1:dims])
        return torch.empty(shape, dtype=dtype or self.dtype, device=self.k.device)


class Int8PagedKV(PagedKV):
    """int8 K/V with one scale per token per KV head, [num_blocks, block_size, KVH], in the
    model's dtype."""

    def __init__(self, shape, dtype, device):
        self.dtype = dtype
        self.k = torch.zeros(shape, dtype=torch.int8, device=device)
        self.v = torch.zeros(shape, dtype=torch.int8, device=device)
        self.k_scale = torch.zeros(shape[:3], dtype=dtype, device=device)
        self.v_scale = torch.zeros(shape[:3], dtype=dtype, device=device)

    def tensors(self):
        return [self.k, self.v, self.k_scale, self.v_scale]

    def block_tensors(self):
        return [self.k, self.v, self.k_scale, self.v_scale]  # scales per token: per block too

    def write(self, slots, k, v):
        read_back = []
        for values, scales, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q, scale = quantize_int8(x, self.dtype)
            _put(values, slots, q)
            scales.view(-1, scales.shape[-1]).index_copy_(0, slots, scale)
            read_back.append(dequantize_int8(q, scale, self.dtype))
        return tuple(read_back)

    def gather(self, blocks, buffers, key):
        def make():
            return (self._new(blocks, torch.int8), self._new(blocks, torch.int8),
                    self._new(blocks, dims=3), self._new(blocks, dims=3),  # their scales
                    self._new(blocks), self._new(blocks))  # dequantized, the model's dtype

        qk, qv, sk, sv, out_k, out_v = _buffers(buffers, key, make)
        for src, dst in ((self.k, qk), (self.v, qv), (self.k_scale, sk), (self.v_scale, sv)):
            torch.index_select(src, 0, blocks, out=dst)
        torch.mul(qk, sk.unsqueeze(-1), out=out_k)  # the product dequantize_int8 forms
        torch.mul(qv, sv.unsqueeze(-1), out=out_v)
        return out_k, out_v


class Fp8PagedKV(PagedKV):
    """float8_e4m3fn K/V divided by one fp32 scale per KV head of this layer (1.0: see
    kv_dtype). Stored bytes are moved as uint8: CPU torch has no index_copy_ for float8."""

    def __init__(self, shape, dtype, device):
        self.dtype = dtype
        self.k = torch.zeros(shape, dtype=FP8_DTYPE, device=device)
        self.v = torch.zeros(shape, dtype=FP8_DTYPE, device=device)
        self.k_scale = torch.ones(shape[2], dtype=torch.float32, device=device)
        self.v_scale = torch.ones(shape[2], dtype=torch.float32, device=device)

    def tensors(self):
        return [self.k, self.v, self.k_scale, self.v_scale]

    def block_tensors(self):
        return [self.k.view(torch.uint8), self.v.view(torch.uint8)]  # scales are per layer

    def write(self, slots, k, v):
        read_back = []
        for values, scale, x in ((self.k, self.k_scale, k), (self.v, self.v_scale, v)):
            q = quantize_fp8(x, scale)
            _put(values.view(torch.uint8), slots, q.view(torch.uint8))
            read_back.append(dequantize_fp8(q, scale, self.dtype))
        return tuple(read_back)

    def gather(self, blocks, buffers, key):
        raw_k, raw_v, out_k, out_v = _buffers(buffers, key, lambda: (
            self._new(blocks, torch.uint8), self._new(blocks, torch.uint8),
            self._new(blocks), self._new(blocks)))
        for src, raw, out, scale in ((self.k, raw_k, out_k, self.k_scale),
                                     (self.v, raw_v, out_v, self.v_scale)):
            torch.index_select(src.view(torch.uint8), 0, blocks, out=raw)
            out.copy_(raw.view(FP8_DTYPE))  # exact: e4m3 values fit bf16, fp16 and fp32
            out.mul_(scale.unsqueeze(-1))  # in fp32, rounded once: as dequantize_fp8
        return out_k, out_v


# -- swap space ---------------------------------------------------------------------------------
def allocate_swap_space(kv_caches: list[PagedKV], num_blocks: int) -> list[list[torch.Tensor]]:
    """A host-memory twin of each layer's block tensors with `num_blocks` blocks, for swap
    preemption. Pinned when the pool is on a GPU, so the copies can run at full PCIe speed."""
    if num_blocks == 0:
        return []
    pin = kv_caches[0].k.device.type == "cuda"
    return [[torch.empty((num_blocks, *t.shape[1:]), dtype=t.dtype, device="cpu",
                         pin_memory=pin) for t in layer.block_tensors()] for layer in kv_caches]


def copy_blocks(src_layers, dst_layers, pairs: list[tuple[int, int]]) -> None:
    """Copy whole blocks (source id, destination id) between per-layer lists of block tensors
    (`PagedKV.block_tensors()` on the device side, `allocate_swap_space`'s on the host)."""
    if not pairs:
        return
    src_ids = torch.tensor([s for s, _ in pairs])
    dst_ids = torch.tensor([d for _, d in pairs])
    for src_layer, dst_layer in zip(src_layers, dst_layers, strict=True):
        for src, dst in zip(src_layer, dst_layer, strict=True):
            rows = src.index_select(0, src_ids.to(src.device))
            dst.index_copy_(0, dst_ids.to(dst.device), rows.to(dst.device))


def _put(cache: torch.Tensor, slots: torch.Tensor, values: torch.Tensor) -> None:
    cache.view(-1, *cache.shape[2:]).index_copy_(0, slots, values)


def _buffers(buffers: dict, key, make):
    if key not in buffers:
        buffers[key] = make()
    return buffers[key]
