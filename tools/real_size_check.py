"""chatglm3-6b or glm-4-9b-chat end to end at its published shapes, on this machine's CPU.

    .venv/bin/python tools/real_size_check.py chatglm3-6b [--work /work/scratch/real_size] [--layers N] [--keep]

With the model's own config (configs/chatglm3_6b_lora.yaml, configs/glm4_9b_lora.yaml) and only
the overrides a CPU run needs (CPU_OVERRIDES: the accelerator, a short rollout of few prompts,
one solver worker, the merged sampling copy off so that one copy of the weights is in memory),
each phase in a process of its own:

  layout   the published checkpoint directory with seeded random weights (app/models/layouts.py)
  load     load_model on it, as `train` does: the shards streamed into the model
  train    2 PPO steps with the production Trainer (LoRA, reference = adapter off, value head,
           gradient checkpointing), a checkpoint after each; the resident tensors against the memory model
  resume   a second run from the first checkpoint to step 2: trainable weights and optimizer state
           must equal the uninterrupted run's bit for bit
  export   `solver-ppo export` of the trained adapter (bf16, 2 GB shards)
  compare  the exported directory's logits against the trained policy's: bit for bit against the
           policy with its adapter merged as export merges it, and the largest difference from the
           training process's own (adapter unmerged, so bf16 rounds differently)

It prints a table (peak RSS and seconds per phase, checkpoint and export sizes) and last one JSON
line. A phase whose memory the model predicts will not fit the memory available is not started
(the table says how much it needs); a phase that brings the machine under 1 GiB available is
stopped. `--layers N` keeps the published widths with N layers (a quick run of the same code).
The big directories are deleted at the end unless --keep; --reuse-layout starts from a layout
already in the working directory (the layout phase is then not run).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CONFIGS = {"chatglm3-6b": "configs/chatglm3_6b_lora.yaml", "glm-4-9b-chat": "configs/glm4_9b_lora.yaml"}
CPU_OVERRIDES = {
    "trainer.accelerator": "cpu",
    "trainer.devices": 1,
    "trainer.max_steps": 2,
    "trainer.checkpoint_every": 1,
    "trainer.enable_progress_bar": False,
    "trainer.sample_log_every": 0,
    "sampling.max_new_tokens": 8,
    "ppo.prompts_per_step": 1,  # x the config's 2 samples: 2 rollouts
    "data.system_prompt": "",  # short prompts: the rollout's length is the CPU's cost
    "data.instruction": "",
    "data.shuffle_buffer": 0,
    "evaluation.workers": 1,
    "model.lora.merge_for_sampling": False,  # the merged copy is another 11 GB (chatglm3-6b)
}
# On a GPU (`--device gpu`, tools/gpu_check.sh): the config's own settings, 2 steps of 256 new tokens
GPU_OVERRIDES = {
    "trainer.max_steps": 2,
    "trainer.checkpoint_every": 1,
    "trainer.enable_progress_bar": False,
    "trainer.sample_log_every": 0,
    "sampling.max_new_tokens": 256,
    "data.shuffle_buffer": 0,
    "evaluation.workers": 4,
}
PHASES = ("layout", "load", "train", "resume", "export", "compare")
MIN_AVAILABLE = 1 << 30  # a phase that leaves the machine less than this is stopped
GiB = 1 << 30


# ----------------------------------------------------------------------------- helpers (no torch)


def available_bytes() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no MemAvailable in /proc/meminfo")


def peak_rss_bytes() -> int:
    """This process's peak resident set (VmHWM)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def dir_bytes(path: Path, pattern: str = "*") -> int:
    return sum(p.stat().st_size for p in path.rglob(pattern) if p.is_file())


def paths(work: Path) -> dict[str, Path]:
    return {"layout": work / "layout", "logs": work / "logs", "export": work / "export", "data": work / "train.jsonl",
            "results": work / "results"}  # fmt: skip


def train_config(model: str, work: Path, layers: int | None, **extra):
    from solver_ppo.config import load_config

    p = paths(work)
    device_overrides = GPU_OVERRIDES if os.environ.get("REAL_SIZE_DEVICE") == "gpu" else CPU_OVERRIDES
    overrides = device_overrides | {"model.path": p["layout"], "data.train": p["data"], "trainer.root_dir": p["logs"]}
    cfg = load_config(ROOT / CONFIGS[model], [f"{k}={v}" for k, v in (overrides | extra).items()])
    return cfg


def model_config(model: str, layers: int | None) -> dict:
    from solver_ppo.models.layouts import layout_for

    return layout_for(model).config | ({"num_layers": layers} if layers else {})


def predicted_need(model: str, phase: str, layers: int | None) -> int:
    """Bytes a phase needs by the memory model, on top of ~1.5 GB of Python, torch and Lightning."""
    from solver_ppo.models.layouts import checkpoint_bytes
    from solver_ppo.models.memory import ModelShape, StepSettings, estimate

    config = model_config(model, layers)
    overhead = int(1.5e9)
    if phase == "layout":
        return overhead + checkpoint_bytes(config) // 5  # one shard and its fp32 draws
    shape = ModelShape.from_config(config)
    rows = CPU_OVERRIDES["ppo.prompts_per_step"] * 2  # the configs' 2 samples per prompt
    settings = StepSettings(rows=rows, prompt_tokens=256, response_tokens=CPU_OVERRIDES["sampling.max_new_tokens"],
                            minibatch=4, merge_for_sampling=False)  # fmt: skip
    e = estimate(shape, settings)
    if phase == "load":
        return overhead + e.resident["base weights"]
    return overhead + e.peak  # train, resume, export and compare hold one model and small activations


# ----------------------------------------------------------------------------- phases (each in its own process)


def phase_layout(model: str, work: Path, layers: int | None) -> dict:
    from solver_ppo.data.synthetic import generate
    from solver_ppo.models.layouts import write_published_layout

    p = paths(work)
    with open(p["data"], "w") as f:
        for item in generate(64, seed=0):
            f.write(json.dumps(item.to_json()) + "\n")
    write_published_layout(p["layout"], model, overrides={"num_layers": layers} if layers else None,
                           progress=lambda line: print(f"  {line}", flush=True))  # fmt: skip
    return {"layout_gb": dir_bytes(p["layout"]) / 1e9}


def phase_load(model: str, work: Path, layers: int | None) -> dict:
    from solver_ppo.models.loading import load_model

    cfg = train_config(model, work, layers)
    loaded = load_model(cfg.model)
    n_bytes = sum(t.nbytes for t in loaded.model.state_dict().values())
    return {"model_gb": n_bytes / 1e9}


def measured_resident_bytes(module, optimizer) -> int:
    """Distinct storages of the policy's weights and buffers and of AdamW's moments."""
    storages = {}
    tensors = list(module.policy.parameters()) + list(module.policy.buffers())
    tensors += [v for state in optimizer.state.values() for k, v in state.items() if k != "step"]
    for t in tensors:
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(storages.values())


def phase_train(model: str, work: Path, layers: int | None) -> dict:
    import torch

    from solver_ppo.models.memory import ModelShape, StepSettings, estimate
    from solver_ppo.ppo.train import train

    cfg = train_config(model, work, layers)
    module, trainer = train(cfg)
    measured = measured_resident_bytes(module, trainer.optimizers[0])
    ppo, rollout = cfg.ppo, module.last_rollout
    settings = StepSettings(rows=ppo.prompts_per_step * ppo.samples_per_prompt, prompt_tokens=rollout.prompt_length,
                            response_tokens=cfg.sampling.max_new_tokens, minibatch=ppo.minibatch_size,
                            lora_r=cfg.model.lora.r, merge_for_sampling=cfg.model.lora.merge_for_sampling)  # fmt: skip
    e = estimate(ModelShape.from_config(model_config(model, layers)), settings)
    formula = e.resident_without_gradients()
    gpu = {}
    if torch.cuda.is_available() and cfg.trainer.accelerator in ("gpu", "cuda", "auto"):
        peak = torch.cuda.max_memory_allocated()
        gpu = {"gpu": torch.cuda.get_device_name(), "gpu_peak_allocated_gb": peak / 1e9,
               "gpu_formula_peak_gb": e.peak / 1e9, "gpu_formula_peak_phase": e.peak_phase,
               "gpu_memory_formula_error": abs(e.peak - peak) / peak}  # fmt: skip
    ids = module.chat.encode_prompt(module.tokenizer, module._messages(module.last_rollout.problems[0]))
    policy = module.policy.eval()
    with torch.no_grad():
        logits = policy.causal_lm(input_ids=torch.tensor([ids])).logits.float()
    out = paths(work)["results"]
    torch.save({"ids": ids, "logits": logits}, out / "policy_logits.pt")
    run = Path(trainer.log_dir)
    timings = {k: round(float(v), 1) for k, v in trainer.callback_metrics.items() if k.startswith("time/")}
    return gpu | {"run": str(run), "iteration": module.iteration, "last_step_seconds": timings,
                  "measured_resident_gb": measured / 1e9, "formula_resident_gb": formula / 1e9,
                  "memory_formula_error": abs(formula - measured) / measured,
                  "checkpoint_mb": (run / "checkpoints" / "iter-000001.ckpt").stat().st_size / 1e6}  # fmt: skip


def phase_resume(model: str, work: Path, layers: int | None, first_run: str) -> dict:
    import torch

    from solver_ppo.ppo.train import train

    first = Path(first_run)
    cfg = train_config(model, work, layers, resume=first / "checkpoints" / "iter-000001.ckpt")
    _, trainer = train(cfg)
    second = Path(trainer.log_dir)
    a = torch.load(first / "trainable.pt", weights_only=True)["state_dict"]
    b = torch.load(second / "trainable.pt", weights_only=True)["state_dict"]
    weights_equal = a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ca = torch.load(first / "checkpoints" / "iter-000002.ckpt", weights_only=False)["optimizer_states"][0]["state"]
    cb = torch.load(second / "checkpoints" / "iter-000002.ckpt", weights_only=False)["optimizer_states"][0]["state"]
    optimizer_equal = ca.keys() == cb.keys() and all(
        torch.equal(ca[i][k], cb[i][k]) for i in ca for k in ca[i])  # fmt: skip
    changed = sum(int(not torch.equal(v, torch.zeros_like(v))) for k, v in a.items() if "lora_B" in k)
    return {"run": str(second), "resume_identical": weights_equal and optimizer_equal, "weights_equal": weights_equal,
            "optimizer_equal": optimizer_equal, "lora_B_moved": changed}  # fmt: skip


def phase_export(model: str, work: Path, layers: int | None, first_run: str) -> dict:
    from solver_ppo.cli import main

    p = paths(work)
    code = main(["export", "--model", str(p["layout"]), "--adapter", first_run, "--out", str(p["export"]),
                 "--dtype", "bfloat16", "--max-shard-size", "2GB"])  # fmt: skip
    if code != 0:
        raise RuntimeError(f"export exited with {code}")
    return {"export_gb": dir_bytes(p["export"], "*.safetensors") / 1e9}


def phase_compare(model: str, work: Path, layers: int | None, first_run: str) -> dict:
    import gc

    import torch

    from solver_ppo.models.export import merged_model
    from solver_ppo.models.loading import load_model
    from solver_ppo.models.policy import build_policy

    p = paths(work)
    saved = torch.load(p["results"] / "policy_logits.pt", weights_only=True)
    ids = torch.tensor([saved["ids"]])
    cfg = train_config(model, work, layers)
    policy = build_policy(load_model(cfg.model), cfg.model)
    policy.load_trainable(Path(first_run) / "trainable.pt")
    with torch.no_grad():
        merged = merged_model(policy.eval())(input_ids=ids).logits.float()  # as export merges it
    del policy
    gc.collect()
    cfg.model.path = str(p["export"])
    exported = load_model(cfg.model).model
    with torch.no_grad():
        logits = exported(input_ids=ids).logits.float()
    trained = saved["logits"]  # the policy in the training process: adapter applied unmerged, bf16
    return {"export_logits_equal": bool(torch.equal(logits, merged)),
            "max_diff_to_training": float((logits - trained).abs().max()), "logit_scale": float(trained.abs().max())}


# ----------------------------------------------------------------------------- orchestration


def run_phase(args, phase: str, extra: list[str]) -> dict:
    """Run one phase in a child process, stop it if the machine runs short of memory."""
    work = Path(args.work)
    result_file = paths(work)["results"] / f"{phase}.json"
    result_file.unlink(missing_ok=True)
    command = [sys.executable, __file__, args.model, "--work", str(work), "--device", args.device, "--phase", phase,
               *extra]
    if args.layers:
        command += ["--layers", str(args.layers)]
    start, lowest = time.perf_counter(), available_bytes()
    child = subprocess.Popen(command, start_new_session=True, env=os.environ | {"PYTHONPATH": str(ROOT)})
    stopped = None
    while child.poll() is None:
        time.sleep(0.5)
        lowest = min(lowest, available_bytes())
        if lowest < MIN_AVAILABLE and stopped is None:
            stopped = f"stopped: the machine had {lowest / GiB:.2f} GiB available"
            os.killpg(child.pid, signal.SIGKILL)
    seconds = time.perf_counter() - start
    result = json.loads(result_file.read_text()) if result_file.is_file() else {}
    result |= {"seconds": seconds, "lowest_available_gib": lowest / GiB}
    if stopped or child.returncode != 0:
        result["error"] = stopped or result.get("error") or f"exit code {child.returncode}"
    return result


def child_main(args) -> int:
    work = Path(args.work)
    phase = args.phase
    fn = globals()[f"phase_{phase}"]
    extra = [args.first_run] if phase in ("resume", "export", "compare") else []
    try:
        result = fn(args.model, work, args.layers, *extra)
    except Exception as err:  # reported in the table, with the phase that failed
        result = {"error": f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"}
        import traceback

        traceback.print_exc()
    result["peak_rss_gb"] = peak_rss_bytes() / 1e9
    (paths(work)["results"] / f"{phase}.json").write_text(json.dumps(result))
    return 0 if "error" not in result else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", choices=sorted(CONFIGS))
    parser.add_argument("--work", default=None, help="working directory (default /work/scratch/real_size/MODEL)")
    parser.add_argument("--layers", type=int, default=None, help="published widths, this many layers")
    parser.add_argument("--keep", action="store_true", help="keep the layout, logs and export")
    parser.add_argument("--reuse-layout", action="store_true",
                        help="use the layout a --keep run (or a stopped one) left in the working directory")
    parser.add_argument("--device", choices=["cpu", "gpu"], default="cpu",
                        help="cpu: CPU_OVERRIDES; gpu: the config's accelerator, GPU_OVERRIDES (tools/gpu_check.sh)")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--first-run", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.work = str(Path(args.work or f"/work/scratch/real_size/{args.model}").resolve())
    os.environ["REAL_SIZE_DEVICE"] = args.device  # read by train_config in every phase's process
    if args.phase:
        return child_main(args)

    work = Path(args.work)
    p = paths(work)
    reuse = args.reuse_layout and (p["layout"] / "config.json").is_file() and p["data"].is_file()
    for key in ("logs", "export", "results") if reuse else ():
        shutil.rmtree(p[key], ignore_errors=True)
    if work.exists() and not reuse:
        shutil.rmtree(work)
    p["results"].mkdir(parents=True)
    results: dict[str, dict] = {}
    first_run = None
    for phase in PHASES[1:] if reuse else PHASES:
        need, have = predicted_need(args.model, phase, args.layers), available_bytes()
        if need > have:
            results[phase] = {"error": f"not started: needs {need / GiB:.1f} GiB by the memory model, "
                                       f"{have / GiB:.1f} GiB available"}  # fmt: skip
            break
        print(f"== {phase} (memory model: {need / GiB:.1f} GiB; available {have / GiB:.1f} GiB)", flush=True)
        extra = ["--first-run", first_run] if first_run else []
        results[phase] = run_phase(args, phase, extra)
        print(f"   {json.dumps(results[phase])}", flush=True)
        if "error" in results[phase]:
            break
        if phase == "train":
            first_run = results[phase]["run"]

    name = f"{args.model} ({args.layers} layers)" if args.layers else args.model
    print(f"\n{name}: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    print("| phase | peak RSS GB | seconds | lowest available GiB | notes |")
    print("|---|---|---|---|---|")
    notes = {
        "layout": lambda r: f"{r.get('layout_gb', 0):.2f} GB on disk",
        "load": lambda r: f"model {r.get('model_gb', 0):.2f} GB",
        "train": lambda r: (f"checkpoint {r.get('checkpoint_mb', 0):.0f} MB; resident tensors "
                            f"{r.get('measured_resident_gb', 0):.3f} GB, memory model {r.get('formula_resident_gb', 0):.3f} GB"),
        "resume": lambda r: f"weights equal {r.get('weights_equal')}, optimizer equal {r.get('optimizer_equal')}",
        "export": lambda r: f"{r.get('export_gb', 0):.2f} GB exported",
        "compare": lambda r: (f"equal to the merged policy: {r.get('export_logits_equal')}; largest difference from "
                              f"the training process: {r.get('max_diff_to_training', float('nan')):.3g} "
                              f"(logits up to {r.get('logit_scale', float('nan')):.3g})"),
    }  # fmt: skip
    for phase, r in results.items():
        note = r["error"] if "error" in r else notes[phase](r)
        print(f"| {phase} | {r.get('peak_rss_gb', float('nan')):.2f} | {r.get('seconds', 0):.0f} | "
              f"{r.get('lowest_available_gib', float('nan')):.1f} | {note} |")
    completed = len(results) == len(PHASES) - reuse and not any("error" in r for r in results.values())
    summary = {
        "model": args.model if not args.layers else f"{args.model}[{args.layers} layers]",
        "completed": completed,
        "peak_rss_gb": round(max((r.get("peak_rss_gb", 0) for r in results.values()), default=0), 2),
        "resume_identical": results.get("resume", {}).get("resume_identical"),
        "export_logits_equal": results.get("compare", {}).get("export_logits_equal"),
        "memory_formula_error": results.get("train", {}).get("memory_formula_error"),
    }
    if "gpu" in results.get("train", {}):
        summary |= {k: v for k, v in results["train"].items() if k.startswith("gpu")}
    if not args.keep:
        for key in ("layout", "export", "logs"):
            shutil.rmtree(paths(work)[key], ignore_errors=True)
    print(json.dumps(summary))
    return 0 if completed else 1


if __name__ == "__main__":
    sys.exit(main())
