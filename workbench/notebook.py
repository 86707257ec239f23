"""What every notebook does first: plotly rendering and smoke mode, from the environment.

`workbench report` sets WORKBENCH_REPORT=1 so figures embed plotly.js in the output (the
default mime-only output is dropped by nbconvert, and the report must work offline).
WORKBENCH_SMOKE=1 (set by `make test`) shrinks every notebook to CI size.
"""

from __future__ import annotations

import os


def setup(smoke: bool = False) -> bool:
    """Configure plotly for this run; return whether to run at smoke size."""
    import plotly.io as pio

    if os.environ.get("WORKBENCH_REPORT") == "1":
        pio.renderers.default = "notebook"  # embeds plotly.js once: offline-safe HTML
    pio.templates.default = "plotly_white"
    return smoke or os.environ.get("WORKBENCH_SMOKE") == "1"
