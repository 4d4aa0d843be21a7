"""The launchers: two nodes simulated on this machine pass preflight and train through
launch/torchrun.sh; the deepspeed launcher trains from a hostfile; slurm.sbatch starts one torchrun per
node at the first node's rendezvous."""
import json
import os
import stat
import subprocess

from dist_harness import REPO, free_port, rank_env, run

TINY = ["--config", "configs/tiny.yaml", "run.progress=false", "run.tensorboard=false", "model.num_layers=2",
        "model.hidden_size=64", "model.num_heads=4", "model.num_kv_heads=4", "model.ffn_hidden_size=128",
        "data.seq_len=32", "train.micro_batch_size=2", "train.warmup_steps=1", "train.log_every=1",
        "train.eval_batches=1", "train.checkpoint_every=0"]


def metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_two_nodes_train_through_torchrun_sh(tmp_path):
    # two torchrun agents ("nodes") of one rank each meet at a c10d rendezvous on 127.0.0.1: one data-
    # parallel world of 2, rank 0 writes metrics and the final checkpoint
    run_dir = tmp_path / "run"
    env = rank_env(NNODES=2, NPROC_PER_NODE=1, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port(),
                   RDZV_ID="two-nodes", PREFLIGHT_ARGS=f"--json {tmp_path / 'pre.json'} --size-mb 1 --iters 2")
    cmd = ["bash", str(REPO / "launch/torchrun.sh"), *TINY, f"run.dir={run_dir}", "train.steps=3"]
    nodes = [subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    try:
        outs = [node.communicate(timeout=300)[0] for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    assert all(node.returncode == 0 for node in nodes), "\n".join(o[-3000:] for o in outs)
    # the launcher ran preflight over both ranks first: equal versions, the bandwidths measured
    assert any("preflight: 2 ranks" in o for o in outs)
    report = json.loads((tmp_path / "pre.json").read_text())
    assert report["world_size"] == 2 and report["backend"] == "gloo" and report["warnings"] == []
    assert report["ranks"][0]["versions"] == report["ranks"][1]["versions"] and report["ranks"][0]["data"] == [""]
    bw = report["bandwidth"]
    assert bw["size_bytes"] == 2 ** 20 and bw["p2p"]["gbps"] > 0
    assert abs(bw["all_reduce"]["algbw_gbps"] - 2 ** 20 / bw["all_reduce"]["seconds"] / 1e9) < 1e-9
    # nccl-tests' conventions for n = 2: all-reduce busbw = algbw, all-gather busbw = algbw / 2
    assert abs(bw["all_reduce"]["busbw_gbps"] - bw["all_reduce"]["algbw_gbps"]) < 1e-9
    assert abs(bw["all_gather"]["busbw_gbps"] - bw["all_gather"]["algbw_gbps"] / 2) < 1e-9
    records = metrics(run_dir)
    assert [r["step"] for r in records] == [1, 2, 3]
    # 2 sequences x 32 tokens per rank and step: a world of two counts 128 tokens per step
    assert [r["tokens"] for r in records] == [128, 256, 384]
    assert all(r["loss"] == r["loss"] and r["loss"] < 10 for r in records)
    assert (run_dir / "checkpoints" / "step_00000003" / "COMPLETE").exists()


def test_deepspeed_launcher_reads_a_hostfile(tmp_path):
    # the deepspeed launcher starts 2 ranks on the hostfile's one node; tensor parallel over them
    # (--no_ssh_check and MASTER_ADDR: the launcher otherwise asks `ssh localhost`, which this machine refuses)
    run_dir, hostfile = tmp_path / "run", tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env = rank_env(HOSTFILE=hostfile, MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port(), DEEPSPEED_ARGS="--no_ssh_check",
                   PREFLIGHT=0)  # preflight under torchrun.sh is run above; here its command line below
    dry = run(["bash", str(REPO / "launch/deepspeed.sh"), "--config", "x.yaml"], timeout=30,
              env=dict(env, PREFLIGHT="1", TAPA_DRY_RUN="1"))
    assert dry.strip() == (f"deepspeed --hostfile {hostfile} --master_addr 127.0.0.1 --master_port {env['MASTER_PORT']} "
                           "--no_ssh_check --no_local_rank --module tapa_scale.preflight --config x.yaml && deepspeed "
                           f"--hostfile {hostfile} --master_addr 127.0.0.1 --master_port {env['MASTER_PORT']} "
                           "--no_ssh_check --no_local_rank --module tapa_scale.train --config x.yaml")
    run(["bash", str(REPO / "launch/deepspeed.sh"), *TINY, f"run.dir={run_dir}", "train.steps=2",
         "train.final_checkpoint=false", "parallel.tp=2"], timeout=300, env=env)
    assert [r["tokens"] for r in metrics(run_dir)] == [64, 128]


def _fake(bin_dir, name, body):
    path = bin_dir / name
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def test_slurm_starts_one_torchrun_per_node(tmp_path):
    # stand-ins for scontrol and srun: srun runs the task once per node, as Slurm would on each node
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake(bin_dir, "scontrol", 'printf "node-a\\nnode-b\\n"\n')
    _fake(bin_dir, "srun", 'n=1; while [ "${1#-}" != "$1" ]; do case "$1" in --ntasks=*) n="${1#*=}";; esac; shift; done\n'
                            'for i in $(seq 0 $((n - 1))); do SLURM_NODEID=$i "$@"; done\n')
    env = rank_env(PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", SLURM_JOB_NODELIST="node-[a-b]",
                   SLURM_NNODES=2, SLURM_JOB_ID=4242, SLURM_SUBMIT_DIR=REPO, SLURM_GPUS_ON_NODE=4,
                   TAPA_DRY_RUN=1)
    out = run(["bash", str(REPO / "launch/slurm.sbatch"), "--config", "configs/tiny.yaml", "parallel.tp=2"],
              timeout=60, env=env)
    lines = out.strip().splitlines()
    assert len(lines) == 2 and lines[0] == lines[1], out
    assert ("--nproc-per-node 4 --nnodes 2 --rdzv-backend c10d --rdzv-endpoint node-a:29500 --rdzv-id 4242 "
            "-m tapa_scale.train --config configs/tiny.yaml parallel.tp=2") in lines[0], out
    assert ("--rdzv-id 4242-preflight -m tapa_scale.preflight --config configs/tiny.yaml parallel.tp=2 && "
            in lines[0]), out


def test_single_node_torchrun_picks_a_free_port():
    out = run(["bash", str(REPO / "launch/torchrun.sh"), "--config", "x.yaml"], timeout=30,
              env=rank_env(TAPA_DRY_RUN=1, NPROC_PER_NODE=2))
    assert out.strip().endswith("--nproc-per-node 2 --standalone -m tapa_scale.train --config x.yaml")
