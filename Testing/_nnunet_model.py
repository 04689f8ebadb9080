"""Build a real nnU-Net v2 model folder with nnunetv2 itself (run as a script, in its own
process: nnunetv2 reads its nnUNet_* folders from the environment at import).

``python _nnunet_model.py BASE ITERATIONS`` writes blob cases, exports them with
``primage segment export-nnunet``, runs nnU-Net's planning and preprocessing (with its
dataset integrity check) and trains folds 0 and 1 of ``3d_fullres`` for one epoch of
ITERATIONS batches on the CPU. Prints the model folder.
"""

import contextlib
import io
import os
import sys
from pathlib import Path


def main_script():
    base = Path(sys.argv[1])
    iterations = int(sys.argv[2])
    for key in ("raw", "preprocessed", "results"):
        os.environ[f"nnUNet_{key}"] = str(base / key)
    os.environ["nnUNet_compile"] = "f"
    os.environ["nnUNet_n_proc_DA"] = "0"  # no augmentation worker processes
    os.environ["nnUNet_def_n_proc"] = "1"

    from primage.cli import main
    from primage.segmentation.blobs import write_blob_pairs

    pairs_csv, _ = write_blob_pairs(base / "data", 5, seed=0)
    assert (
        main(["segment", "export-nnunet", "--pairs", str(pairs_csv), "--dataset-id", "1",
              "--name", "Blobs", "--output", str(base / "raw")])
        == 0
    )  # fmt: skip

    import torch
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (
        extract_fingerprints,
        plan_experiments,
        preprocess,
    )
    from nnunetv2.run.run_training import get_trainer_from_args

    torch.set_num_threads(2)
    with contextlib.redirect_stdout(io.StringIO()):
        extract_fingerprints([1], num_processes=1, check_dataset_integrity=True)
        os.environ["nnUNet_n_proc_DA"] = "1"  # the planner sets torch threads from it
        plan_experiments([1])
        os.environ["nnUNet_n_proc_DA"] = "0"
        preprocess([1], configurations=("3d_fullres",), num_processes=(1,))
        for fold in (0, 1):
            trainer = get_trainer_from_args(
                "1", "3d_fullres", fold, "nnUNetTrainer", "nnUNetPlans", device=torch.device("cpu")
            )
            trainer.num_epochs = 1
            trainer.num_iterations_per_epoch = iterations
            trainer.num_val_iterations_per_epoch = 1
            trainer.run_training()
    print(base / "results" / "Dataset001_Blobs" / "nnUNetTrainer__nnUNetPlans__3d_fullres")


if __name__ == "__main__":  # nnU-Net spawns worker processes that import this file
    main_script()
