"""Smoke test of the overhead benchmark at a tiny shape: files and bookkeeping, never speeds."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import lightning_film

# benchmarks/ lives beside tests/ at the repository root and is not installed.
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from benchmarks import overhead  # noqa: E402

TINY = [
    "--dim",
    "16",
    "--depth",
    "1",
    "--heads",
    "2",
    "--seq",
    "8",
    "--batch",
    "2",
    "--cond-dim",
    "16",
    "--repeats",
    "2",
    "--steps-per-repeat",
    "1",
    "--warmup",
    "0",
]


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, str]:
    out = tmp_path_factory.mktemp("bench")
    argv = TINY + ["--out", str(out)] + ([] if _has("x_transformers") else ["--no-x-transformers"])
    cfg, parsed_out = overhead.parse_args(argv)
    command = "python -m benchmarks.overhead " + " ".join(argv)
    result = overhead.run_benchmark(cfg, parsed_out, command)
    return out, result, command


def test_writes_all_three_files(tiny_run: tuple[Path, dict, str]) -> None:
    out, _, _ = tiny_run
    assert sorted(p.name for p in out.iterdir()) == ["overhead.json", "overhead.md", "overhead.png"]
    assert (out / "overhead.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_row_for_every_registered_conditioner(tiny_run: tuple[Path, dict, str]) -> None:
    out, _, _ = tiny_run
    rows = json.loads((out / "overhead.json").read_text())["conditioners"]["rows"]
    vector_rows = [r["conditioner"] for r in rows if r["conditioning"] != "per_token"]
    assert sorted(vector_rows) == lightning_film.list_conditioners()
    markdown = (out / "overhead.md").read_text()
    for name in lightning_film.list_conditioners():
        assert f"| `{name}` |" in markdown


def test_per_token_rows_are_the_modulating_conditioners(tiny_run: tuple[Path, dict, str]) -> None:
    _, result, _ = tiny_run
    rows = result["conditioners"]["rows"]
    per_token = {r["conditioner"] for r in rows if r["conditioning"] == "per_token"}
    assert per_token == {r["conditioner"] for r in rows if r["conditioning"] == "vector"}
    assert {"film", "adaln"} <= per_token and not per_token & {"none", "concat", "cross_attention"}


def test_baseline_is_one_and_adds_nothing(tiny_run: tuple[Path, dict, str]) -> None:
    _, result, _ = tiny_run
    none = next(r for r in result["conditioners"]["rows"] if r["id"] == "none")
    assert none["params_added"] == 0 and none["params_added_pct"] == 0
    assert all(none["ratio"][k] == pytest.approx(1.0) for k in ("median", "q1", "q3", "min", "max"))
    cfg = result["config"]
    raw = result["conditioners"]["raw_step_s"]["film"]
    assert len(raw) == cfg["repeats"] and all(len(r) == cfg["steps_per_repeat"] for r in raw)


def test_markdown_records_command_and_machine(tiny_run: tuple[Path, dict, str]) -> None:
    out, result, command = tiny_run
    markdown = (out / "overhead.md").read_text()
    assert command in markdown and result["resolved_command"] in markdown
    assert result["machine"]["torch"] in markdown and result["date"] in markdown


@pytest.mark.skipif(not _has("x_transformers"), reason="x-transformers (the bench extra) is not installed")
def test_x_transformers_rows_compare_equal_shapes(tiny_run: tuple[Path, dict, str]) -> None:
    _, result, _ = tiny_run
    rows = result["x_transformers"]["rows"]
    assert [r["norm"] for r in rows][0] == "layernorm"
    for r in rows:
        ours, theirs = r["params"]["ours"], r["params"]["x_transformers"]
        assert abs(ours - theirs) / theirs < 0.1  # same size up to biases
        assert r["tokens_per_s"]["ours"] > 0 and r["tokens_per_s"]["x_transformers"] > 0


def test_missing_x_transformers_names_the_bench_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "x_transformers", None)  # makes `import x_transformers` fail
    with pytest.raises(ImportError, match=r"lightning_film\[bench\]"):
        overhead.x_transformers_cases(overhead.BenchConfig(dim=16, heads=2))


def test_cli_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        overhead.parse_args(["--repeats", "0"])
    assert "--repeats" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        overhead.parse_args(["--dim", "10", "--heads", "4"])
    assert "--heads must divide --dim" in capsys.readouterr().err


def test_paired_tables_pairs_rows_by_seed(tmp_path: Path) -> None:
    from benchmarks.paired_tables import main as paired_tables

    def report(bpb: list[float], command: str) -> Path:
        runs = {f"byte/seed{s}": {"variant": "byte", "seed": s, "test": {"test/bpb": v}} for s, v in enumerate(bpb)}
        path = tmp_path / f"{command}.json"
        path.write_text(json.dumps({"command": command, "commit": "abc", "date": "d", "runs": runs}))
        return path

    paired_tables([str(report([2.0, 2.1, 2.2], "a")), str(report([1.9, 2.0, 2.1], "b")), "--out", str(tmp_path)])
    line = next(x for x in (tmp_path / "paired.md").read_text().splitlines() if x.startswith("| byte |"))
    assert "| 3 | 2.1000 | 2.0000 | -0.1000 |" in line and line.endswith("| established |")


def _peer_report(byte_bpb: list[float], peer_bpb: list[float], ratio: float) -> dict:
    from benchmarks import byte_peer

    def model(bpb: float, vs_peer: float) -> dict:
        return {"params": 10, "test_bpb": bpb, "tokens_per_s": 100.0, "tokens_per_s_vs_peer": [vs_peer] * 4}

    seeds = {
        str(s): {"models": {"byte": model(b, ratio), "nibble_acc": model(b, ratio), byte_peer.PEER: model(p, 1.0)}}
        for s, (b, p) in enumerate(zip(byte_bpb, peer_bpb))
    }
    machine = {"cpu": "cpu", "cpu_count": 2, "torch": "2", "torch_threads": 1, "litgpt": "0.5.13"}
    return {
        "command": "python -m benchmarks.byte_peer",
        "date": "today",
        "commit": ["abc"],
        "machine": machine,
        "load_average_at_start": [1.0, 1.0, 1.0],
        "load_average_at_end": None,
        "steps": 4,
        "seeds": seeds,
        "config": "configs/byte/byte.yaml",
        "sources": ["shakespeare"],
        "batch_size": 2,
        "seq_len": 8,
        "lr": 0.003,
    }


def test_byte_peer_says_whether_the_goal_is_met() -> None:
    from benchmarks import byte_peer

    worse_and_slower = byte_peer.render(_peer_report([2.5, 2.6, 2.55], [2.4, 2.5, 2.46], ratio=0.9))
    assert "bpb worse than litgpt's" in worse_and_slower and "speed goal is missed" in worse_and_slower
    assert "| ours, byte | 10 | 2.5500 ±" in worse_and_slower
    tied_and_faster = byte_peer.render(_peer_report([2.5, 2.6, 2.4], [2.6, 2.4, 2.5], ratio=1.2))
    assert "not established different from" in tied_and_faster and "1.200x litgpt's" in tied_and_faster
    assert "speed goal is met" in tied_and_faster
    assert "untested (one seed) against" in byte_peer.render(_peer_report([2.5], [2.4], ratio=1.0))
    check = {"max_abs_logit_diff": 5e-3, "max_abs_logit_diff_eps_matched": 2e-6, "max_abs_logit": 3.0, "ours_eps": 1e-6}
    same = byte_peer.render({**_peer_report([2.5], [2.4], ratio=1.0), "same_function": check})
    assert "peer's logits to 2.0e-06 with the peer's RMSNorm eps set to ours (1e-06)" in same
    assert "not from the architecture" in same
    apart = byte_peer.render(
        {**_peer_report([2.5], [2.4], ratio=1.0), "same_function": {**check, "max_abs_logit_diff_eps_matched": 0.3}}
    )
    assert "different networks" in apart and "not from the architecture" not in apart
    assert "seeds trained at commit abc;" in byte_peer.render(
        {**_peer_report([2.5], [2.4], ratio=1.0), "commit": "abc"}
    )


def test_byte_peer_renders_a_run_of_byte_alone_from_the_peers_start() -> None:
    from benchmarks import byte_peer

    report = _peer_report([2.5, 2.6, 2.55], [2.4, 2.5, 2.46], ratio=1.1)
    for seed in report["seeds"].values():
        del seed["models"]["nibble_acc"]
    text = byte_peer.render({**report, "variants": ["byte"], "start": "peer"})
    assert "Start: ours `byte` from the peer's initial weights" in text
    assert "nibble_acc" not in text and "| byte | 3 | +0.0967 |" in text
    assert "Start:" not in byte_peer.render(_peer_report([2.5], [2.4], ratio=1.0))  # older reports: own start


def test_byte_peer_draws_our_initial_weights_from_each_seed() -> None:
    """Each seed trains ours from its own draw, as the peer: until this test, every seed of ours started
    from seed 0's weights (build_variant re-seeded), so the paired table compared one draw of ours
    against five of the peer's."""
    from benchmarks import byte_peer
    from lightning_film.reproduce.byte import config_parts

    model_args, _ = config_parts(ROOT / "configs/byte/byte.yaml", [("model.net.dim", "16"), ("model.net.depth", "1")])

    def first(seed: int) -> torch.Tensor:
        return byte_peer.our_models(model_args, seed, 4, ("byte",))["byte"]["module"].net.head.weight

    assert torch.equal(first(3), first(3)) and not torch.equal(first(3), first(4))


def test_byte_peer_keeps_stored_seeds_only_for_the_same_resolved_arguments(tmp_path: Path) -> None:
    from benchmarks import byte_peer

    settings = {"config": "c.yaml", "steps": 4, "model_args": {"positions": "rotary"}}
    path = tmp_path / "byte_peer.json"
    path.write_text(json.dumps({**settings, "seeds": {"0": {"commit": "abc"}}}))
    assert byte_peer.resume(path, settings)["seeds"] == {"0": {"commit": "abc"}}
    # Same config path, edited content: the stored seed was trained with other arguments.
    edited = {**settings, "model_args": {"positions": "learned"}}
    assert byte_peer.resume(path, edited) == {**edited, "seeds": {}}


def test_compile_lines_give_the_break_even_step() -> None:
    from benchmarks.performance.report import _compile_lines

    rows = [{"model": "ours/rmsnorm", "ms": 100.0}, {"model": "ours/rmsnorm regional compiled", "ms": 90.0}]
    rows.append({"model": "ours/rmsnorm compiled", "ms": 101.0})
    compile_s = {"ours/rmsnorm regional compiled": 20.0, "ours/rmsnorm compiled": 40.0}
    lines = "".join(_compile_lines({"rows": rows, "compile_s": compile_s}))
    assert "took **20 s**" in lines and "earned back after **2,000 steps**" in lines  # 20 s / 10 ms
    assert "took **40 s**" in lines and "never earned back" in lines  # slower than eager
    assert "took **40 s**" in "".join(_compile_lines({"rows": rows, "compile_s": 40.0}))  # older results


def test_the_x_transformers_target_reads_the_shipped_default_in_both_precisions() -> None:
    from benchmarks.performance.report import _targets

    def step(ratios: dict[str, float]) -> dict:
        rows = [{"model": "ours/rmsnorm", "utilisation": 0.5}, {"model": "ours/rmsnorm bf16", "utilisation": 0.9}]
        vs = {k: {"median": v} for k, v in ratios.items()}
        return {"step": {"byte": {"ours_over_x_transformers": vs, "rows": rows, "peak": {"flops_per_s": 1e9}}}}

    def verdicts(res: dict) -> str:
        return "\n".join(str(row) for row in _targets(res))

    met = verdicts(step({"layernorm": 0.9, "rmsnorm": 1.2, "rmsnorm, both bf16 autocast": 1.1}))
    assert "**missed**" not in met.split("matmul peak")[0]  # layernorm is not the shipped default
    assert "50% (ours/rmsnorm)" in met  # the bf16 row is not a utilisation of the fp32 peak
    assert "**missed**" in verdicts(step({"rmsnorm": 1.2, "rmsnorm, both bf16 autocast": 0.99})).split("matmul")[0]
    assert "**missed**" in verdicts(step({"rmsnorm": 1.01})).split("matmul")[0]


def test_the_rmsnorm_target_reads_the_model_step_in_both_precisions() -> None:
    from benchmarks.performance.report import _targets

    def verdict(fp32: tuple[float, float], bf16: tuple[float, float]) -> str:
        ratios = {"fp32": fp32, "bf16 autocast": bf16}
        rms = {k: {"median": m, "q1": q1, "q3": m + 0.01} for k, (m, q1) in ratios.items()}
        step = {
            "ours_over_x_transformers": {"rmsnorm": {"median": 1.1}},
            "rows": [{"model": "ours/rmsnorm", "utilisation": 0.5}],
        }
        res = {"step": {"byte": {**step, "rmsnorm_over_layernorm": rms, "peak": {"flops_per_s": 1e9}}}}
        (row,) = [r for r in _targets(res) if "rmsnorm model step" in r]
        return row

    assert "| met |" in verdict((0.99, 0.97), (1.0, 0.98)) and "fp32: 0.990x" in verdict((0.99, 0.97), (1.0, 0.98))
    assert "**missed** (1 within the IQR)" in verdict((0.99, 0.97), (1.01, 0.99))  # bf16 decides: the worst
    assert verdict((0.99, 0.97), (1.05, 1.02)).endswith("**missed** |")


def test_byte_peer_names_the_cpus_when_seeds_come_from_two_machines() -> None:
    from benchmarks.byte_peer import _cpus

    assert _cpus({"0": {"cpu": "Intel"}, "1": {"cpu": "Intel"}}) == ""  # one machine: the Machine line says it
    assert _cpus({"0": {}, "1": {}, "5": {"cpu": "Intel"}}) == "; seeds by CPU: not recorded [0, 1], Intel [5]"
