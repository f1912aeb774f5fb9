"""torchrun with 2 CPU processes (gloo), the commands of the README's "Scaling out" section: the loss curve
matches one process with the same global batch for DDP and FSDP; a 2-process checkpoint resumes in 1 process;
a bad launch, a NaN and a dead process end every process with a clear error, and the last checkpoint survives."""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from trainlab import checkpoint, config, loop, models, runs
from trainlab.errors import UserError
from tests.conftest import run_cli

TORCHRUN = str(Path(sys.executable).with_name("torchrun"))
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}

# No dropout (masks differ per process) and LayerNorm (BatchNorm statistics are per process): with those, the
# math of 1 and 2 processes is the same and only the order of float additions differs.
# Monitoring the loss for its maximum makes the first evaluation (step 6) the "best" one, so that the end of
# the run restores an earlier checkpoint (from shards, under FSDP) before exporting model/.
MLP = ["digits-mlp", "model.dropout=0", "model.norm=layer", "data.batch_size=16", "loop.grad_accum=4",
       "loop.max_steps=12", "loop.eval_every=6", "loop.log_every=6", "loop.monitor=loss",
       "loop.monitor_mode=max"]


@pytest.fixture(scope="module")
def gpt(tmp_path_factory) -> list[str]:
    """A tiny character-level GPT on a text file the test writes; 4 x 4 sequences per step, so each of 2
    processes runs 2 micro-steps of 4 (the first without a gradient all-reduce)."""
    d = tmp_path_factory.mktemp("text")
    rng = random.Random(0)
    words = "the quick brown fox jumps over a lazy dog while cats watch from red walls".split()
    (d / "corpus.txt").write_text("\n".join(" ".join(rng.choice(words) for _ in range(12)) for _ in range(2000)))
    return ["stdlib-gpt", "data.source=text", f"data.path={d / 'corpus.txt'}", "data.split=tail",
            "data.tokenizer=char", f"data.cache_dir={d / 'cache'}", "data.block_size=32", "data.batch_size=4",
            "loop.grad_accum=4", "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "loop.max_steps=12",
            "loop.eval_every=6", "loop.log_every=6", "loop.eval_batches=4"]


POLICY_UNDER_FSDP = """
import json
from contextlib import nullcontext

import torch

from trainlab import config, distributed
from trainlab.generate import generate
from trainlab.models.gpt import GPT, GPTConfig
from trainlab.objectives.next_token import NextToken
from trainlab.policy import Policy

with distributed.session(config.LoopConfig(parallel="fsdp")) as ctx:
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32), 50, 64)
    plain = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32), 50, 64)
    plain.load_state_dict(model.state_dict())
    step = ctx.wrap(model, NextToken(), False)
    policy = Policy(model, step, ctx.device, nullcontext(), ctx)
    prompts = [[1, 2, 3], [4]] if ctx.rank == 0 else [[5, 6, 7, 8, 9]]
    n = 10 + 7 * ctx.rank  # ranks make different numbers of calls: nothing may wait for the other
    got = policy.generate(prompts, max_new_tokens=n, temperature=0)
    want = generate(plain.eval(), prompts, n, temperature=0)
    idx = torch.randint(0, 50, (2, 16))
    loss, _ = step({"idx": idx, "targets": idx})  # training still works after generating
    loss.backward()
    print(json.dumps({"rank": ctx.rank, "same": got == want, "loss": float(loss)}))
"""


@pytest.mark.slow
def test_the_policy_generates_on_sharded_weights_with_different_lengths_per_rank(tmp_path):
    script = tmp_path / "policy.py"
    script.write_text(POLICY_UNDER_FSDP)
    r = subprocess.run([TORCHRUN, "--standalone", "--nproc_per_node", "2", str(script)], env=ENV,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    import re

    out = [json.loads(m) for m in re.findall(r"\{[^{}]*\}", r.stdout)]  # the two ranks' lines may interleave
    assert sorted(o["rank"] for o in out) == [0, 1] and all(o["same"] for o in out)


def torchrun(*args: str, nproc: int = 2, timeout: float = 300) -> subprocess.CompletedProcess:
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", str(nproc), "-m", "trainlab", "train", *args]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def two_machines(*args: str, timeout: float = 300) -> list[subprocess.CompletedProcess]:
    """The multi-node command, run as two 'machines' of one process each on this host."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [TORCHRUN, "--nnodes", "2", "--nproc_per_node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint",
           f"127.0.0.1:{port}", "--rdzv-id", "trainlab-test", "-m", "trainlab", "train", *args]
    logs = [(tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")) for _ in range(2)]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=o, stderr=e, text=True) for o, e in logs]
    out = []
    for p, (o, e) in zip(procs, logs):
        p.wait(timeout=timeout)
        o.seek(0), e.seek(0)
        out.append(subprocess.CompletedProcess(cmd, p.returncode, o.read(), e.read()))
    return out


def single(args: list[str], run_dir: Path) -> None:
    cfg = config.load_recipe(args[0], args[1:])
    loop.train(cfg, run_dir)


def errors(output: str) -> list[str]:
    """Our error lines (torchrun's own summary quotes them indented, after 'traceback :')."""
    return [line for line in output.splitlines() if line.startswith("error: ")]


def curve(run_dir: Path) -> list[tuple]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["split"], r["loss"], r.get("grad_norm")) for r in rows]


def assert_same_curve(a: list[tuple], b: list[tuple], rel: float) -> None:
    assert [r[:2] for r in a] == [r[:2] for r in b]
    for x, y in zip(a, b):
        assert x[2] == pytest.approx(y[2], rel=rel), (x, y)
        assert (x[3] is None) == (y[3] is None) and (x[3] is None or x[3] == pytest.approx(y[3], rel=rel)), (x, y)


@pytest.mark.parametrize("batch_size, accum, world, micro, steps", [
    (16, 1, 1, 16, 1), (16, 4, 1, 16, 4),  # one process: the recipe's own micro-batches
    (16, 4, 2, 16, 2), (16, 4, 4, 16, 1), (16, 1, 2, 8, 1), (16, 8, 8, 16, 1), (16, 2, 8, 4, 1),
    (12, 5, 8, None, None),  # 60 examples do not split over 8 processes
])
def test_the_global_batch_is_shared_in_equal_micro_batches(batch_size, accum, world, micro, steps):
    from trainlab.distributed import plan
    from trainlab.errors import UserError

    if micro is None:
        with pytest.raises(UserError, match="does not split evenly"):
            plan(batch_size, accum, world, 0)
        return
    shares = [plan(batch_size, accum, world, r) for r in range(world)]
    share = batch_size * accum // world
    assert [(p.lo, p.hi) for p in shares] == [(r * share, (r + 1) * share) for r in range(world)]
    assert all(p.micro * p.accum == p.hi - p.lo and p.micro <= batch_size for p in shares)
    assert (shares[0].micro, shares[0].accum) == (micro, steps)


@pytest.mark.parametrize("augment", [False, True])
def test_ranks_slices_put_together_are_the_one_process_batches(augment):
    """What 3 ranks fetch for a step, laid end to end, is what one process fetches, augmentation included."""
    import torch

    from trainlab import data as data_lib
    from trainlab.distributed import plan

    cfg = config.load_recipe("digits-cnn", ["data.batch_size=8", f"data.augment={str(augment).lower()}"]).data
    d = data_lib.build(cfg)
    one, ranks = d.train_batches(seed=1), [d.train_batches(seed=1) for _ in range(3)]
    for _ in range(50):  # 1257 examples: 157 batches of 8 per epoch, so the 200 batches drawn cross an epoch
        whole = torch.cat([b["x"] for b in one.next_step(4, 0, 32, 4)])
        shares = [plan(8, 4, 4, r) for r in range(3)]  # 4 ranks' plans, the first 3 fetched
        parts = [torch.cat([b["x"] for b in s.next_step(4, p.lo, p.hi, p.accum)]) for s, p in zip(ranks, shares)]
        assert torch.allclose(torch.cat(parts), whole[:24], atol=1e-6)
    assert all(s.state_dict() == one.state_dict() for s in ranks)


# A mixture of experts with 16 experts and 4 tokens per micro-batch: most experts get no token on a process,
# and their parameters must still take part in the gradient reduction.
MOE = ["model.moe_experts=16", "model.moe_top_k=1", "data.block_size=4", "data.batch_size=1", "loop.grad_accum=2"]


@pytest.mark.slow
# DDP of the MLP is the two-machines case (standalone torchrun with DDP runs in the NaN, dead-process and
# fine-tuning tests below); the GPT under FSDP; the MoE under both.
@pytest.mark.parametrize("case", ["mlp-fsdp", "mlp-ddp-two-machines", "gpt-fsdp", "moe-ddp", "moe-fsdp"])
def test_two_processes_follow_the_loss_curve_of_one(tmp_path, gpt, case):
    model, parallel, *where = case.split("-")
    args = {"mlp": MLP, "gpt": gpt, "moe": gpt + MOE}[model] + [f"loop.parallel={parallel}"]
    single(args, tmp_path / "one")
    if where:
        results = two_machines(*args, "--run-dir", str(tmp_path / "two"))
        assert all(r.returncode == 0 for r in results), [r.stderr[-2000:] for r in results]
        stdout = "".join(r.stdout for r in results)
    else:
        r = torchrun(*args, "--run-dir", str(tmp_path / "two"))
        assert r.returncode == 0, r.stderr[-3000:]
        stdout = r.stdout
    # The arithmetic is said once, by rank 0 only: 64 = 2 x 2 x 16 (mlp), 16 = 2 x 2 x 4 (gpt), 2 = 2 x 1 x 1.
    assert stdout.count(" = 2 processes x ") == 1 and stdout.count("done: completed") == 1
    assert_same_curve(curve(tmp_path / "one"), curve(tmp_path / "two"), rel=1e-5)
    summary = json.loads((tmp_path / "two/summary.json").read_text())
    assert summary["status"] == "completed" and summary["processes"] == 2 and summary["parallel"] == parallel
    assert summary["best"]["step"] == (6 if model == "mlp" else 12)
    ckpt = tmp_path / "two/checkpoints/last"
    assert (ckpt / ("shards/.metadata" if parallel == "fsdp" else "model.safetensors")).is_file()
    # model/ holds whole weights either way, loadable without torch.distributed.
    a, b = (models.load(tmp_path / run / "model")[0].state_dict() for run in ("one", "two"))
    assert list(a) == list(b)
    for name in a:
        assert a[name].shape == b[name].shape and (a[name] - b[name]).abs().max() < 1e-4, name


@pytest.fixture(scope="module")
def pretrained_bpe(tmp_path_factory) -> Path:
    """A tiny BPE GPT pre-trained on standard-library text, to fine-tune under torchrun."""
    run = tmp_path_factory.mktemp("pre") / "gpt"
    single(["stdlib-gpt", "data.max_bytes=300000", "data.split=tail", "data.vocab_size=512", "data.block_size=32",
            "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "loop.max_steps=2", "loop.eval_every=2"], run)
    return run


@pytest.mark.slow
@pytest.mark.parametrize("case", ["lora-replay-ddp", "lora-fsdp", "full-replay-fsdp"])
def test_fine_tuning_under_torchrun_follows_one_process(tmp_path, pretrained_bpe, case):
    """A classifier on a pre-trained trunk, with LoRA (frozen base, trained adapters and head) and replayed
    pre-training windows: 2 processes give the one-process curve (the replayed windows are one global draw per
    step that the ranks slice) and the same saved adapters."""
    *what, parallel = case.split("-")
    args = ["stdlib-classes-gpt", f"model.init_from={pretrained_bpe}", 'data.packages=["email","json"]',
            "data.block_size=32", "data.batch_size=8", "loop.grad_accum=2", "model.dropout=0", "loop.max_steps=6",
            "loop.eval_every=3", "loop.log_every=3", "schedule.warmup_steps=0", f"loop.parallel={parallel}"]
    args += (["model.lora.rank=4", "optim.lr=5e-3"] if "lora" in what else []) \
        + (["data.replay_fraction=0.2"] if "replay" in what else [])
    single(args, tmp_path / "one")
    r = torchrun(*args, "--run-dir", str(tmp_path / "two"))
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_curve(curve(tmp_path / "one"), curve(tmp_path / "two"), rel=1e-4)
    if "lora" in what:
        from safetensors.torch import load_file

        a, b = (load_file(tmp_path / run / "model/adapter.safetensors") for run in ("one", "two"))
        assert set(a) == set(b) and all((a[k] - b[k]).abs().max() < 1e-4 for k in a)


def _kill_after_first_checkpoint(args: list[str], run_dir: Path) -> None:
    """SIGKILL torchrun and its processes (a lost machine) once checkpoints/last exists."""
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "trainlab", "train", *args,
           "--run-dir", str(run_dir)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 240
    while not (run_dir / "checkpoints/last").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
    workers = [int(w) for w in subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                               text=True).stdout.split()]
    for pid in [proc.pid, *workers]:  # torchrun starts its workers in their own process groups
        os.kill(pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in _status(pid) for pid in workers):
        time.sleep(0.01)
    # Anything the workers started dies with them; until then it may hold the run folder's lock.
    deadline = time.time() + 30
    while True:
        try:
            runs.lock(run_dir)
            runs.unlock(run_dir)
            return
        except UserError:
            if time.time() > deadline:
                raise
            time.sleep(0.05)


def _status(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return "zombie"


@pytest.mark.slow
# DDP writes the one-process format (test_resume); an FSDP checkpoint resumed in one process:
# test_online_post_training_under_torchrun_resumes_in_one_process
@pytest.mark.parametrize("parallel, resume_on", [("fsdp", 2)])
def test_a_two_process_checkpoint_resumes_exactly(tmp_path, gpt, parallel, resume_on):
    args = [a for a in gpt if not a.startswith(("loop.max_steps", "loop.eval_every"))] + [
        "loop.max_steps=100", "loop.eval_every=10", f"loop.parallel={parallel}"]
    single(args, tmp_path / "one")
    run = tmp_path / "run"
    _kill_after_first_checkpoint(args, run)
    killed_at = checkpoint.load_state(run / "checkpoints/last", need="state.pt")["step"]
    assert json.loads((run / "summary.json").read_text())["status"] == "running" and killed_at < 100

    resume = ["--run-dir", str(run), "--resume"]
    r = run_cli("train", *args, *resume) if resume_on == 1 else torchrun(*args, *resume)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.count(f"resuming at step {killed_at}") == 1
    # Steps before the kill ran on 2 processes, the rest on resume_on: one curve, within float noise of 1.
    assert_same_curve(curve(tmp_path / "one"), curve(run), rel=1e-4)
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_processes_is_one_clear_error(tmp_path):
    r = torchrun("digits-mlp", "data.batch_size=15", "loop.max_steps=4", "--run-dir", str(tmp_path / "r"))
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert errors(out) == ["error: the global batch of 15 examples (data.batch_size 15 x loop.grad_accum 1) does "
                           "not split evenly over 2 processes"] and "\nhint: make data.batch_size" in out
    assert "trainlab/distributed.py" not in out  # no traceback of ours (torchrun prints its own summary)


@pytest.mark.slow
def test_nan_stops_every_process_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "r"
    r = torchrun("diabetes-mlp", "loop.max_steps=400", "loop.clip_grad_norm=0", "optim.name=sgd", "optim.lr=5.0",
                 "optim.momentum=0.99", "schedule.name=constant", "loop.eval_every=2", "--run-dir", str(run))
    out = r.stdout + r.stderr
    assert r.returncode != 0 and len(errors(out)) == 1 and "training stopped, the last good checkpoint" in out
    assert json.loads((run / "summary.json").read_text())["status"] == "failed"
    state = checkpoint.load(run / "checkpoints/last", models.build(config.load_resolved(run / "config.toml").model,
                                                                      _info(run)))
    assert state["step"] >= 2


def _info(run: Path) -> dict:
    from trainlab import data

    return data.build(config.load_resolved(run / "config.toml").data).info


@pytest.mark.slow
def test_a_dead_process_ends_the_others_instead_of_hanging(tmp_path):
    run = tmp_path / "r"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "trainlab", "train", "digits-mlp",
           "loop.steps=100000", "loop.eval_every=50", "--run-dir", str(run)]
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        deadline = time.time() + 120
        while not (run / "checkpoints/last").exists() and time.time() < deadline:
            time.sleep(0.02)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(workers) == 2, workers
        killed = time.time()
        os.kill(int(workers[-1]), signal.SIGKILL)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0 and time.time() - killed < 60
    assert "Signal 9 (SIGKILL)" in out  # torchrun names the process that died
    assert (run / "checkpoints/last/model.safetensors").is_file()
    assert json.loads((run / "summary.json").read_text())["status"] == "running"  # resumable with --resume


@pytest.mark.slow
def test_a_damaged_sharded_checkpoint_is_a_clear_error_and_stays_as_it_was(tmp_path):
    """loop.parallel = "fsdp" writes sharded checkpoints even in one process (so any world size can resume)."""
    from trainlab.errors import UserError

    cfg = config.load_recipe("digits-mlp", ["loop.parallel=fsdp", "loop.max_steps=4", "loop.eval_every=2"])
    loop.train(cfg, tmp_path / "r")
    shard = next((tmp_path / "r/checkpoints/last/shards").glob("*.distcp"))
    shard.write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="sharded checkpoint .* is corrupt"):
        loop.train(cfg, tmp_path / "r", resume=True)
    assert shard.read_bytes() == b"\x00garbage"
    shard.unlink()
    (tmp_path / "r/checkpoints/last/shards/.metadata").unlink()
    (tmp_path / "r/checkpoints/last/shards").rmdir()
    with pytest.raises(UserError, match="no complete checkpoint: .* has no shards"):
        loop.train(cfg, tmp_path / "r", resume=True)


@pytest.fixture(scope="module")
def sft_chain(tmp_path_factory) -> Path:
    """A tiny language model, its SFT run on the task suite and a reward model: the start of PPO and GRPO."""
    d = tmp_path_factory.mktemp("post")
    small = ["data.suite_size=48", "data.suite_eval=14", "data.eval_prompts=8", "data.max_new_tokens=6",
             "data.block_size=64", "schedule.warmup_steps=0", "loop.max_steps=2", "loop.eval_every=2"]
    single(["stdlib-gpt", "data.max_bytes=300000", "data.split=tail", "data.vocab_size=512", "data.block_size=64",
            "model.n_layer=2", "model.n_head=2", "model.n_embd=32", "loop.max_steps=2", "loop.eval_every=2"],
           d / "base")
    single(["tasks-sft", f"model.init_from={d / 'base'}", *small], d / "sft")
    single(["tasks-rm", f"model.init_from={d / 'sft'}", *small], d / "rm")
    return d


@pytest.mark.slow
@pytest.mark.parametrize("method, parallel", [("ppo", "fsdp")])  # GRPO under DDP passed too (slow tier budget)
def test_online_post_training_under_torchrun_resumes_in_one_process(tmp_path, sft_chain, method, parallel):
    """Each process generates its share of a round; the rounds are gathered, so every process holds the same
    one, and a two-process checkpoint (taken in the middle of a round) resumes in one process. PPO under FSDP:
    the policy is sharded, its value head trains, the reference and the reward model are frozen per process."""
    d = sft_chain
    args = [f"tasks-{method}", f"model.init_from={d / 'sft'}", "data.suite_size=48", "data.suite_eval=14",
            "data.eval_prompts=8", "data.max_new_tokens=6", "data.block_size=64", "schedule.warmup_steps=0",
            "data.prompts_per_round=4", "data.group_size=2", "data.batch_size=4", "data.epochs_per_round=2",
            "loop.eval_every=2", "loop.log_every=1", f"loop.parallel={parallel}"]
    args += [f"data.reward_model={d / 'rm'}"] if method == "ppo" else ["objective.beta=0.1"]
    run = tmp_path / "run"
    r = torchrun(*args, "loop.steps=3", "--run-dir", str(run))  # a round is 4 steps: the checkpoint is inside one
    assert r.returncode == 0, r.stderr[-3000:]
    r = run_cli("train", *args, "loop.steps=6", "--run-dir", str(run), "--resume")
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5, 6]
    assert train[3]["reward"] == train[2]["reward"]  # step 4 trains on the round that steps 1-3 began
    assert json.loads((run / "summary.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_a_scaling_sweep_under_torchrun_trains_each_run_on_every_process(tmp_path):
    out = tmp_path / "sweep"
    cmd = [TORCHRUN, "--standalone", "--nproc_per_node", "2", "-m", "trainlab", "scaling", "sweep", "stdlib-scaling",
           f"data.cache_dir={tmp_path / 'cache'}", "data.max_bytes=200000", "data.split=tail", "data.vocab_size=300",
           "data.batch_size=8", "loop.eval_batches=2", "--sizes", "1x16", "--tokens", "3000",
           "--lrs", "1e-4", "1e-2", "1e4", "--out", str(out)]  # 1e4 diverges on both processes: an answer
    r = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = sorted((out / "runs").iterdir())
    assert len(runs) == 3 and r.stdout.count("val loss") == 2 and r.stdout.count("diverged") == 1  # rank 0 prints
    assert all(json.loads((d / "summary.json").read_text())["processes"] == 2 for d in runs)
    assert len((out / "points.csv").read_text().splitlines()) > 2


@pytest.mark.slow
def test_ppo_under_torchrun_steps_half_the_environments_on_each_process(tmp_path):
    """Each process steps num_envs / 2 environments (their own seeds) and trains on its rollout's minibatches of
    batch / 2; the logged environment steps and episodes are the whole run's. Observation statistics are summed
    over the processes: both hold the same, so the first pass over each rollout has a ratio of exactly 1."""
    r = torchrun("cartpole-ppo", "data.env_steps=1024", "data.num_envs=4", "data.rollout_steps=64",
                 "model.normalize_obs=true",
                 "data.epochs_per_rollout=2", "loop.eval_every=8", "data.eval_episodes=2", "--run-dir",
                 str(tmp_path / "r"))
    assert r.returncode == 0, r.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in rows if x["split"] == "train"]
    assert train[-1]["env_steps"] == 1024 and train[-1]["step"] == 8 and train[-1]["episodes"] > 0
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["processes"] == 2
    first = [x for x in train if (x["step"] - 1) % 2 == 0]  # 2 steps per rollout: the first sees the old weights
    assert len(first) == 4 and all(abs(x["approx_kl"]) < 1e-6 and x["clip_fraction"] == 0 for x in first), first


@pytest.mark.slow
def test_ppo_under_torchrun_resumes_each_processs_own_environments(tmp_path):
    """The checkpoint keeps every process's stream (its environments, rollout and generators): a run stopped at
    step 4 and resumed logs what the uninterrupted run logged. With rank 0's stream on both processes, rank 1
    replayed rank 0's actions in its own environments (a warning) and trained on rank 0's rollout."""
    args = ["cartpole-ppo", "data.env_steps=1024", "data.num_envs=4", "data.rollout_steps=64",
            "data.epochs_per_rollout=2", "loop.eval_every=8", "data.eval_episodes=2", "schedule.name=constant",
            "loop.log_every=1"]
    assert torchrun(*args, "--run-dir", str(tmp_path / "full")).returncode == 0
    assert torchrun(*args, "loop.max_steps=5", "--run-dir", str(tmp_path / "cut")).returncode == 0
    r = torchrun(*args, "--run-dir", str(tmp_path / "cut"), "--resume")
    assert r.returncode == 0 and "replay" not in r.stdout + r.stderr, r.stderr[-3000:]

    def train(d):
        rows = [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in x.items() if k not in ("time", "throughput", "sps")} for x in rows
                if x["split"] == "train"]

    assert train(tmp_path / "cut") == train(tmp_path / "full")
