"""Step features with a physical meaning, computed from per-step telemetry columns.

time(step) ~ c0                                  fixed per-step cost (launch, Python, sampling)
           + c1 * prefill tokens                 matmul FLOPs of prompt chunks
           + c2 * prefill query-key pairs        prefill attention
           + c3 * prefill sequences              per-chunk attention call overhead
           + c4 * decode sequences               matmul rows + per-sequence bookkeeping
           + c5 * decode K/V tokens read         decode attention, memory-bound
           + c6 * decodes x longest context      padding of the batched decode attention
           + c7 * [decodes and a prefill chunk]  a step that runs both attention paths

The last is what a step pays for running decodes beside prefill chunks, whatever their number:
per layer, a gather of the decodes' blocks into step buffers, a mask and one batched attention
call, beside the chunks' own calls. A decode-only step pays that inside its constant, and a
prefill-only step pays its own fixed cost there too; a step doing both pays both. Without it a
mixed step was priced as the prefill plus only the decodes' marginal cost: on the 2-core CPU,
`tiny` prefilling 300 tokens took 28.2 ms alone and 32.3 ms beside 2 decodes, where the fit
added 0.4 ms; real traffic's prefills nearly all share a step with decodes, and the simulator
ran those steps 15-20% fast.
"""

from __future__ import annotations

import numpy as np

FEATURES = ["const", "prefill_tokens", "prefill_attention", "prefill_seqs", "decode_seqs",
            "decode_context", "decode_padded_context", "mixed_step"]


def feature_matrix(steps) -> np.ndarray:
    """A DataFrame of step records (or a list of dicts) -> [n, len(FEATURES)] float matrix."""
    import pandas as pd

    df = steps if isinstance(steps, pd.DataFrame) else pd.DataFrame(steps)
    cols = [
        np.ones(len(df)),
        df["num_prefill_tokens"].to_numpy(float),
        df["prefill_attention"].to_numpy(float),
        df["num_prefill_seqs"].to_numpy(float),
        df["num_decode_seqs"].to_numpy(float),
        df["decode_context"].to_numpy(float),
        (df["num_decode_seqs"] * df["decode_max_context"]).to_numpy(float),
        ((df["num_decode_seqs"] > 0) & (df["num_prefill_tokens"] > 0)).to_numpy(float),
    ]
    return np.stack(cols, axis=1)
