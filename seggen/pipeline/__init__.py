"""The pipeline's plumbing around the stage code: the stage functions that DVC, the CLI and Prefect call
(stages.py), MLflow runs, models and registry, the pre-flight and CI checks, and DVC's code deps.

    stages.py          one function per stage: resolves the arm, runs the stage code inside its MLflow run
    tracking.py        MLflow stage runs and lineage; tracking_server.py: the server, its credentials
    mlflow_models.py   the pyfunc models; registry.py: promotion and aliases
    preflight.py       every pretrained model the params name, resolved before anything computes
    ci_check.py        the mIoU gate; codedeps.py: dvc.yaml's generated code deps; dvcstage.py: DVC's
                       templates; params_doc.py: docs/params.md

May import every package of seggen; only the CLI and flows/ import it.
"""
