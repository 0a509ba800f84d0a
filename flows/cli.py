"""`seggen serve` and `seggen deploy`: registered into the seggen command through the `seggen.cli`
entry point (pyproject.toml), so that the flows build on seggen and seggen never imports them."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    @app.command()
    def serve(
        project: Annotated[Path, typer.Option(help="The project the flow runs work in.")] = Path("."),
        limit: Annotated[
            int,
            typer.Option(
                help="Flow runs at a time (each runs in its own worktree of the project, as a DVC experiment)."
            ),
        ] = 1,
    ) -> None:
        """Serve the Prefect deployments at PREFECT_API_URL: full-pipeline, synthesis-only, train-evaluate, and ablation
        where the project has ablation/dvc.yaml."""
        from flows.serve import serve as run

        run(project, limit)

    @app.command()
    def deploy(
        pool: Annotated[
            str, typer.Option(help="Process work pool (`prefect worker start --pool NAME --type process`).")
        ],
        project: Annotated[
            Path, typer.Option(help="The project the flow runs work in (as the worker sees it).")
        ] = Path("."),
    ) -> None:
        """Register the deployments on a process work pool (for a `prefect worker`, e.g. docker compose)."""
        from flows.serve import deploy as run

        for dep_id in run(pool, project):
            typer.echo(f"deployment {dep_id} on pool {pool}")
