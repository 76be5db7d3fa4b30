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
              help="A label file (out.nii.gz, out.seg.nrrd or out.dcm) for one input, else a folder: "
                   "OUT/<case_id>.nii.gz (.seg.nrrd, .dcm with --format).")
@click.option("--model", "run_dirs", type=click.Path(path_type=Path), required=True, multiple=True,
              help="The run folder `kitseg train -o` wrote (every trained fold is ensembled), or a model file "
                   "`kitseg export` wrote. Repeat it to "
                   "average several runs of one cascade (e.g. TuNet's model variants); the first run's "
                   "post-processing and final step are used.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: cuda when torch sees a GPU, else cpu (as kitseg train).")
@click.option("--precision", type=click.Choice(["auto", "fp32", "bf16", "fp16"]), default="auto", show_default=True,
              help="Autocast precision of the networks: auto = bf16 on a CPU with AMX and on GPUs "
              "that support it, fp16 on other GPUs, fp32 on other CPUs.")
@click.option("--tta", is_flag=True, help="Mirroring test-time augmentation (2-8x slower).")
@click.option("--save-probabilities", is_flag=True,
              help="Also write <case>_probabilities.npz (float16, the label file's array order).")
@click.option("--format", "output_format", type=click.Choice(["nifti", "nrrd", "dicom-seg"]), default=None,
              help="nifti (default): label files in the input's geometry; nrrd: 3D Slicer .seg.nrrd with segment "
              "names and colours; dicom-seg: one DICOM Segmentation object per DICOM series input, referencing "
              "it. A file name given as -o decides by its ending.")
@click.option("--statistics", is_flag=True,
              help="Also write <case>.json beside each label file: kidney volume per side; each tumor's volume, "
              "largest 3D diameter, side, pole and exophytic fraction; cyst volume; RENAL R/E/L approximations.")
def predict(inputs: Path, output: Path, run_dirs: tuple[Path, ...], device: str, precision: str, tta: bool,
            save_probabilities: bool, output_format: str | None, statistics: bool) -> None:
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

    single = is_image_file(output) or output.name.lower().endswith(".dcm")
    cases = find_images(inputs)
    if single and len(cases) != 1:
        raise KitsegError(f"{len(cases)} inputs found; give a folder as -o (not a file name)", inputs)
    output_format = check_format(output if single else None, output_format, cases)
    run = [load_run(d, device) for d in run_dirs]
    warning = synthetic_warning(run)
    if warning:
        click.echo(warning, err=True)
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
                             statistics=statistics, output_format=output_format)
    click.echo(summary.describe())
    if summary.count("failed"):
        raise KitsegError(f"{summary.count('failed')} of {len(summary.cases)} cases failed (listed above)", output)


def synthetic_warning(runs) -> str | None:
    """One line when a model was trained only on synthetic CT (the first such one of ``runs`` speaks)."""
    from kitseg.training_data import synthetic_warning as warning_of

    lines = [w for w in (warning_of(r.training_data) for r in runs) if w]
    if not lines:
        return None
    return lines[0] if len(runs) == 1 else f"{lines[0]} ({len(lines)} of the {len(runs)} models given)"


def check_format(output: Path | None, output_format: str | None, cases: list[tuple[str, Path]]) -> str:
    """The output format, checked before any model is loaded: a file name's ending must agree with
    --format, and DICOM-SEG needs DICOM series folders as inputs."""
    from kitseg.export import format_of

    if output is not None:
        named = format_of(output)
        if output_format is not None and output_format != named:
            raise KitsegError(f"the file name asks for {named} but --format says {output_format}; use the ending "
                              f"of the format (.nii.gz, .seg.nrrd, .dcm)", output)
        output_format = named
    output_format = output_format or "nifti"
    if output_format == "dicom-seg":
        for _, path in cases:
            if not path.is_dir():
                raise KitsegError("--format dicom-seg needs a DICOM series folder as input (a DICOM-SEG references "
                                  "its source slices); this is a file: use --format nifti or nrrd", path)
    return output_format
