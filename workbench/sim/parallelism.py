"""Tensor and pipeline parallelism, scaled analytically from a single-device fit.

EXTRAPOLATION, not measurement: nothing here was run on several devices. Tensor parallelism
splits every matmul and the KV cache tp ways, so the fitted per-unit costs divide by tp, while
the fixed per-step cost does not; each layer then adds two all-reduces of the step's
activations (after attention and after the MLP), costed as a ring all-reduce:
2 (tp-1)/tp x bytes / link bandwidth + 2 (tp-1) x link latency. Pipeline parallelism splits
the layers into pp stages: one step's latency is the same compute plus (pp-1) activation hops
between stages; the throughput gain of keeping pp micro-batches in flight is not modelled.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Link:
    bandwidth_bytes_s: float  # per direction, per device
    latency_s: float


# Typical figures; pass your own Link for the hardware at hand.
NVLINK4 = Link(450e9, 3e-6)  # H100 SXM NVLink 4: 900 GB/s bidirectional
PCIE4 = Link(25e9, 10e-6)  # PCIe 4.0 x16, practical


class ParallelStepModel:
    """Wraps a fitted step model; `predict_record` is what the simulator calls."""

    extrapolated = True

    def __init__(self, base, tp: int = 1, pp: int = 1, link: Link = NVLINK4,
                 activation_bytes: int = 2):
        if tp < 1 or pp < 1:
            raise ValueError(f"tensor_parallel_size / pipeline_parallel_size: must be >= 1, "
                             f"got tp={tp}, pp={pp}")
        dims = (base.model.get("hidden_size"), base.model.get("num_layers"))
        if None in dims:
            raise ValueError("fit: lacks hidden_size / num_layers; refit from a newer run")
        self.base, self.tp, self.pp, self.link = base, tp, pp, link
        self.hidden, self.layers = dims
        self.activation_bytes = activation_bytes
        # The simulator reads these from the model it is given.
        self.model, self.engine = base.model, base.engine
        self.inter_step_gap_s = base.inter_step_gap_s
        self.hardware = base.hardware

    def comm_seconds(self, tokens: int) -> float:
        per_token = self.hidden * self.activation_bytes
        t = 0.0
        if self.tp > 1:
            ring = 2 * (self.tp - 1) / self.tp * tokens * per_token / self.link.bandwidth_bytes_s
            t += 2 * self.layers * (ring + 2 * (self.tp - 1) * self.link.latency_s)
        if self.pp > 1:
            hop = tokens * per_token / self.link.bandwidth_bytes_s + self.link.latency_s
            t += (self.pp - 1) * hop
        return t

    def predict_record(self, r) -> float:
        fixed = self.base.coefficients["const"]
        variable = self.base.predict_record(r) - fixed
        tokens = r.num_prefill_tokens + r.num_decode_seqs
        return fixed + variable / self.tp + self.comm_seconds(tokens)
