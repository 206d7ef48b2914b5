"""lnpt.shared: what both sides use — models, input specs, objectives, data sources, config.

    from lnpt.shared import InputSpec, build_model, guided_objective, load_config

    spec = InputSpec(3, 96, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    student = build_model("torchvision:mobilenet_v3_small", num_classes=10, input_spec=spec)
    features, logits = student.features_and_logits(images)   # penultimate features, logits
    objective = guided_objective(gap="mse", lambda_kd=1.0, temperature=4.0)

Importing this package is cheap: each name is imported from its module on first use.
"""
from lnpt.shared.exports import lazy_exports

__version__ = "0.2.0"

_OWNERS = {
    # models
    "build_model": "lnpt.shared.models", "InputSpec": "lnpt.shared.models", "ModelSpec": "lnpt.shared.models",
    "Classifier": "lnpt.shared.models",
    # objectives
    "learning_gap": "lnpt.shared.objectives", "logit_kd": "lnpt.shared.objectives",
    "guided_objective": "lnpt.shared.objectives", "Objective": "lnpt.shared.objectives",
    "Targets": "lnpt.shared.objectives",
    # data sources
    "load_fashion_mnist": "lnpt.shared.data", "prepare_fashion_mnist": "lnpt.shared.data",
    "UnlabeledImageFolder": "lnpt.shared.data", "open_labeled": "lnpt.shared.labeled",
    # configuration and errors
    "Config": "lnpt.shared.config", "load_config": "lnpt.shared.config", "LnptError": "lnpt.shared.errors",
}
__all__ = ["__version__", *_OWNERS]
__getattr__, __dir__ = lazy_exports(__name__, _OWNERS)
