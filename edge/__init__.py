"""lnpt.edge: what runs on the device — prune before training, train label-free, evaluate, export.

    from lnpt.edge import open_teacher, prune, train, evaluate, export

    with open_teacher("10.0.0.5:50051") as teacher:        # or a teacher file, offline
        pruned = prune("lenet5", teacher, "photos/", sparsity=0.9, out="student.pt")
        trained = train("student.pt", teacher, "photos/", epochs=3)
    print(evaluate(trained.out, "labeled-test/").accuracy)
    export(trained.out, "student.onnx", storage="sparse")

`run_edge_job` runs the whole job (prune once, train with resume, export once) as `lnpt edge run`
does. Every function takes Python objects and returns a result dataclass; see docs/API.md.
"""
from lnpt.shared.exports import lazy_exports

_OWNERS = {
    "open_teacher": "lnpt.edge.teachers", "TargetSource": "lnpt.edge.teachers",
    "prune": "lnpt.edge.pruning.prune", "PruneResult": "lnpt.edge.pruning.prune",
    "train": "lnpt.edge.training.train", "TrainResult": "lnpt.edge.training.trainer",
    "TrainingInterrupted": "lnpt.edge.training.trainer",
    "evaluate": "lnpt.edge.evaluation", "EvalResult": "lnpt.edge.evaluation",
    "export": "lnpt.edge.onnx.pipeline", "ExportResult": "lnpt.edge.onnx.pipeline",
    "run_edge_job": "lnpt.edge.job", "EdgeJobResult": "lnpt.edge.job",
    "Student": "lnpt.edge.student",
    "prune_to_budget": "lnpt.edge.pruning.budget", "Budget": "lnpt.edge.pruning.budget",
    "BudgetError": "lnpt.edge.pruning.budget",
}
__all__ = list(_OWNERS)
__getattr__, __dir__ = lazy_exports(__name__, _OWNERS)
