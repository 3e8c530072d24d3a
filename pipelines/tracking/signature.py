"""What a registered model says about itself: its pyfunc signature and its serving environment."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def requirements() -> list[str]:
    """The serving environment: our own pins (so mlflow does not load the model to infer them)."""
    names = ("tensorflow-cpu", "keras", "mlflow", "nibabel", "scipy", "numpy", "pandas", "onnxruntime")
    out = []
    for name in names:
        try:
            out.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    return out


def _mlflow_type(kind):
    from mlflow.types.schema import Array

    if isinstance(kind, tuple):  # ("array", depth): nested lists of doubles
        out = "double"
        for _ in range(kind[1]):
            out = Array(out)
        return out
    return kind


def export_signature(plan: dict):
    """The pyfunc signature of a bundle plan: its task's columns (medflow/inference/serving.py documents them)."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    from medflow.inference.plan import InferencePlan
    from medflow.tasks import task_for

    typed = InferencePlan.from_json(plan)
    inputs, outputs = task_for(typed.family).signature(typed)

    def cols(specs):
        return [ColSpec(_mlflow_type(kind), name, required=required) for name, kind, required in specs]

    schema_in = Schema([ColSpec("string", "case", required=False), *cols(inputs)])
    schema_out = Schema([ColSpec("string", "case"), ColSpec("string", "error"), *cols(outputs)])
    return ModelSignature(inputs=schema_in, outputs=schema_out,
                          params=ParamSchema([ParamSpec("output_dir", "string", "")]))
