"""Our byte model against litgpt's ``GPT`` configured as a byte model, trained side by side.

    python -m venv --system-site-packages .venv-peer && .venv-peer/bin/pip install litgpt==0.5.13
    .venv-peer/bin/python -m benchmarks.byte_peer [--steps 600 --seeds 0 1 2 --out benchmarks/results/byte-peer]

litgpt (the Lightning ecosystem's GPT) pins an older jsonargparse than this package's CLI is tested
with, so it lives in its own environment that sees this one's packages (``--system-site-packages``);
this benchmark imports no CLI.

Per seed, three models train in one process on the same batches of Shakespeare (the held-out
windows are the ByteDataModule's test split): ours ``byte`` and ``nibble_acc`` (``ByteLM`` from
``configs/byte/byte.yaml``) and litgpt's ``GPT`` at the same width, depth, heads, MLP width and
context (vocab 256; RMSNorm, GELU MLP (exact or tanh, as our ``activation``) with biases,
sequential residual, as ours; its own rotary positions and its pretraining script's weight init).
Same optimizer and schedule for all (:func:`~lightning_film.models.optim.warmup_cosine_adamw`:
AdamW, decay on matrices but embeddings, warmup then cosine), gradient clipping at 1.0, fp32. The steps are interleaved, the order rotating
per step, so every step of one model has a same-step partner of the others: tokens/s ratios are
per step (median, IQR). Test bits per byte per model; the bpb gap paired by seed.

Writes ``byte_peer.md`` and ``byte_peer.json`` into ``--out``; a seed already in the JSON is kept
(resumable). CPU timings.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_film.io import write_atomic
from lightning_film.measure import cpu_model, load_average, machine_info, spread
from lightning_film.models.optim import warmup_cosine_adamw
from lightning_film.reproduce.byte import build_variant, config_parts
from lightning_film.reproduce.report import add_override_option, commit
from lightning_film.reproduce.stats import fmt_ci, fmt_p, paired

PROG = "python -m benchmarks.byte_peer"
CONFIG = Path("configs/byte/byte.yaml")
PEER = "litgpt GPT"
SETUP = (
    "run it from its own environment: python -m venv --system-site-packages .venv-peer && "
    ".venv-peer/bin/pip install litgpt==0.5.13 && .venv-peer/bin/python -m benchmarks.byte_peer"
)
OURS = ("byte", "nibble_acc")
WARMUP_STEPS_SKIPPED = 10  # the first steps (allocator, lazy init) are not timed into the medians
#: nanoGPT's README: the CPU "baby GPT" on character-level Shakespeare, 1.88 val loss (nats per char)
NANOGPT_NATS = 1.88


def peer_model(model_args: dict, seq_len: int) -> nn.Module:
    """litgpt's GPT at our model's width, depth, heads, MLP width and context, initialised as
    litgpt's pretraining initialises it."""
    import lightning as L

    try:
        from litgpt.model import GPT, Config
        from litgpt.pretrain import initialize_weights
    except ImportError as err:
        raise SystemExit(f"{PROG}: litgpt is not importable here ({err}); {SETUP}") from None

    net = model_args["net"]  # ByteNet's arguments
    dim, depth = net["dim"], net["depth"]
    config = Config(
        name="byte",
        block_size=seq_len,
        vocab_size=256,
        padded_vocab_size=256,
        n_layer=depth,
        n_head=net["num_heads"],
        n_embd=dim,
        intermediate_size=int(net["mlp_ratio"] * dim),
        rotary_percentage=1.0,
        parallel_residual=False,
        bias=True,
        lm_head_bias=True,
        norm_class_name="RMSNorm",
        mlp_class_name="GptNeoxMLP",
        gelu_approximate="tanh" if net.get("activation", "gelu") == "gelu_tanh" else "none",  # ours
    )
    model = GPT(config)
    initialize_weights(L.Fabric(accelerator="cpu", devices=1), model, n_layer=depth, n_embd=dim)
    return model


#: litgpt parameter names -> ours (``ByteNet``), where they differ
_NAMES = (
    ("lm_head", "net.head"),
    ("transformer.wte", "net.embed.byte"),
    ("transformer.ln_f", "net.transformer.final_norm"),
    ("transformer.h.", "net.transformer.blocks."),
    ("norm_1", "norm1"),
    ("norm_2", "norm2"),
    ("mlp.fc.", "mlp.fc1."),
    ("mlp.proj.", "mlp.fc2."),
)


def peer_weights(peer: nn.Module) -> dict[str, Tensor]:
    """The peer's state_dict under our ``byte`` model's names (every peer weight has a place in ours)."""
    weights = {}
    for name, value in peer.state_dict().items():
        for theirs, mine in _NAMES:
            name = name.replace(theirs, mine)
        weights[name] = value.clone()
    return weights


def same_function(model_args: dict, seq_len: int) -> dict[str, float]:
    """Ours (``byte``) given the peer's weights, against the peer, on random bytes: the largest
    logit difference as built, and with the peer's norm eps set to ours. Near 0: the two are one
    network, and the table compares training, not architectures."""
    import copy

    torch.manual_seed(0)
    ours, peer = build_variant(model_args, "byte").eval(), peer_model(model_args, seq_len).eval()
    ours.load_state_dict({**ours.state_dict(), **peer_weights(peer)})  # strict: every peer weight has a place
    x = torch.randint(0, 256, (2, seq_len), generator=torch.Generator().manual_seed(0))
    matched = copy.deepcopy(peer)
    (eps,) = {m.eps for m in ours.modules() if hasattr(m, "eps")}  # ours has one norm kind here
    for module in matched.modules():
        if hasattr(module, "eps"):
            module.eps = eps
    with torch.no_grad():
        mine = ours.net(x)
        return {
            "max_abs_logit_diff": float((peer(x) - mine).abs().max()),
            "max_abs_logit_diff_eps_matched": float((matched(x) - mine).abs().max()),
            "max_abs_logit": float(mine.abs().max()),
            "ours_eps": eps,
        }


def our_models(model_args: dict, seed: int, steps: int, variants: tuple[str, ...] = OURS) -> dict[str, dict]:
    """Our variants as :func:`build` returns them, each drawn from ``seed`` (the peer's seed too)."""
    args = {**model_args, "max_lr_steps": steps}
    out: dict[str, dict] = {}
    for variant in variants:
        model = build_variant(args, variant, seed)
        opt = model.configure_optimizers()  # the model's own, with max_lr_steps it needs no Trainer
        out[variant] = {"module": model, "nll": model.nll, "optimizer": opt["optimizer"]}
        out[variant]["scheduler"] = opt["lr_scheduler"]["scheduler"]
    return out


def build(
    model_args: dict, seq_len: int, seed: int, steps: int, variants: tuple[str, ...] = OURS, start: str = "own"
) -> dict[str, dict]:
    """name -> {"module", "nll" (batch -> (B, N) nats), "optimizer", "scheduler"}; ``start="peer"``: ours
    ``byte`` starts from the peer's initial weights (the same draw), not its own."""
    out = our_models(model_args, seed, steps, variants)
    torch.manual_seed(seed)
    peer = peer_model(model_args, seq_len)

    def peer_nll(batch: dict[str, Tensor]) -> Tensor:
        logits = peer(batch["bytes"][:, :-1])  # (B, N, 256)
        return F.cross_entropy(logits.float().transpose(1, 2), batch["bytes"][:, 1:], reduction="none")

    no_decay = [m.weight for m in peer.modules() if isinstance(m, nn.Embedding)]
    ours = out["byte"]["module"].hparams  # the config's values and ByteLM's defaults
    hp = (ours.lr, ours.weight_decay, ours.warmup_steps, steps, ours.min_lr_ratio)
    optimizer, scheduler = warmup_cosine_adamw(peer, no_decay, *hp, betas=(0.9, 0.95))
    out[PEER] = {"module": peer, "nll": peer_nll, "optimizer": optimizer, "scheduler": scheduler}
    if start == "peer":
        ours = out["byte"]["module"]
        ours.load_state_dict({**ours.state_dict(), **peer_weights(peer)})  # in place: the optimizer keeps its tensors
    return out


def masked_mean(nll: Tensor, mask: Tensor) -> Tensor:
    return (nll * mask).sum() / mask.sum().clamp_min(1)


def train_step(model: dict, batch: dict[str, Tensor], clip: float) -> float:
    """One optimizer step; returns its wall time in seconds."""
    start = time.perf_counter()
    loss = masked_mean(model["nll"](batch), batch["mask"])
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model["module"].parameters(), clip)
    model["optimizer"].step()
    model["scheduler"].step()
    model["optimizer"].zero_grad(set_to_none=True)
    return time.perf_counter() - start


@torch.no_grad()
def test_bpb(model: dict, loader) -> float:
    """Bits per byte over every target of the held-out windows (as ByteLM's test/bpb)."""
    model["module"].eval()
    nats = count = 0.0
    for batch in loader:
        nats += float((model["nll"](batch) * batch["mask"]).sum())
        count += float(batch["mask"].sum())
    model["module"].train()
    return nats / count / math.log(2)


def run_seed(
    model_args: dict,
    data_args: dict,
    seed: int,
    steps: int,
    clip: float,
    variants: tuple[str, ...] = OURS,
    start: str = "own",
) -> dict:
    from lightning_film.data.bytes import ByteDataModule

    dm = ByteDataModule(**{**data_args, "seed": seed})
    dm.setup("fit")
    dm.setup("test")
    models = build(model_args, dm.seq_len, seed, steps, variants, start)
    for name in variants:
        models[name]["module"].rare_table.copy_(dm.rare_table)
    names = list(models)
    times: dict[str, list[float]] = {n: [] for n in names}
    batches, step = iter(dm.train_dataloader()), 0
    tokens = None
    while step < steps:
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(dm.train_dataloader())
            continue
        tokens = int(batch["mask"].numel())
        turn = step % len(names)
        for name in names[turn:] + names[:turn]:  # rotate who goes first
            times[name].append(train_step(models[name], batch, clip))
        step += 1
    timed = {n: t[WARMUP_STEPS_SKIPPED:] for n, t in times.items()}
    result: dict = {"seed": seed, "steps": steps, "tokens_per_step": tokens, "models": {}}
    for name in names:
        module = models[name]["module"]
        result["models"][name] = {
            "params": sum(p.numel() for p in module.parameters()),
            "test_bpb": test_bpb(models[name], dm.test_dataloader()),
            "tokens_per_s": tokens / statistics.median(timed[name]),
            # per step: our tokens/s over the peer's on the same batch, same step
            "tokens_per_s_vs_peer": [p / o for o, p in zip(timed[name], timed[PEER])],
        }
    return result


def summarize(report: dict) -> dict:
    seeds = report["seeds"]
    rows = {}
    variants = report.get("variants", OURS)  # older reports trained both
    for name in [*variants, PEER]:
        ratios = [r for s in seeds.values() for r in s["models"][name]["tokens_per_s_vs_peer"]]
        rows[name] = {
            "params": next(iter(seeds.values()))["models"][name]["params"],
            "test_bpb": {k: s["models"][name]["test_bpb"] for k, s in seeds.items()},
            "tokens_per_s": statistics.median(s["models"][name]["tokens_per_s"] for s in seeds.values()),
            "vs_peer": spread(ratios),
        }
    gaps = {name: paired(rows[name]["test_bpb"], rows[PEER]["test_bpb"]) for name in variants}
    return {"rows": rows, "gaps": gaps}


def _load(values: list[float] | None) -> str:
    return "unknown" if values is None else " / ".join(f"{v:.1f}" for v in values)


#: relative logit difference below which ours and the peer count as one network (fp32 rounding is ~1e-6)
SAME_FUNCTION_TOLERANCE = 1e-4


def _commits(commit: str | list[str]) -> str:
    """A report's commits: one per seed since each seed records its own, one string in older reports."""
    return commit if isinstance(commit, str) else ", ".join(commit)


def _same_function_line(check: dict | None) -> list[str]:
    if check is None:
        return []
    matched = check["max_abs_logit_diff_eps_matched"]
    same = matched <= SAME_FUNCTION_TOLERANCE * check["max_abs_logit"]
    verdict = (
        "So a bpb gap comes from training (the random initial draw, the eps), not from the architecture."
        if same
        else "**The two are different networks** at equal weights: a bpb gap may be the architecture."
    )
    return [
        f"- Same network? Ours `byte` loaded with the peer's weights gives the peer's logits to "
        f"{matched:.1e} with the peer's RMSNorm eps set to ours ({check['ours_eps']:g}), and to "
        f"{check['max_abs_logit_diff']:.1e} with litgpt's own eps as trained here (largest logit "
        f"{check['max_abs_logit']:.2f}). {verdict}",
        "",
    ]


def _cpus(seeds: dict[str, dict]) -> str:
    """Which CPU trained which seeds, where seeds were added on another machine (each seed's
    tokens/s ratio is measured within its own run, so they pool; absolute tokens/s do not)."""
    by_cpu: dict[str, list[int]] = {}
    for key, seed in seeds.items():
        by_cpu.setdefault(seed.get("cpu", "not recorded"), []).append(int(key))
    if len(by_cpu) < 2:
        return ""
    return "; seeds by CPU: " + ", ".join(f"{cpu} {sorted(keys)}" for cpu, keys in by_cpu.items())


def render(report: dict) -> str:
    s, m = summarize(report), report["machine"]
    lines = [
        "# Byte model against litgpt's GPT (a byte model at equal width, depth, heads and context)",
        "",
        f"- Command: `{report['command']}`",
        f"- Date: {report['date']}; seeds trained at commit {_commits(report['commit'])}; litgpt {m.get('litgpt')}",
        f"- Machine: {m['cpu']}, {m['cpu_count']} cores, torch {m['torch']} ({m['torch_threads']} threads); "
        f"load average {_load(report['load_average_at_start'])} at start, {_load(report['load_average_at_end'])} at end "
        "(1 / 5 / 15 min); "
        "**CPU timings**" + _cpus(report["seeds"]),
        f"- Budget: {report['steps']} steps per model and seed, seeds {sorted(int(k) for k in report['seeds'])}; "
        f"model and data from `{report['config']}` with sources {report['sources']}, overrides "
        f"{report.get('overrides') or 'none'}; batch "
        f"{report['batch_size']} x {report['seq_len']} bytes; AdamW lr {report['lr']}, warmup then cosine; "
        "clip 1.0; fp32",
        *(
            ["- Start: ours `byte` from the peer's initial weights (the same draw, each seed), not its own"]
            if report.get("start") == "peer"
            else []
        ),
        "",
        "| model | params | test bpb (Shakespeare) | train tokens/s | tokens/s vs litgpt (per step) |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in s["rows"].items():
        shown = f"ours, {name}" if name in OURS else name
        ratio = row["vs_peer"]
        lines.append(
            f"| {shown} | {row['params']:,} | {fmt_ci(list(row['test_bpb'].values()), 4)} | "
            f"{row['tokens_per_s']:,.0f} | {ratio['median']:.3f} ({ratio['q1']:.3f}–{ratio['q3']:.3f}) |"
        )
    lines += [
        "",
        "- test bpb: mean ± 95% CI over the seeds (Student t); tokens/s: the median step's; vs litgpt: "
        "the peer's step time over this model's on the same batch and step, median (IQR) over all timed steps "
        f"(the first {WARMUP_STEPS_SKIPPED} of each seed left out), > 1: ours is faster.",
        "",
        *_same_function_line(report.get("same_function")),
        "## bpb, paired by seed (ours − litgpt)",
        "",
        "| ours | seeds | difference | 95% CI | p | verdict |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, gap in s["gaps"].items():
        ci = "–" if gap["half"] is None else f"[{gap['low']:+.4f}, {gap['high']:+.4f}]"
        lines.append(f"| {name} | {gap['n']} | {gap['diff']:+.4f} | {ci} | {fmt_p(gap['p'])} | {gap['verdict']} |")
    if "byte" not in s["gaps"]:
        return "\n".join([*lines, ""])
    byte = s["gaps"]["byte"]
    speed = s["rows"]["byte"]["vs_peer"]["median"]
    if byte["verdict"] == "established":
        bpb_word = "better than" if byte["diff"] < 0 else "worse than"
    elif byte["p"] is None:
        bpb_word = "untested (one seed) against"
    else:
        bpb_word = "not established different from"
    lines += [
        "",
        f"- Goal (ours `byte` no worse than the peer in bpb, at >= 1.0x its tokens/s): bpb {bpb_word} "
        f"litgpt's ({byte['diff']:+.4f} bits per byte); tokens/s {speed:.3f}x litgpt's, so the speed goal is "
        f"{'met' if speed >= 1.0 else 'missed'}.",
        f'- For scale (not run here): nanoGPT\'s CPU "baby GPT" reaches {NANOGPT_NATS} nats/char = '
        f"{NANOGPT_NATS / math.log(2):.2f} bits/char on character-level tiny Shakespeare (65-symbol vocabulary, "
        "its own budget and split), per its README.",
        "",
    ]
    return "\n".join(lines)


def resume(path: Path, settings: dict) -> dict:
    """The stored report at ``path`` if it was made with exactly ``settings``, else a fresh one."""
    report = json.loads(path.read_text()) if path.exists() else {}
    if {k: report.get(k) for k in settings} != settings:
        return {**settings, "seeds": {}}
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=CONFIG)
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps per model and seed")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sources", nargs="+", default=["shakespeare"])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/byte-peer"))
    parser.add_argument("--variants", nargs="+", choices=OURS, default=list(OURS), help="our models to train")
    parser.add_argument(
        "--start",
        choices=("own", "peer"),
        default="own",
        help="peer: ours `byte` starts from the peer's initial weights (the same draw), to tell the draw from the step",
    )
    add_override_option(
        parser,
        "a config override for our models, e.g. model.net.positions=none (repeatable); the peer follows the "
        "width, depth, heads and MLP ratio",
    )
    args = parser.parse_args(argv)
    if args.steps <= WARMUP_STEPS_SKIPPED:
        parser.error(
            f"--steps must be > {WARMUP_STEPS_SKIPPED} (the first {WARMUP_STEPS_SKIPPED} are not timed), got {args.steps}"
        )
    model_args, data_args = config_parts(args.config, args.overrides)
    data_args = {**data_args, "sources": args.sources}
    path = args.out / "byte_peer.json"
    if args.start == "peer" and "byte" not in args.variants:
        parser.error("--start peer gives the peer's weights to ours `byte`: include byte in --variants")
    settings = {"config": str(args.config), "steps": args.steps, "sources": args.sources}
    settings |= {"variants": args.variants, "start": args.start}
    settings["overrides"] = [f"{k}={v}" for k, v in args.overrides]
    # The resolved arguments, not the config's path, decide whether a stored seed still counts: an edited
    # config must not re-render runs of the old one under a new commit.
    settings |= json.loads(json.dumps({"model_args": model_args, "data_args": data_args}))
    report = resume(path, settings)
    report.setdefault("load_average_at_start", load_average())
    started = time.time()
    for seed in args.seeds:
        if str(seed) in report["seeds"]:
            continue
        print(
            f"seed {seed}: training {', '.join([*args.variants, PEER])} for {args.steps} steps, interleaved", flush=True
        )
        result = run_seed(model_args, data_args, seed, args.steps, 1.0, tuple(args.variants), args.start)
        report["seeds"][str(seed)] = {**result, "commit": commit(), "cpu": cpu_model()}
        args.out.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(report, indent=1) + "\n")
    report |= {
        "command": " ".join([PROG, *map(shlex.quote, sys.argv[1:] if argv is None else argv)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": sorted({s.get("commit", "unknown") for s in report["seeds"].values()}),
        "machine": machine_info(("litgpt",)),
        "load_average_at_end": load_average(),
        "wall_s_this_call": time.time() - started,
        "batch_size": data_args["batch_size"],
        "seq_len": data_args["seq_len"],
        "lr": model_args.get("lr"),
        "same_function": same_function(model_args, data_args["seq_len"]),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_atomic(path, json.dumps(report, indent=1) + "\n")
    write_atomic(args.out / "byte_peer.md", render(report))
    print(render(report))


if __name__ == "__main__":
    main()
