"""Queued experiments (`dvc exp run --queue`): run again those a stop killed, each from its last saved state; compare
experiments with paired standard errors and their validation curves. Not a DVC stage: a command to use on a sweep."""

import subprocess
from pathlib import Path

import typer

from longformer.errors import DataError
from longformer.pipeline.cli import app, user_errors
from longformer.pipeline.sweep import compare, markdown_table, plot_curves, resume_queue

cli = app(__doc__)


@cli.command()
@user_errors
def resume(jobs: int = typer.Option(1, min=1, help="workers for `dvc queue start`"),
           start: bool = typer.Option(True, help="start the queue after re-queueing")) -> None:
    """After a worker was killed or the machine stopped: queue every failed experiment again under its own name and
    params (each resumes from its state in .resume/), then `dvc queue start`."""
    requeued = resume_queue(Path.cwd(), jobs, start)
    for entry in requeued:
        print(f"queued again: {entry.name} {' '.join([*(f'-S {o}' for o in entry.overrides), *entry.targets])}")
    if not requeued:
        print("no failed experiment in the queue")
    if start:
        print(f"started the queue (dvc queue start --jobs {jobs}): follow it with `dvc queue status` and "
              "`dvc queue logs -f NAME`")


@cli.command("compare")
@user_errors
def compare_command(experiments: list[str] = typer.Argument(None, help="experiment names (default: every finished "
                                                                          "one)"),
                    reference: str = typer.Option(..., help="the experiment the others are compared with"),
                    out: Path = typer.Option(None, help="a folder for comparison.md, validation.png and "
                                                        "plots/index.html (dvc plots diff)")) -> None:
    """Each experiment's changed params, validation (and test) accuracy and loss, and its difference from the
    reference on the same reviews with the paired standard error; ** marks a difference of two standard errors."""
    root = Path.cwd()
    rows = compare(root, experiments or [], reference)
    table = markdown_table(rows)
    print(table, end="")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "comparison.md").write_text(table)
        plot_curves(root, rows, out / "validation.png")
        names = [row.experiment.name for row in rows]
        result = subprocess.run(["dvc", "plots", "diff", *names, "--targets", "metrics/train/plots/metrics/val",
                                 "-o", str(out / "plots")], capture_output=True, text=True)
        if result.returncode:
            raise DataError(f"dvc plots diff failed: {result.stderr.strip()[-1000:]}")
        print(f"written: {out / 'comparison.md'}, {out / 'validation.png'}, {out / 'plots/index.html'}")


if __name__ == "__main__":
    cli()
