"""lnpt.cloud: the mature teacher's side — train it with labels, serve its targets over gRPC.

    from lnpt.cloud import serve, train_teacher

    train_teacher(config, "teacher.pt")                       # labels are used here, in the cloud
    with serve("teacher.pt", port=0, insecure=True, background=True) as address:
        ...                                                   # edge clients dial `address`

Edge devices do not need this package's extra dependencies (health, reflection, Prometheus).
"""
from lnpt.shared.exports import lazy_exports

_OWNERS = {
    "serve": "lnpt.cloud.serving", "BackgroundServer": "lnpt.cloud.background",
    "train_teacher": "lnpt.cloud.teacher_training", "evaluate_checkpoint": "lnpt.cloud.teacher_training",
    "TeacherTrainingInterrupted": "lnpt.cloud.teacher_training",
}
__all__ = list(_OWNERS)
__getattr__, __dir__ = lazy_exports(__name__, _OWNERS)
