"""Design-review reports: execute notebooks/00-design-review.ipynb with papermill per scenario
and render self-contained HTML without code cells (plotly.js embedded, so it works offline)."""

from __future__ import annotations

import os
from pathlib import Path

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
DESIGN_REVIEW = NOTEBOOKS / "00-design-review.ipynb"


class ReportError(ValueError):
    """A report cell failed; the message names the cell and the error."""


def render_report(scenario: str | Path, out_dir: str | Path = "reports", smoke: bool = False,
                  parameters: dict | None = None, timeout_s: int = 900,
                  progress: bool = True, target_url: str | None = None,
                  target_model: str | None = None, api_key_env: str | None = None) -> Path:
    """Run the design review for one scenario; return reports/<scenario>.html.

    With `target_url`, the scenario's traffic is measured at that OpenAI-compatible server (as
    its clients see it) instead of an engine in this process; `target_model` is the name it
    serves (default: the scenario's model), `api_key_env` the variable holding its key.
    The executed notebook is kept beside it (reports/<scenario>.ipynb) for inspection."""
    import nbformat
    import papermill as pm
    from nbconvert import HTMLExporter

    scenario = Path(scenario).resolve()
    if not scenario.exists():
        raise ReportError(f"scenario: {scenario} does not exist")
    if not DESIGN_REVIEW.exists():
        raise ReportError(f"notebook: {DESIGN_REVIEW} is missing (run from a source checkout)")
    if target_url is not None:
        _check_target(scenario, target_url, target_model, api_key_env)
        parameters = {**(parameters or {}), "target_url": target_url,
                      "target_model": target_model, "target_api_key_env": api_key_env}
    out = Path(out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    executed = out / f"{scenario.stem}.ipynb"
    params = {"scenario": str(scenario), "smoke": smoke, "out": str(out / "runs"),
              **(parameters or {})}
    previous = os.environ.get("WORKBENCH_REPORT")
    os.environ["WORKBENCH_REPORT"] = "1"  # the kernel inherits it: plotly embeds its JS
    try:
        pm.execute_notebook(str(DESIGN_REVIEW), str(executed), parameters=params,
                            kernel_name="python3", execution_timeout=timeout_s,
                            progress_bar=progress, cwd=str(NOTEBOOKS))
    except pm.PapermillExecutionError as e:
        raise ReportError(f"report: cell {e.exec_count} of {DESIGN_REVIEW.name} failed for "
                          f"{scenario.name}: {e.ename}: {e.evalue} (executed notebook kept at "
                          f"{executed})") from None
    finally:
        if previous is None:
            os.environ.pop("WORKBENCH_REPORT", None)
        else:
            os.environ["WORKBENCH_REPORT"] = previous
    exporter = HTMLExporter(exclude_input=True, exclude_input_prompt=True,
                            exclude_output_prompt=True)
    body, _ = exporter.from_notebook_node(nbformat.read(str(executed), as_version=4))
    html = out / f"{scenario.stem}.html"
    tmp = html.with_suffix(".tmp")
    tmp.write_text(body, encoding="utf-8")
    tmp.replace(html)
    return html


def _check_target(scenario: Path, url: str, model: str | None, api_key_env: str | None) -> None:
    """Fail in a line, before the notebook runs, when the URL cannot be measured."""
    import httpx

    from workbench.traffic.http_driver import auth_headers
    from workbench.traffic.scenario import load_scenario, served_at

    try:
        target = served_at(load_scenario(scenario), url, model, api_key_env).target
    except ValueError as e:
        raise ReportError(str(e)) from None
    try:
        resp = httpx.get(f"{target.url}/v1/models", headers=auth_headers(target), timeout=10)
    except httpx.HTTPError as e:
        raise ReportError(f"target-url: no server answers at {target.url} ({e})") from None
    if resp.status_code != 200:
        raise ReportError(f"target-url: GET {target.url}/v1/models answered HTTP "
                          f"{resp.status_code}: {resp.text[:200]}")
