"""Step features with a physical meaning, computed from per-step telemetry columns.

time(step) ~ c0                                  fixed per-step cost (launch, Python, sampling)
           + c1 * prefill tokens                 matmul FLOPs of prompt chunks
           + c2 * prefill query-key pairs        prefill attention
           + c3 * prefill sequences              per-chunk attention call overhead
           + c4 * decode sequences               matmul rows + per-sequence bookkeeping
           + c5 * decode K/V tokens read         decode attention, memory-bound
           + c6 * decodes x longest context      padding of the batched decode attention
"""

from __future__ import annotations

import numpy as np

FEATURES = ["const", "prefill_tokens", "prefill_attention", "prefill_seqs", "decode_seqs",
            "decode_context", "decode_padded_context"]


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
    ]
    return np.stack(cols, axis=1)
