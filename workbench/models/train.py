"""Train the embedded models `tiny-trained` and `tiny-draft` on CPU, offline, reproducibly.

The text is the running interpreter's standard library (top-level ``*.py`` files, sorted by
name); a file is held out when ``zlib.crc32(name) % 10 == 0``. Both models share the project's
byte-level BPE tokenizer (vocab 4096). Training is plain fp32 on CPU with Hugging Face's
``LlamaForCausalLM`` (the same architecture the engine serves): AdamW, linear warmup then cosine
decay, batches of random windows drawn from a seeded generator. The checkpoint is saved in bf16
safetensors (Hugging Face layout) beside a manifest (``training.json``) and the loss curve
(``loss_curve.csv``). Held-out perplexity is measured on the bf16 weights that ship, and on the
same architecture at its random initialisation (the training's starting point).
"""

from __future__ import annotations

import csv
import json
import math
import platform
import shutil
import sysconfig
import time
import zlib
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from workbench.models.tokenizer_builder import EOS_ID

HELD_OUT_RULE = ("top-level *.py of the stdlib, sorted by name; "
                 "held out iff zlib.crc32(name) % 10 == 0")


@dataclass(frozen=True)
class Recipe:
    """Everything that decides a training run (it is written to the manifest verbatim)."""

    steps: int
    batch_size: int = 16
    seq_len: int = 256
    lr: float = 2e-3
    min_lr: float = 2e-4
    warmup_steps: int = 30
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    threads: int = 2
    eval_windows: int = 64  # held-out windows of seq_len tokens for the perplexity
    max_files: int | None = None  # None: the whole corpus (a small number for quick tests)


RECIPES: dict[str, Recipe] = {
    # Sized for minutes on 2 shared CPU cores (see the README for the measured wall time).
    "tiny-trained": Recipe(steps=800, batch_size=8, lr=3e-3, min_lr=3e-4, warmup_steps=40),
    "tiny-draft": Recipe(steps=150, batch_size=16, lr=3e-3, min_lr=3e-4, warmup_steps=15),
}


def stdlib_files(max_files: int | None = None) -> tuple[list[Path], list[Path]]:
    """(train files, held-out files) by the fixed rule, both sorted by name."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(root.glob("*.py"))
    if max_files is not None:
        files = files[:max_files]
    held = [f for f in files if zlib.crc32(f.name.encode()) % 10 == 0]
    train = [f for f in files if zlib.crc32(f.name.encode()) % 10 != 0]
    if not train or not held:
        raise RuntimeError(f"too few Python sources under {root} to split into train/held-out")
    return train, held


def tokenize_files(tokenizer, files: list[Path]) -> torch.Tensor:
    """One stream of token ids: each file's tokens followed by EOS."""
    ids: list[int] = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        ids.extend(tokenizer(text, add_special_tokens=False)["input_ids"])
        ids.append(EOS_ID)
    return torch.tensor(ids, dtype=torch.long)


def lr_at(step: int, r: Recipe) -> float:
    """Linear warmup over warmup_steps, then cosine from lr down to min_lr at the last step."""
    if step < r.warmup_steps:
        return r.lr * (step + 1) / r.warmup_steps
    t = (step - r.warmup_steps) / max(1, r.steps - r.warmup_steps)
    return r.min_lr + 0.5 * (r.lr - r.min_lr) * (1 + math.cos(math.pi * min(1.0, t)))


def _hf_model(config_dict: dict, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(**{k: v for k, v in config_dict.items()
                         if k not in ("architectures", "model_type", "torch_dtype")})
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).float()


@torch.inference_mode()
def perplexity(model, stream: torch.Tensor, seq_len: int, windows: int) -> float:
    """exp(mean next-token NLL) over the first `windows` non-overlapping windows of `stream`."""
    n = min(windows, (len(stream) - 1) // seq_len)
    x = stream[: n * seq_len + 1]
    inputs, targets = x[:-1].view(n, seq_len), x[1:].view(n, seq_len)
    model.eval()
    total = 0.0
    for i in range(0, n, 8):
        logits = model(input_ids=inputs[i:i + 8]).logits.float()
        total += torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), targets[i:i + 8].reshape(-1),
            reduction="sum").item()
    return math.exp(total / (n * seq_len))


def _bf16_roundtrip(model):
    """The model as it ships: every weight rounded to bf16 (computed in fp32 for evaluation)."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    return m


@dataclass
class TrainResult:
    path: Path
    losses: list[float]
    manifest: dict


def train(preset: str, out_dir: str | Path, recipe: Recipe | None = None,
          progress: bool = True, spec=None, log=print) -> TrainResult:
    """Train `preset` (its ModelSpec from PRESETS unless `spec` is given) and save it in out_dir."""
    from workbench.models.tiny import PRESETS, _tokenizer_dir, hf_config
    from workbench.progress import progress_bar

    r = recipe or RECIPES[preset]
    spec = spec or PRESETS[preset]
    torch.set_num_threads(r.threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    tok_dir = _tokenizer_dir()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    train_files, held_files = stdlib_files(r.max_files)
    train_ids = tokenize_files(tokenizer, train_files)
    held_ids = tokenize_files(tokenizer, held_files)

    config = hf_config(spec)
    model = _hf_model(config, r.seed)
    n_params = sum(p.numel() for p in model.parameters())
    random_ppl = perplexity(model, held_ids, r.seq_len, r.eval_windows)

    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": r.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=r.lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(r.seed)
    max_start = len(train_ids) - r.seq_len - 1
    offsets = torch.arange(r.seq_len + 1)
    losses: list[float] = []
    bar = progress_bar(r.steps, progress, desc=f"train {preset}", unit="step")
    t0 = time.perf_counter()
    model.train()
    for step in range(r.steps):
        starts = torch.randint(0, max_start, (r.batch_size,), generator=gen)
        batch = train_ids[starts[:, None] + offsets]
        for g in opt.param_groups:
            g["lr"] = lr_at(step, r)
        logits = model(input_ids=batch[:, :-1]).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                 batch[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), r.grad_clip)
        opt.step()
        losses.append(loss.item())
        bar.update(1)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    bar.close()
    wall = time.perf_counter() - t0

    shipped = _bf16_roundtrip(model)
    trained_ppl = perplexity(shipped, held_ids, r.seq_len, r.eval_windows)
    path = _save(shipped, config, tok_dir, Path(out_dir))
    tail = losses[-min(20, len(losses)):]
    manifest = {
        "preset": preset,
        "parameters": n_params,
        "architecture": asdict(spec),
        "recipe": asdict(r),
        "optimizer": "AdamW(betas=(0.9, 0.95), eps=1e-8), no decay on norms; grad clip "
                     f"{r.grad_clip}; lr: linear warmup {r.warmup_steps} steps, cosine to "
                     f"{r.min_lr} at step {r.steps}",
        "data_rule": HELD_OUT_RULE,
        "train_files": len(train_files),
        "held_out_files": len(held_files),
        "train_tokens": len(train_ids),
        "held_out_tokens": len(held_ids),
        "tokens_seen": r.steps * r.batch_size * r.seq_len,
        "stdlib": sysconfig.get_paths()["stdlib"],
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "final_train_loss_mean_last_20": sum(tail) / len(tail),
        "held_out_tokens_evaluated": min(r.eval_windows, (len(held_ids) - 1) // r.seq_len)
        * r.seq_len,
        "held_out_perplexity": trained_ppl,
        "held_out_perplexity_random_init": random_ppl,
        "train_wall_s": round(wall, 1),
        "weights_dtype": "bfloat16 (trained in float32)",
    }
    (path / "training.json").write_text(json.dumps(manifest, indent=2) + "\n")
    with open(path / "loss_curve.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "lr", "loss"])
        for i, loss_value in enumerate(losses):
            w.writerow([i, f"{lr_at(i, r):.6g}", f"{loss_value:.6f}"])
    log(f"{preset}: {n_params / 1e6:.2f}M params, {r.steps} steps in {wall:.0f} s, "
        f"train loss {manifest['final_train_loss_mean_last_20']:.3f}; held-out perplexity "
        f"{trained_ppl:.1f} trained vs {random_ppl:.1f} random init")
    return TrainResult(path, losses, manifest)


def _save(model, config: dict, tok_dir: Path, out: Path) -> Path:
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    cfg = dict(config, torch_dtype="bfloat16")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    state = {k: v.detach().to(torch.bfloat16).contiguous()
             for k, v in model.state_dict().items()
             if not (config.get("tie_word_embeddings") and k == "lm_head.weight")}
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    for f in tok_dir.iterdir():
        shutil.copy(f, out / f.name)
    return out


def with_steps(preset: str, steps: int | None = None, seed: int | None = None) -> Recipe:
    r = RECIPES[preset]
    if steps is not None:
        r = replace(r, steps=steps, warmup_steps=min(r.warmup_steps, max(1, steps // 10)))
    if seed is not None:
        r = replace(r, seed=seed)
    return r
