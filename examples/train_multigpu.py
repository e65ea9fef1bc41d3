"""Train PtychoPINN (PyTorch) on several GPUs or nodes with Lightning's DDP.

Single node, 4 GPUs:
    torchrun --nproc-per-node 4 examples/train_multigpu.py DATA --out runs/ddp --devices 4

Two nodes of 4 GPUs (run on each node, or let SLURM's srun start one task per GPU):
    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        examples/train_multigpu.py DATA --out runs/ddp --devices 4 --num-nodes 2

DATA is a training-data NPZ or a directory with diffraction.h5 + product.h5. Rank 0 writes
OUT/model.ckpt. Without a launcher the same script uses ddp_spawn on the local GPUs.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ptychodus_ptychopinn_torch.checkpoint import save_model
from ptychodus_ptychopinn_torch.config import ExecutionConfig, ModelConfig, TrainingConfig
from ptychodus_ptychopinn_torch.data.io import load_scan
from ptychodus_ptychopinn_torch.workflows.engine import train_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--devices", type=int, default=1, help="GPUs per node")
    parser.add_argument("--num-nodes", type=int, default=1)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--gridsize", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=16, help="per GPU")
    parser.add_argument("--precision", default="bf16-mixed", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()

    scan = load_scan(args.data)
    training = TrainingConfig(
        model=ModelConfig(N=scan.N, gridsize=args.gridsize), nepochs=args.epochs,
        batch_size=args.batch_size, n_groups=scan.num_positions,
    )
    execution = ExecutionConfig(
        accelerator="cuda", devices=args.devices, num_nodes=args.num_nodes, precision=args.precision,
    )
    bundle = train_model(scan, training, execution)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"wrote {save_model(bundle, args.out / 'model.ckpt')}")


if __name__ == "__main__":
    main()
