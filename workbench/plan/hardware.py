"""Hardware facts: the packaged catalog (hardware.yaml), the user's own files, and a
measurement of the machine at hand.

Units are in the field names, because GPU memory and bandwidth are counted differently:

- memory: GPU makers sell memory in binary units ("80 GB" of HBM is 80 GiB), so the catalog
  stores `memory_mib`, the total that `nvidia-smi --query-gpu=memory.total` reports (H100 SXM
  81559 MiB = 85.5e9 bytes, not 80e9). `Hardware.memory_bytes` is the one figure every
  calculation uses; `memory_gb` (decimal, 1e9) and `memory_gib` are views of it.
- bandwidth (`memory_bandwidth_gb_s`, `interconnect_gb_s`) is decimal GB/s (1e9 bytes/s), as
  datasheets count it (H100 SXM 3.35 TB/s = 3.35e12 bytes/s).
- peaks (`peak_tflops`) are dense figures (no 2:4 sparsity) in 1e12 FLOP/s (TOPS for int8).

User hardware files
-------------------
Your own GPU, laptop or cloud instance goes in a YAML file with the packaged file's shape::

    hardware:
      my-rtx-4090:
        vendor: nvidia              # nvidia | amd | cpu | ... ("cpu" marks CPU / edge boxes)
        memory_mib: 24564           # or memory_gib / memory_bytes (exactly one)
        memory_bandwidth_gb_s: 1008
        peak_tflops: {fp32: 82.6, bf16: 165.2, fp16: 165.2, fp8: 330.3, int8: 660.6}
        interconnect: pcie          # nvlink | pcie | none (default none)
        interconnect_gb_s: 32       # optional, default 0
        price_per_hour: 0.0         # optional, default 0
        source: my datasheet        # optional, default: the file's path
        architecture: ada           # optional: chip generation; see plan.step_params

Name it with the environment variable `WORKBENCH_HARDWARE_FILE` (several files separated by
`os.pathsep`) or `--hardware-file PATH` on the `workbench plan` commands, or call
`add_hardware_file(path)`. Its entries join the catalog wherever it is read (`get_hardware`,
`hardware_catalog`: the CLI, the calculators and the notebooks); an entry with a packaged
entry's name replaces it. Every field is checked: a problem raises a ValueError naming the
file, the entry and the field.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path

import yaml

from workbench.plan.names import check_non_negative, lookup

COMPUTE_DTYPES = ("fp32", "bf16", "fp16", "fp8", "int8")
INTERCONNECTS = ("nvlink", "pcie", "none")
HARDWARE_FILE_ENV = "WORKBENCH_HARDWARE_FILE"
MIB, GIB = 2**20, 2**30
# Exactly one of these gives an entry's memory; the value times the factor is bytes.
MEMORY_FIELDS = {"memory_mib": MIB, "memory_gib": GIB, "memory_bytes": 1}


@dataclass(frozen=True, slots=True)
class Hardware:
    name: str
    vendor: str
    memory_bytes: int                   # total device memory (nvidia-smi memory.total)
    memory_bandwidth_gb_s: float        # decimal GB/s, as datasheets count it
    # Dense peak per dtype in TFLOPS (TOPS for int8); None where the chip has no such path.
    peak_tflops: dict[str, float | None] = field(default_factory=dict)
    interconnect: str = "pcie"          # nvlink | pcie | none
    interconnect_gb_s: float = 0.0
    price_per_hour: float = 0.0
    source: str = ""
    price_source: str = ""
    # The chip generation (ampere, hopper, cdna3, ...): a GPU with no fitted step parameters
    # of its own borrows those of another GPU of the same architecture (plan.step_params).
    architecture: str = ""

    @property
    def memory_gb(self) -> float:
        """Decimal GB (1e9 bytes), the unit every `*_gb` output of workbench.plan uses."""
        return self.memory_bytes / 1e9

    @property
    def memory_gib(self) -> float:
        return self.memory_bytes / GIB

    @property
    def bandwidth_bytes_s(self) -> float:
        return self.memory_bandwidth_gb_s * 1e9

    def peak_flops(self, dtype: str) -> float:
        """FLOP/s for `dtype`; a ValueError names the dtypes this chip has."""
        value = self.peak_tflops.get(dtype)
        if not value:
            have = [k for k, v in self.peak_tflops.items() if v]
            raise ValueError(f"compute_dtype: {self.name} has no {dtype!r} peak; "
                             f"allowed: {', '.join(have)}")
        return value * 1e12

    def with_price(self, price_per_hour: float | None) -> Hardware:
        if price_per_hour is None:
            return self
        check_non_negative(price_per_hour=price_per_hour)
        return replace(self, price_per_hour=float(price_per_hour),
                       price_source="given by the user")


# ---------------------------------------------------------------------------------------------
# Reading and checking entries (the packaged file and the user's go through the same checks)

_REQUIRED = ("vendor", "memory_bandwidth_gb_s", "peak_tflops")
_OPTIONAL = ("interconnect", "interconnect_gb_s", "price_per_hour", "source", "price_source",
             "architecture")
_ALLOWED = (*_REQUIRED, *MEMORY_FIELDS, *_OPTIONAL)


def _number(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def _entry(name: str, d, origin: str) -> tuple[Hardware | None, list[str]]:
    """One entry checked field by field: (the Hardware or None, the problems found)."""
    at, where = f"hardware.{name}", f" (in {origin})" if origin else ""
    if not isinstance(d, Mapping):
        return None, [f"{at}: must be a mapping of fields ({', '.join(_ALLOWED)}){where}"]
    problems = [f"{at}.{k}: unknown field; allowed: {', '.join(_ALLOWED)}{where}"
                for k in d if k not in _ALLOWED and k != "memory_gb"]
    problems += [f"{at}.{k}: required{where}" for k in _REQUIRED if k not in d]
    if "memory_gb" in d:
        problems.append(f"{at}.memory_gb: ambiguous unit (a GPU's '80 GB' is 80 GiB); give "
                        f"memory_mib (nvidia-smi's memory.total), memory_gib or memory_bytes"
                        f"{where}")
    given = [k for k in MEMORY_FIELDS if k in d]
    memory = None
    if len(given) != 1 and "memory_gb" not in d:
        problems.append(f"{at}.memory_mib: give exactly one of {', '.join(MEMORY_FIELDS)}"
                        f"{' (got ' + ', '.join(given) + ')' if given else ''}{where}")
    elif len(given) == 1:
        value = _number(d[given[0]])
        if value is None or value <= 0:
            problems.append(f"{at}.{given[0]}: must be a number > 0, got {d[given[0]]!r}{where}")
        else:
            memory = round(value * MEMORY_FIELDS[given[0]])

    def num(key: str, strict: bool = False) -> float:
        """The field as a number > 0 (strict) or >= 0; absent or null reads as 0."""
        value = d.get(key)
        x = 0.0 if value is None and not strict else _number(value)
        if x is None or (x <= 0 if strict else x < 0):
            problems.append(f"{at}.{key}: must be a number {'>' if strict else '>='} 0, "
                            f"got {value!r}{where}")
            return 0.0
        return x

    bandwidth = num("memory_bandwidth_gb_s", strict=True) if "memory_bandwidth_gb_s" in d \
        else 0.0
    link_gb_s, price = num("interconnect_gb_s"), num("price_per_hour")
    link = str(d.get("interconnect", "none")).lower()
    if link not in INTERCONNECTS:
        problems.append(f"{at}.interconnect: unknown {d.get('interconnect')!r}; allowed: "
                        f"{', '.join(INTERCONNECTS)}{where}")
    vendor = d.get("vendor")
    if "vendor" in d and (not isinstance(vendor, str) or not vendor.strip()):
        problems.append(f"{at}.vendor: must be a name such as nvidia, amd or cpu{where}")
    peaks: dict[str, float | None] = {}
    raw_peaks = d.get("peak_tflops")
    if "peak_tflops" in d:
        if not isinstance(raw_peaks, Mapping) or not raw_peaks:
            problems.append(f"{at}.peak_tflops: must map dtypes ({', '.join(COMPUTE_DTYPES)}) "
                            f"to dense TFLOPS or null{where}")
        else:
            for k, v in raw_peaks.items():
                x = _number(v)
                if k not in COMPUTE_DTYPES:
                    problems.append(f"{at}.peak_tflops.{k}: unknown dtype; allowed: "
                                    f"{', '.join(COMPUTE_DTYPES)}{where}")
                elif v is not None and (x is None or x <= 0):
                    problems.append(f"{at}.peak_tflops.{k}: must be a number > 0 or null, "
                                    f"got {v!r}{where}")
                else:
                    peaks[k] = x
            if not any(peaks.values()) and not any(p.startswith(f"{at}.peak_tflops")
                                                   for p in problems):
                problems.append(f"{at}.peak_tflops: needs at least one dtype with a peak{where}")
    if problems:
        return None, problems
    return Hardware(
        name=name, vendor=vendor.strip().lower(), memory_bytes=memory,
        memory_bandwidth_gb_s=bandwidth,
        peak_tflops={k: peaks.get(k) for k in COMPUTE_DTYPES},
        interconnect=link, interconnect_gb_s=link_gb_s, price_per_hour=price,
        source=str(d.get("source") or f"hardware file {origin}"),
        price_source=str(d.get("price_source", "")),
        architecture=str(d.get("architecture") or "").strip().lower()), []


def parse_hardware(raw, origin: str = "") -> dict[str, Hardware]:
    """Entries of a parsed hardware YAML document ({'hardware': {name: fields}}), checked;
    a ValueError carries one line per problem, each naming the entry and field."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("hardware"), Mapping) \
            or not raw["hardware"]:
        raise ValueError(f"hardware_file: {origin or 'the document'} must be a mapping with a "
                         "'hardware:' key holding one entry per device name")
    out, problems = {}, []
    for name, d in raw["hardware"].items():
        hw, found = _entry(str(name), d, origin)
        problems += found
        if hw is not None:
            out[str(name)] = hw
    if problems:
        raise ValueError("\n".join(problems))
    return out


def load_hardware_file(path: str | os.PathLike) -> dict[str, Hardware]:
    """A user hardware file's entries, checked (see this module's docstring for the format)."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ValueError(f"hardware_file: {p} does not exist or is not a file")
    stat = p.stat()
    return _load_cached(str(p.resolve()), stat.st_mtime_ns, stat.st_size)


@lru_cache(maxsize=32)
def _load_cached(path: str, _mtime_ns: int, _size: int) -> dict[str, Hardware]:
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"hardware_file: {path} is not valid YAML ({first})") from None
    return parse_hardware(raw, path)


@cache
def packaged_catalog() -> dict[str, Hardware]:
    """Every entry of the packaged hardware.yaml, by name."""
    text = resources.files("workbench.plan").joinpath("hardware.yaml").read_text()
    return parse_hardware(yaml.safe_load(text), "workbench/plan/hardware.yaml")


_ADDED_FILES: list[Path] = []


def add_hardware_file(path: str | os.PathLike, check: bool = True) -> None:
    """Add a user hardware file to the catalog for the rest of this process (checked now,
    unless `check` is False: then when the catalog is next read)."""
    if check:
        load_hardware_file(path)
    p = Path(path).expanduser()
    if p not in _ADDED_FILES:
        _ADDED_FILES.append(p)


def hardware_files() -> list[Path]:
    """User hardware files in force: $WORKBENCH_HARDWARE_FILE's, then add_hardware_file's."""
    env = [Path(s).expanduser() for s in os.environ.get(HARDWARE_FILE_ENV, "").split(os.pathsep)
           if s.strip()]
    return [*env, *(p for p in _ADDED_FILES if p not in env)]


def hardware_catalog() -> dict[str, Hardware]:
    """The packaged entries plus those of every user hardware file (later files win)."""
    cat = dict(packaged_catalog())
    for path in hardware_files():
        try:
            cat.update(load_hardware_file(path))
        except ValueError as e:
            if path in _ADDED_FILES:
                raise
            raise ValueError("\n".join(f"{line} (named by ${HARDWARE_FILE_ENV})"
                                        for line in str(e).splitlines())) from None
    return cat


_ALIASES = {"h100": "h100-sxm", "a100": "a100-80gb", "cpu": "cpu-local"}


def get_hardware(name: str, price_per_hour: float | None = None) -> Hardware:
    """A catalog entry (packaged or from a user file) by name, close spellings accepted, with
    an optional price override."""
    return lookup("gpu", name, hardware_catalog(), _ALIASES).with_price(price_per_hour)


# ---------------------------------------------------------------------------------------------
# Measuring the machine at hand (the one bandwidth measurement of the project)

def _device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"device: unknown {device!r}; allowed: auto, cpu, cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' asked for, but torch sees no CUDA device")
    return device


def copy_bandwidth(num_bytes: int = 1 << 27, budget_s: float = 0.5, device: str = "cpu"
                   ) -> float:
    """Bytes per second moved by a large tensor copy, each byte counted once read and once
    written: STREAM's "Copy" convention (McCalpin, "Memory Bandwidth and Machine Balance",
    1995). Best of repeated copies within `budget_s` after a warm-up: the least noisy figure.
    Decode's bandwidth bound (weight bytes / this rate) and the roofline use this yardstick.
    """
    import torch

    dev = _device(device)
    src = torch.ones(int(num_bytes), dtype=torch.uint8, device=dev)
    dst = torch.empty_like(src)
    return 2 * src.numel() / _best_time(lambda: dst.copy_(src), budget_s, dev)


def measure_hardware(budget_s: float = 1.5, price_per_hour: float = 0.0, device: str = "auto",
                     name: str | None = None) -> Hardware:
    """The machine at hand as a Hardware: copy bandwidth, fp32 / bf16 (and fp16 on CUDA)
    matmul rates, and its memory. For calibrating against this machine, not the packaged
    `cpu-local` entry (another machine's figures). `device` is auto | cpu | cuda."""
    import torch  # lazy: the catalog itself needs no torch

    dev = _device(device)
    share = budget_s / 4
    if dev == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        n_bytes, n, memory = 1 << 30, 8192, int(props.total_memory)
        vendor, what = "nvidia", f"{props.name}, torch {torch.__version__}"
        dtypes = ((torch.float32, "fp32"), (torch.bfloat16, "bf16"), (torch.float16, "fp16"))
    else:
        n_bytes, n = 1 << 27, 1024
        from workbench.engine.sizing import host_memory_total

        memory = host_memory_total()
        vendor = "cpu"
        what = f"{os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
        dtypes = ((torch.float32, "fp32"), (torch.bfloat16, "bf16"))
    bandwidth = copy_bandwidth(n_bytes, share, dev)
    peaks: dict[str, float | None] = dict.fromkeys(COMPUTE_DTYPES)
    for dtype, key in dtypes:
        a = torch.randn(n, n, device=dev).to(dtype)
        b = torch.randn(n, n, device=dev).to(dtype)
        peaks[key] = 2 * n**3 / _best_time(lambda a=a, b=b: a @ b, share, dev) / 1e12
    return Hardware(
        name=name or f"{dev}-local", vendor=vendor, memory_bytes=int(memory),
        memory_bandwidth_gb_s=round(bandwidth / 1e9, 2), peak_tflops=peaks,
        interconnect="none", price_per_hour=price_per_hour,
        source=f"measured on the machine at hand ({what}) by "
               "workbench.plan.hardware.measure_hardware: copy bandwidth (bytes read + "
               f"written) and the best {n}x{n} matmul rate",
        price_source="given by the caller")


def measure_cpu(budget_s: float = 1.5, price_per_hour: float = 0.0) -> Hardware:
    """This machine's CPU as a Hardware named `cpu-local` (measure_hardware on the CPU)."""
    return measure_hardware(budget_s, price_per_hour, device="cpu", name="cpu-local")


def _best_time(fn: Callable[[], object], budget_s: float, device: str = "cpu") -> float:
    """Best of repeated runs (after one warm-up) within the time budget: the least noisy."""
    if device == "cuda":
        import torch

        def run() -> None:
            fn()
            torch.cuda.synchronize()
    else:
        run = fn
    run()
    best, deadline = float("inf"), time.perf_counter() + budget_s
    while True:
        t0 = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            return best
