#!/usr/bin/env python
"""Train PtychoPINN (PyTorch) and reconstruct with it through Ptychodus's own workflow API.

    python examples/headless_train_reconstruct.py DATA_DIR WORK_DIR [--epochs N]
        [--settings settings.ini] [--algorithm pinn|supervised] [--model model.ckpt]

DATA_DIR holds Ptychodus's batch layout: ``diffraction.h5`` (assembled patterns) and
``product.h5`` (probe, positions, initial object). The script

1. opens both with ``ModelCore().workflow_api`` and selects ``ptychopinn (pytorch)_pinn``;
2. exports the training data to ``WORK_DIR/train_data.npz`` (Ptychodus's NPZ layout);
3. trains on ``WORK_DIR`` and writes ``WORK_DIR/model.ckpt`` (skipped with ``--model``);
4. reconstructs the scan with the trained (or given) model and saves
   ``WORK_DIR/reconstruction.h5``.

Training and inference run in a spawned child process, so the ``if __name__ == "__main__"``
guard at the bottom is required. Exit status: 0 on success, 1 on failure (the reason is
logged).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

logger = logging.getLogger("headless_train_reconstruct")

ALGORITHMS = {
    "pinn": "ptychopinn (pytorch)_pinn",
    "supervised": "ptychopinn (pytorch)_supervised",
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data_dir", type=Path, help="directory with diffraction.h5, product.h5")
    parser.add_argument("work_dir", type=Path, help="where the NPZ, model and result go")
    parser.add_argument("--settings", type=Path, help="a Ptychodus settings.ini to load first")
    parser.add_argument("--epochs", type=int, help="overrides [PtychoPINNPyTorchTraining] nepochs")
    parser.add_argument("--algorithm", choices=sorted(ALGORITHMS), default="pinn")
    parser.add_argument("--model", type=Path, help="use this model.ckpt instead of training")
    parser.add_argument("--log-level", type=int, default=logging.INFO)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> Path:
    # Registers PtychoPINN (PyTorch) where the ptychodus/plugins shim is missing; a no-op
    # otherwise. Must run before ModelCore() is created.
    from ptychodus_ptychopinn_torch.integration import install

    install()

    from ptychodus.model import ModelCore

    algorithm = ALGORITHMS[args.algorithm]
    work_dir = args.work_dir.resolve()
    work_dir.mkdir(parents=True, exist_ok=True)

    with ModelCore(args.settings, log_level=args.log_level) as model:
        workflow = model.workflow_api
        available = list(workflow.available_reconstructors())
        if algorithm not in available:
            raise RuntimeError(f"{algorithm!r} is not registered; available: {available}")

        if args.epochs is not None:
            group = model.settings_registry["PtychoPINNPyTorchTraining"]
            group.parameters()["nepochs"].set_value(args.epochs)

        diffraction = workflow.load_assembled_diffraction_data(args.data_dir / "diffraction.h5")
        product = workflow.load_product(args.data_dir / "product.h5", diffraction=diffraction)
        processing = model.processing_core.processing_api

        if args.model is None:
            product.export_training_data(work_dir / "train_data.npz", algorithm=algorithm)
            product.train_reconstructor_local(work_dir, work_dir, algorithm=algorithm,
                                              block=True)
            logger.info("trained model: %s", work_dir / "model.ckpt")
        else:
            processing.load_model_from_file(args.model, algorithm=algorithm)

        output = product.reconstruct_local(algorithm=algorithm, block=True)
        result = work_dir / "reconstruction.h5"
        output.save_product(result)
        logger.info("reconstruction: %s (product %r)", result, output.get_product().metadata.name)
        return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except Exception as exc:
        logger.error("failed: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
