"""The benchmark's arithmetic: MFU, alternation, pooling, data-wait share, table, options;
and the --path deepy pieces: generated config, random corpus, metrics.jsonl parsing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "tools"))

import benchmark  # noqa: E402
import benchmark_deepy  # noqa: E402


def test_mfu_is_achieved_over_peak() -> None:
    # 6e12 FLOPs in 3 s is 2e12 FLOP/s; over a 4e12 peak that is one half.
    assert benchmark.model_flops_utilisation(6e12, 3.0, 4e12) == pytest.approx(0.5)


def test_alternation_starts_each_side_first_equally_often() -> None:
    assert benchmark.alternation(3) == ["ours", "hf", "hf", "ours", "ours", "hf"]
    assert benchmark.alternation(0) == []


def test_alternation_of_three_sides_rotates() -> None:
    sides = benchmark.SIDES["deepy"]
    assert sides == ("ours-1p", "ours-2p", "hf")
    order = benchmark.alternation(4, sides)
    assert order == ["ours-1p", "ours-2p", "hf", "ours-2p", "hf", "ours-1p",
                     "hf", "ours-1p", "ours-2p", "ours-1p", "ours-2p", "hf"]
    firsts = [order[i] for i in range(0, 9, 3)]
    assert sorted(firsts) == sorted(sides)  # over 3 rounds each side leads once
    assert all(order.count(s) == 4 for s in sides)


def test_merge_pools_steps_and_keeps_largest_rss() -> None:
    a = benchmark.Measurement("ours", [1.0, 3.0], [0.1, 0.1], 100.0, 5.0, [2.0, 6.0])
    b = benchmark.Measurement("ours", [2.0], [0.4], 250.0, 7.0, [3.0])
    pooled = benchmark.merge([a, b])
    assert pooled.step_s == [1.0, 3.0, 2.0]
    assert pooled.median_step_s == 2.0
    assert pooled.peak_rss_mb == 250.0
    assert pooled.process_rss_mb is None and pooled.largest_process_rss_mb == 250.0
    two = [benchmark.Measurement("ours-2p", [1.0], [0.0], 900.0, None, [], process_rss_mb=rss)
           for rss in (480.0, 520.0)]
    assert benchmark.merge(two).largest_process_rss_mb == 520.0
    assert pooled.setup_s == 6.0
    assert pooled.median_cpu_s == 3.0
    assert pooled.data_fraction == pytest.approx(0.6 / 6.0)


def test_row_and_ratio_table() -> None:
    m = benchmark.Measurement("hf", [2.0, 4.0, 3.0], [0.0, 0.3, 0.0], 800.0, 1.0,
                              [4.0, 8.0, 8.0])
    r = benchmark.row("19M", "fp32", m, tokens=4096, flops=9e11, peak=1e12)
    assert r["tokens_per_s"] == pytest.approx(4096 / 3.0)
    assert r["mfu"] == pytest.approx(0.3)
    assert r["tokens_per_cpu_s"] == pytest.approx(4096 / 8.0)
    assert r["data_wait"] == pytest.approx(0.3 / 9.0)
    ratio = {"config": "19M", "precision": "fp32", "side": "ours/hf", "tokens_per_s": 1.5,
             "tokens_per_cpu_s": 1.25, "peak_rss_mb": 0.5, "peak_tflops": 0.1}
    text = benchmark.format_table([r, ratio])
    assert "1365" in text and "30.0%" in text and " 512 " in text
    assert "1.50x" in text and "1.25x" in text and "0.50x" in text and "100.0 GFLOP/s" in text


def test_each_round_has_its_own_ratio_and_the_table_shows_their_range() -> None:
    def run(side: str, steps: list[float]) -> benchmark.Measurement:
        return benchmark.Measurement(side, steps, [0.0] * len(steps), 1.0, None, [])

    ours = [run("ours", [2.0, 2.2, 1.8]), run("ours", [3.0, 3.0])]
    hf = [run("hf", [3.0, 3.0]), run("hf", [4.5, 3.3, 3.9])]
    assert benchmark.round_ratios(ours, hf) == pytest.approx([1.5, 1.3])
    ratio = {"config": "19M", "precision": "fp32", "side": "ours/hf", "tokens_per_s": 1.4,
             "tokens_per_cpu_s": None, "peak_rss_mb": 0.5, "peak_tflops": 0.1,
             "rounds": [1.5, 1.3]}
    assert "rounds 1.30-1.50x" in benchmark.format_table([ratio])
    assert "rounds" not in benchmark.format_table([{**ratio, "rounds": [1.5]}])
    with pytest.raises(ValueError):  # a side short of a round is a bug, not a shorter list
        benchmark.round_ratios(ours, hf[:1])


def test_setup_and_cpu_may_be_missing_in_rows_and_table() -> None:
    m = benchmark.Measurement("ours-2p", [2.0], [0.02], 900.0, None, [], process_rss_mb=500.0)
    assert m.median_cpu_s is None
    assert benchmark.merge([m, m]).setup_s is None
    r = benchmark.row("19M", "fp32", m, tokens=4096, flops=9e11, peak=1e12)
    hf = benchmark.row("19M", "fp32", benchmark.Measurement("hf", [4.0], [0.0], 450.0, 3.0,
                                                             [8.0]), 4096, 9e11, 1e12)
    ratio = benchmark.ratio(r, hf, 1e12)
    assert ratio["side"] == "ours-2p/hf" and ratio["tokens_per_cpu_s"] is None
    assert ratio["tokens_per_s"] == pytest.approx(2.0) and ratio["peak_rss_mb"] == 2.0
    assert ratio["process_rss_mb"] == pytest.approx(500.0 / 450.0)  # largest rank vs HF's one
    lines = benchmark.format_table([r, hf, ratio]).splitlines()
    assert lines[2].split()[-1] == "-" and lines[2].split()[6] == "-"  # setup, tok/cpu-s
    assert lines[2].split()[7:9] == ["900", "500"] and lines[3].split()[7:9] == ["450", "450"]
    assert "2.00x" in lines[4] and "1.11x" in lines[4] and "ours-2p/hf" in lines[4]


def test_a_cut_off_side_is_a_bound_in_rows_ratios_and_table() -> None:
    ours = benchmark.Measurement("ours", [10.0], [0.0], 2000.0, 4.0, [20.0])
    cut = benchmark.Measurement("hf", [300.0], [0.0], 1200.0, 5.0, [590.0], truncated=True)
    assert benchmark.merge([benchmark.Measurement("hf", [1.0], [0.0], 1.0, 1.0, [1.0]),
                            cut]).truncated
    rows = [benchmark.row("19M", "bf16", m, tokens=4096, flops=9e11, peak=1e12)
            for m in (ours, cut)]
    assert [r["truncated"] for r in rows] == [False, True]
    ratio = benchmark.ratio(rows[0], rows[1], 1e12)
    assert ratio["at_least"] and ratio["tokens_per_s"] == pytest.approx(30.0)
    assert ratio["peak_rss_mb"] is None  # the cut-off side never reached its peak
    lines = benchmark.format_table([*rows, ratio]).splitlines()
    assert ">300.00" in lines[3] and ">" not in lines[2]
    assert ">=" in lines[4] and "30.00x" in lines[4]


def test_step_limit_reports_the_unfinished_step_and_exits() -> None:
    import subprocess

    tools = str(Path(benchmark.__file__).parent)
    code = (f"import sys, time; sys.path.insert(0, {tools!r}); import benchmark\n"
            "with benchmark.StepLimit(0.5, {'side': 'hf', 'setup_s': 1.0}, time.perf_counter(),"
            " time.process_time()):\n    time.sleep(30)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=20, check=True).stdout
    report = json.loads(out.split(benchmark.RESULT_TAG)[1])
    assert report["truncated"] is True and report["side"] == "hf"
    assert 0.5 <= report["step_s"][0] < 10.0


def test_random_batches_are_shifted_tokens() -> None:
    (tokens, pos), (labels, mask) = next(benchmark.random_batches(2, 5, 7))
    assert tokens.shape == labels.shape == pos.shape == mask.shape == (2, 5)
    assert (tokens[:, 1:] == labels[:, :-1]).all()
    assert int(tokens.max()) < 7 and pos[1].tolist() == [0, 1, 2, 3, 4]


def test_quick_defaults_and_explicit_steps() -> None:
    quick = benchmark.parse_args(["--quick"])
    assert (quick.steps, quick.warmup, quick.repeats) == (2, 1, 1)
    assert benchmark.parse_args(["--quick", "--steps", "5"]).steps == 5


def test_path_option() -> None:
    assert benchmark.parse_args([]).path == "engine"
    assert benchmark.parse_args(["--path", "deepy"]).path == "deepy"
    with pytest.raises(SystemExit):
        benchmark.parse_args(["--path", "deepy", "--no-fused-loss"])


def test_unknown_config_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert benchmark.main(["--configs", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_bench_configs_have_the_requested_shapes() -> None:
    from megatron.model import ModelSpec

    for name, seq, micro in (("19M", 1024, 4), ("pythia-70m", 2048, 2)):
        args = benchmark.load_args(name, "bf16")
        spec = ModelSpec.from_args(args)
        assert (spec.num_layers, spec.hidden_size, spec.num_attention_heads) == (6, 512, 8)
        assert (spec.seq_length, args.train_micro_batch_size_per_gpu) == (seq, micro)
        assert spec.padded_vocab_size == 50304 and spec.rotary_dims == 16  # 0.25 of 64
        assert spec.gpt_j_residual and not spec.tie_word_embeddings
        assert args.precision == "bf16"


@pytest.mark.parametrize(("micro", "accum", "procs", "split"), [
    (4, 1, 1, (4, 1)), (4, 1, 2, (2, 1)), (2, 1, 2, (1, 1)), (3, 2, 2, (3, 1)),
])
def test_split_batch_keeps_the_global_batch(micro: int, accum: int, procs: int,
                                            split: tuple[int, int]) -> None:
    assert benchmark_deepy.split_batch(micro, accum, procs) == split


def test_split_batch_refuses_what_cannot_be_split() -> None:
    with pytest.raises(ValueError, match="micro 3 x accumulation 1 over 2"):
        benchmark_deepy.split_batch(3, 1, 2)


def test_run_config_halves_the_micro_batch_for_two_processes(tmp_path: Path) -> None:
    bench = yaml.safe_load((benchmark.CONFIG_DIR / "19M.yml").read_text())
    configs = {procs: benchmark_deepy.run_config(
        bench, processes=procs, precision="bf16", iterations=3, data_prefix="/d/random",
        workdir=tmp_path, port=1234) for procs in (1, 2)}
    assert configs[1]["train_micro_batch_size_per_gpu"] == 4
    assert configs[2]["train_micro_batch_size_per_gpu"] == 2
    for procs, config in configs.items():
        assert config["num_gpus"] == procs and config["gradient_accumulation_steps"] == 1
        assert (config["train_iters"], config["log_interval"], config["eval_iters"]) == (3, 1, 0)
        assert config["data_path"] == "/d/random" and config["precision"] == "bf16"
        assert config["log_dir"] == str(tmp_path / "logs")
        assert "save" not in config and "load" not in config
        assert config["hidden_size"] == 512 and config["distributed_backend"] == "gloo"


def test_write_run_config_loads_with_the_same_global_batch(tmp_path: Path) -> None:
    from megatron.data.indexed_dataset import MMapIndexedDataset
    from megatron.neox_arguments import NeoXArgs

    batches = set()
    for procs in (1, 2):
        path = benchmark_deepy.write_run(benchmark.CONFIG_DIR / "pythia-70m.yml",
                                         tmp_path / f"{procs}p", processes=procs,
                                         precision="fp32", iterations=3)
        args = NeoXArgs.from_ymls([str(path)])
        assert args.global_num_gpus == procs
        assert args.train_micro_batch_size_per_gpu == 2 // procs
        batches.add(args.train_batch_size)
        corpus = MMapIndexedDataset(args.data_path)
        tokens = np.concatenate([corpus[i] for i in range(len(corpus))])
        assert tokens.size >= 3 * 2 * 2049 and int(tokens.max()) < 50257
    assert batches == {2}


def _record(iteration: int, seconds: float, wait: float, rss: float) -> dict:
    return {"iteration": iteration, "lm_loss": 10.0, "iteration_time": seconds,
            "data_wait_fraction": wait, "peak_rss_mb": rss / 2, "peak_rss_mb_all_ranks": rss,
            "peak_rss_mb_max_rank": rss * 0.6,
            "elapsed_seconds": seconds * iteration}


def test_measurement_from_metrics_records_skips_warmup() -> None:
    records = [_record(1, 9.0, 0.5, 800.0), _record(2, 2.0, 0.01, 900.0),
               _record(3, 3.0, 0.02, 950.0), {"iteration": 3, "validation/lm_loss": 1.0}]
    fields = benchmark_deepy.measurement("ours-2p", records, warmup=1, setup_s=12.5)
    m = benchmark.Measurement(**fields)
    assert m.step_s == [2.0, 3.0] and m.median_step_s == 2.5
    assert m.data_s == pytest.approx([0.02, 0.06])
    assert m.data_fraction == pytest.approx(0.08 / 5.0)
    assert m.peak_rss_mb == 950.0 and m.setup_s == 12.5 and m.cpu_s == []
    assert m.largest_process_rss_mb == 570.0  # the largest rank's, not the sum
    with pytest.raises(ValueError, match="warm-up"):
        benchmark_deepy.measurement("ours-1p", records[:1], warmup=1, setup_s=None)


def test_read_records_ignores_a_line_being_written(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    assert benchmark_deepy.read_records(path) == []
    path.write_text(json.dumps(_record(1, 1.0, 0.0, 1.0)) + "\n" + '{"iteration": 2, "lm')
    assert [r["iteration"] for r in benchmark_deepy.read_records(path)] == [1]


def test_a_failed_exit_after_the_last_logged_step_keeps_the_measurement() -> None:
    done = [{"iteration": 1, "iteration_time": 2.0}, {"iteration": 2, "iteration_time": 2.1}]
    assert benchmark_deepy.ran_to_the_end(done, 2)
    assert not benchmark_deepy.ran_to_the_end(done, 3)  # died before its last step
    assert not benchmark_deepy.ran_to_the_end(done[:1] + [{"iteration": 2}], 2)  # untimed
    assert not benchmark_deepy.ran_to_the_end(done, None)


def test_launch_env_sets_the_threads_of_every_worker() -> None:
    env = benchmark_deepy.launch_env(1)
    assert env["OMP_NUM_THREADS"] == "1"
    assert env["PYTHONPATH"] == str(benchmark_deepy.ROOT)
    assert env["PATH"].startswith(str(Path(sys.executable).parent))


def test_gpu_memory_is_pooled_as_a_maximum_and_becomes_a_ratio_and_a_column() -> None:
    a = benchmark.Measurement("ours", [1.0], [0.0], 100.0, 5.0, [], peak_gpu_mb=3000.0)
    b = benchmark.Measurement("ours", [1.0], [0.0], 100.0, 5.0, [], peak_gpu_mb=5000.0)
    assert benchmark.merge([a, b]).peak_gpu_mb == 5000.0
    cpu_only = benchmark.Measurement("ours", [1.0], [0.0], 100.0, 5.0, [])
    assert benchmark.merge([cpu_only, cpu_only]).peak_gpu_mb is None
    ours = benchmark.row("125M", "bf16", benchmark.merge([a, b]), 4096, 9e11, 1e12)
    hf = benchmark.row("125M", "bf16", benchmark.Measurement(
        "hf", [2.0], [0.0], 100.0, 5.0, [], peak_gpu_mb=10000.0), 4096, 9e11, 1e12)
    ratio = benchmark.ratio(ours, hf, 1e12)
    assert ratio["peak_gpu_mb"] == pytest.approx(0.5)
    lines = benchmark.format_table([ours, hf, ratio]).splitlines()
    assert lines[0].split()[-2:] == ["GPU", "MB"]
    assert lines[2].split()[-1] == "5000" and lines[3].split()[-1] == "10000"
    assert "0.50x" in lines[4]


def test_set_overrides_are_read_as_yaml_and_reach_the_config() -> None:
    values = benchmark.parse_overrides(["zero-optimization={stage: 1}", "num_layers=2",
                                        "data_types={grad_accum_dtype: fp32}"])
    assert values == {"zero_optimization": {"stage": 1}, "num_layers": 2,
                      "data_types": {"grad_accum_dtype": "fp32"}}
    with pytest.raises(ValueError, match="KEY=VALUE"):
        benchmark.parse_overrides(["num_layers"])
    args = benchmark.load_args("125M", "bf16", ["num_layers=2", "zero_optimization={stage: 2}"])
    assert args.num_layers == 2 and args.precision == "bf16"
    assert args.deepspeed_config["zero_optimization"]["stage"] == 2
    # the bench file's own keys stay: fp32 gradient accumulation (DeepSpeed's BF16 optimizer)
    assert args.deepspeed_config["data_types"] == {"grad_accum_dtype": "fp32"}


def test_device_auto_is_the_cpu_here_and_an_explicit_choice_is_kept() -> None:
    import torch

    assert benchmark.resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert benchmark.resolve_device("cpu") == "cpu"
    assert benchmark.resolve_device("cuda") == "cuda"


def test_default_configs_and_precisions_follow_the_device() -> None:
    cpu = benchmark.parse_args(["--device", "cpu"])
    assert (cpu.configs, cpu.precisions) == (["19M", "pythia-70m"], ["fp32", "bf16"])
    gpu = benchmark.parse_args(["--device", "cuda"])
    assert (gpu.configs, gpu.precisions) == (["125M", "1-3B"], ["bf16"])
    chosen = benchmark.parse_args(["--device", "cuda", "--configs", "19M", "--precisions",
                                   "fp32"])
    assert (chosen.configs, chosen.precisions) == (["19M"], ["fp32"])
    for name in ("19M", "pythia-70m", "125M", "1-3B"):
        assert (benchmark.CONFIG_DIR / f"{name}.yml").is_file()


def test_compare_takes_the_higher_of_two_peak_probes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The peak is probed before and after the sides run; a slow spell during one probe
    must not turn into MFU above 100%."""
    probes = iter([1e12, 3e12])
    monkeypatch.setattr(benchmark, "peak_flops", lambda *args: next(probes))
    monkeypatch.setattr(benchmark, "flops_and_tokens", lambda config, sets: (9e11, 4096))
    monkeypatch.setattr(benchmark, "measure", lambda side, *args: benchmark.Measurement(
        side, [3.0], [0.0], 800.0, 1.0, [6.0]))
    opts = benchmark.parse_args(["--path", "engine", "--repeats", "1"])
    rows = benchmark.compare("19M", "fp32", opts)
    assert {r["peak_tflops"] for r in rows if "peak_tflops" in r} == {3.0}
    assert rows[0]["mfu"] == pytest.approx(9e11 / 3.0 / 3e12)
