"""`kitseg predict -i CT -o OUT --model RUN_DIR`: segment one CT or a folder of CTs."""

from __future__ import annotations

from pathlib import Path

import click

from kitseg.errors import KitsegError


@click.command()
@click.option("-i", "--input", "inputs", type=click.Path(path_type=Path), required=True,
              help="A CT file (NIfTI, NRRD, MHA), a DICOM series folder, or a folder of them (also a KiTS or "
                   "nnU-Net dataset folder).")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True,
              help="A label file (e.g. out.nii.gz) for one input, else a folder: OUT/<case_id>.nii.gz.")
@click.option("--model", "run_dirs", type=click.Path(path_type=Path), required=True, multiple=True,
              help="The run folder `kitseg train -o` wrote (every trained fold is ensembled). Repeat it to "
                   "average several runs of one cascade (e.g. TuNet's model variants); the first run's "
                   "post-processing and final step are used.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: cuda when torch sees a GPU, else cpu (as kitseg train).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Autocast precision of the networks: auto = bf16 on a CPU with AMX or AVX512-BF16 and on GPUs "
              "that support it, fp16 on other GPUs, fp32 on other CPUs.")
@click.option("--tta", is_flag=True, help="Mirroring test-time augmentation (2-8x slower).")
@click.option("--save-probabilities", is_flag=True,
              help="Also write <case>_probabilities.npz (float16, the label file's array order).")
@click.option("--statistics", is_flag=True,
              help="Also write <case>.json beside each label file: kidney volume per side; each tumor's volume, "
              "largest 3D diameter, side, pole and exophytic fraction; cyst volume; RENAL R/E/L approximations.")
def predict(inputs: Path, output: Path, run_dirs: tuple[Path, ...], device: str, precision: str, tta: bool,
            save_probabilities: bool, statistics: bool) -> None:
    """Segment kidney and tumor: uint8 labels (0 background, 1 kidney, 2 tumor; KiTS23: 3 cyst).

    Each label file has exactly its input's shape, spacing, origin and orientation. A folder run
    skips cases already written and resumes after an interruption; a bad input is reported and
    skipped. Several processes, GPUs or nodes share a folder with torchrun (each rank predicts
    every WORLD_SIZE-th case): `torchrun --nproc_per_node 4 -m kitseg.cli.main predict ...`.
    """
    from kitseg.datasets import find_images
    from kitseg.inference import load_run, predict_file, predict_folder
    from kitseg.inference.cascade import ensemble_note
    from kitseg.io import is_image_file
    from kitseg.precision import resolve_precision

    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    chosen = resolve_precision(precision, device)

    single = is_image_file(output)
    cases = find_images(inputs)
    if single and len(cases) != 1:
        raise KitsegError(f"{len(cases)} inputs found; give a folder as -o (not a file name)", inputs)
    run = [load_run(d, device) for d in run_dirs]
    note = ensemble_note(run)
    if note:
        click.echo(f"note: {note}", err=True)
    click.echo(f"predicting with {chosen.describe()}", err=True)
    if single:
        case_id, path = cases[0]
        predict_file(path, output, run, tta=tta, save_probabilities=save_probabilities, case_id=case_id,
                     precision=chosen, statistics=statistics)
        click.echo(f"wrote {output}")
        return
    summary = predict_folder(inputs, output, run, tta=tta, save_probabilities=save_probabilities, precision=chosen,
                             statistics=statistics)
    click.echo(summary.describe())
    if summary.count("failed"):
        raise KitsegError(f"{summary.count('failed')} of {len(summary.cases)} cases failed (listed above)", inputs)
