"""The accuracy grid's profiles and what decides each arm's training (`lnpt analyze grid --profile`).

A profile names the student, the teacher, the data sizes, the scores, arms, sparsities, seeds and the
structured rows; `arms` holds each arm's own settings (lr, epochs, the guided objective). `run_key` and
`planned_runs` name and order the runs; `arm_settings` turns a profile and an arm into its Recipe and
objective settings. The runner is lab/paper/grid.py, the reports lab/paper/grid_report.py.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The registered pruning scores (edge.pruning.scorers.SCORERS), in the order the grid reports them.
SCORES = ("lnpt", "lnpt-progressive", "snip", "grasp", "synflow", "magnitude", "random")
ONE_SHOT_SCORES = tuple(s for s in SCORES if s != "lnpt-progressive")  # the quick profile's record
TRAININGS = ("guided", "supervised")
DENSE = "dense"
# Channel importance of the structured rows -> Torch-Pruning criterion (edge.pruning.structured).
CHANNEL_IMPORTANCES = {"lnpt": "taylor", "magnitude": "magnitude", "random": "random"}
CHANNELS = "channels:"  # a structured row's score is CHANNELS + importance, e.g. "channels:lnpt"


@dataclass(frozen=True)
class Profile:
    name: str
    student: str
    teacher: str
    teacher_train_samples: int  # 0 = all 60k
    teacher_epochs: int
    train_samples: int  # the student's (edge) training set; 0 = all
    test_samples: int  # 0 = the whole 10k test set
    epochs: int
    batch_size: int = 64
    # Every arm's optimizer and learning rate unless `arms` says otherwise. Adam, because SGD left sparse LeNet-5s (no batch
    # norm: the signal fades through layers thinned to a few %) stuck at chance for epochs, and
    # because it is indifferent to the guided loss's larger scale (KD carries tau^2 = 16), where SGD
    # needed a different learning rate per arm (docs/RESULTS.md).
    optimizer: str = "adam"
    lr: float = 5e-3
    weight_decay: float = 0.0
    prune_samples: int = 100  # 10 x classes, as in the paper
    scores: tuple[str, ...] = SCORES
    trainings: tuple[str, ...] = TRAININGS
    sparsities: tuple[float, ...] = (0.9, 0.95, 0.98, 0.99)
    seeds: tuple[int, ...] = (0, 1)
    device: str = "cpu"
    channel_ratios: tuple[float, ...] = ()  # structured rows: channel ratio removed; () = none
    channel_importances: tuple[str, ...] = tuple(CHANNEL_IMPORTANCES)
    # The label-scarce arms: supervised on a seeded, class-balanced share of the images only
    # ("supervised@0.01"), trained as many steps as the arms on all images, on the dense student and
    # on the masks of `scarce_scores`.
    label_fractions: tuple[float, ...] = ()
    scarce_scores: tuple[str, ...] = ("lnpt",)
    # Per-arm settings that differ from the profile's (lr, epochs, optimizer; "objective": the guided
    # objective's [objective] keys), e.g. {"guided": {"lr": 0.01}}: each arm gets its own best setting.
    arms: dict = field(default_factory=dict)
    teacher_file: str = ""  # the profile's kept teacher (used when --teacher is not given)
    progressive_rounds: int = 3  # rounds of the lnpt-progressive score (the study's best, docs/results/objective-study)
    notes: str = field(default="", compare=False)

    @property
    def scarce_trainings(self) -> tuple[str, ...]:
        return tuple(f"supervised@{f:g}" for f in self.label_fractions)


# The guided objective before the study chose today's [objective] defaults: where the study starts, and
# what the quick profile's recorded results were trained with (so they stay reproducible).
OBJECTIVE_BEFORE_STUDY: dict = {"gap": "mse", "lambda_gap": 1.0, "lambda_kd": 1.0, "temperature": 4.0,
                                "projector": "learned"}

# Chosen by `lnpt analyze objective` on a class-balanced 10 % validation split of the training images
# (docs/results/objective-study/study.md; seed 0, LNPT masks at 95 and 98 %), never on the test set.
ARMS_STANDARD: dict = {
    "guided": {"lr": 0.01, "epochs": 10, "objective": {"gap": "normalized", "lambda_gap": 1.0, "lambda_kd": 1.0,
                                                      "temperature": 1.0, "projector": "fixed"}},
    "supervised": {"lr": 0.01, "epochs": 10},
    "supervised@0.01": {"lr": 0.005, "epochs": 1},  # as many steps as 1 epoch on all images
    "supervised@0.1": {"lr": 0.005, "epochs": 5},
}


PROFILES = {
    "tiny": Profile("tiny", "lenet5", "lenet5", 1000, 1, train_samples=256, test_samples=256, epochs=1,
                    prune_samples=32, scores=("lnpt", "magnitude"), sparsities=(0.9,), seeds=(0,),
                    channel_ratios=(0.5,), label_fractions=(0.1,), arms={"guided": {"lr": 0.01}},
                    notes="smoke test only: numbers mean nothing"),
    "quick": Profile("quick", "lenet5", "lenet5", 0, 10, train_samples=10000, test_samples=0, epochs=5,
                     scores=ONE_SHOT_SCORES, arms={"guided": {"objective": OBJECTIVE_BEFORE_STUDY}},
                     notes="2-core CPU: LeNet-5 teacher trained on all 60k labelled images for 10 epochs (the cloud), "
                           "LeNet-5 students on a 10k-image subset (the edge), 5 epochs, no augmentation"),
    # The evidence profile (docs/RESULTS.md): the kept mature ResNet-20 teacher, LeNet-5 students (another
    # architecture and width: the projector is used) on all 60k images as unlabeled data, 3 seeds; label-
    # scarce arms; channel rows. ARMS_STANDARD: each arm's settings from `lnpt analyze objective`
    # (docs/results/objective-study/), chosen on a validation split of the training images.
    "standard": Profile("standard", "lenet5", "resnet20", 0, 30, train_samples=0, test_samples=0, epochs=5,
                        sparsities=(0.9, 0.95, 0.98), seeds=(0, 1, 2), channel_ratios=(0.3, 0.5, 0.7),
                        label_fractions=(0.01, 0.1), arms=ARMS_STANDARD,
                        teacher_file="docs/results/mature-teacher/resnet20-fmnist.pt",
                        notes="2-core CPU, two shards of one thread: mature ResNet-20 teacher (kept file), "
                              "LeNet-5 students on all 60k images, per-arm settings from the study, 3 seeds"),
    "full": Profile("full", "resnet20", "resnet32", 0, 60, train_samples=0, test_samples=0, epochs=40,
                    lr=1e-3, seeds=(0, 1, 2), device="cuda", channel_ratios=(0.3, 0.5, 0.7),
                    notes="GPU: ResNet-32 teacher, ResNet-20 students on all 60k images, 40 epochs"),
}


def run_key(score: str, training: str, sparsity: float, seed: int) -> str:
    return f"{score}|{training}|{sparsity:g}|{seed}"


def planned_runs(profile: Profile) -> list[tuple[str, str, float, int]]:
    """Seed by seed (a stopped grid has complete seeds first), dense references first, structured
    rows last; a structured row's third element is its channel ratio."""
    runs = []
    scarce = profile.scarce_trainings
    for seed in profile.seeds:
        runs += [(DENSE, training, 0.0, seed) for training in profile.trainings + scarce]
        runs += [(score, training, sparsity, seed) for sparsity in profile.sparsities for score in profile.scores
                 for training in profile.trainings + (scarce if score in profile.scarce_scores else ())]
        runs += [(CHANNELS + importance, training, ratio, seed) for ratio in profile.channel_ratios
                 for importance in profile.channel_importances for training in profile.trainings]
    return runs


def arm_settings(profile: Profile, training: str) -> tuple[Any, Any]:
    """(Recipe, ObjectiveConfig or None) of one arm: the profile's settings with the arm's own on top.
    A label-scarce arm ("supervised@F") falls back to "supervised"'s settings."""
    from lnpt.lab.paper import experiment as ex
    from lnpt.shared.config import ObjectiveConfig

    own = profile.arms.get(training, profile.arms.get(training.partition("@")[0], {}))
    recipe = ex.Recipe(own.get("epochs", profile.epochs), profile.batch_size, own.get("lr", profile.lr),
                       weight_decay=own.get("weight_decay", profile.weight_decay),
                       optimizer=own.get("optimizer", profile.optimizer))
    objective = ObjectiveConfig(**own.get("objective", {})) if ex.label_fraction(training) == 0.0 else None
    return recipe, objective


def arm_dict(profile: Profile, training: str) -> dict[str, Any]:
    """An arm's settings written out in full: {"lr", "epochs", "objective" (guided only)}."""
    recipe, objective = arm_settings(profile, training)
    settings: dict[str, Any] = {"lr": recipe.lr, "epochs": recipe.epochs}
    if objective is not None:
        settings["objective"] = asdict(objective)
    return settings


def describe_settings(settings: dict[str, Any]) -> str:
    """A short, readable name of one arm's settings: 'lr 0.005, 5 ep, LG mse/learned + 1 x KD tau 4'."""
    text = f"lr {settings['lr']:g}, {settings['epochs']} ep"
    objective = settings.get("objective")
    if objective:
        terms = []
        if objective["lambda_gap"]:
            terms.append(f"{objective['lambda_gap']:g} x LG {objective['gap']}/{objective['projector']}")
        if objective["lambda_kd"]:
            terms.append(f"{objective['lambda_kd']:g} x KD tau {objective['temperature']:g}")
        text += ", " + " + ".join(terms)
    return text


def kept_file(relative: str) -> Path:
    """A file kept in the repository (docs/results/...): found from the current folder, else from the
    checkout this module runs from."""
    here = Path(relative)
    checkout = Path(__file__).resolve().parents[2] / relative
    return checkout if not here.exists() and checkout.exists() else here
