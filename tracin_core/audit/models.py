"""Model architectures known to the app, and trusted-factory loading.

* :class:`TutorialCifarNet` is the ``Net`` of Captum's TracInCP CIFAR-10 tutorial, module
  for module (names and definition order), so the tutorial's checkpoints load into it.
* :class:`DigitsCNN` is the small CNN of the built-in digits demo (1x8x8 inputs).
* :func:`resnet18` is torchvision's ResNet-18 without pretrained weights.

:data:`ARCHITECTURES` is the registry the app offers for "upload checkpoints for a
registered architecture". :func:`build_model` builds a model from a
``"package.module:callable"`` path that must already be importable from the server's
Python path: it never executes uploaded code.
"""
from __future__ import annotations

import importlib
import importlib.util
import re
import types
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import nn

__all__ = [
    "TutorialCifarNet",
    "DigitsCNN",
    "FashionCNN",
    "resnet18",
    "ArchitectureSpec",
    "ARCHITECTURES",
    "linear_layer_names",
    "build_model",
    "resolve_factory",
]


class TutorialCifarNet(nn.Module):
    """Captum's TracInCP tutorial CIFAR-10 ``Net`` (identical attributes and order).

    ``state_dict`` keys: conv1.weight, conv1.bias, conv2.weight, conv2.bias, fc1.weight,
    fc1.bias, fc2.weight, fc2.bias, fc3.weight, fc3.bias. Inputs: (N, 3, 32, 32).
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool1 = nn.MaxPool2d(2, 2)
        self.pool2 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)
        self.relu1 = nn.ReLU()
        self.relu2 = nn.ReLU()
        self.relu3 = nn.ReLU()
        self.relu4 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        x = self.fc3(x)
        return x


class DigitsCNN(nn.Module):
    """Small CNN for scikit-learn's 8x8 digits (inputs (N, 1, 8, 8)); last layer ``fc2``.

    No BatchNorm and no dropout, so train/eval mode give the same outputs and per-example
    gradients do not depend on the batch.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 4 * 4, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.conv1(x))
        x = self.pool(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        return self.fc2(x)


def resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18, randomly initialised (never downloads weights); last layer ``fc``.

    Built for 224x224 inputs but, thanks to its adaptive average pooling, it also runs on
    32x32 images.
    """
    from torchvision.models import resnet18 as _tv_resnet18

    return _tv_resnet18(weights=None, num_classes=num_classes)


@dataclass(frozen=True)
class ArchitectureSpec:
    """A registered architecture: how to build it and which layer TracInCPFast uses."""

    name: str
    factory: Callable[..., nn.Module]
    final_fc_layer: str
    input_shape: tuple
    description: str = ""
    num_classes_arg: bool = False
    factory_path: str = field(default="", compare=False)

    def build(self, num_classes: int | None = None) -> nn.Module:
        """Instantiate the model (``num_classes`` only where the factory accepts it)."""
        if num_classes is not None and self.num_classes_arg:
            return self.factory(num_classes=num_classes)
        if num_classes is not None and num_classes != 10:
            raise ValueError(
                f"architecture {self.name!r} has a fixed number of classes (10); "
                f"got num_classes={num_classes}"
            )
        return self.factory()


class FashionCNN(nn.Module):
    """Small CNN for 28x28 grey images (the built-in Fashion-MNIST workspace); last layer ``fc2``.

    Two 3x3 conv + 2x2 max-pool stages (16, 32 channels), then 1568 -> 64 -> classes. No
    BatchNorm and no dropout, as :class:`DigitsCNN`.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(32 * 7 * 7, 64)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        return self.fc2(x)


ARCHITECTURES: dict[str, ArchitectureSpec] = {
    "cifar_net": ArchitectureSpec(
        name="cifar_net",
        factory=TutorialCifarNet,
        final_fc_layer="fc3",
        input_shape=(3, 32, 32),
        description="Captum TracInCP tutorial CIFAR-10 CNN (2 conv + 3 fc layers), 32x32 RGB, 10 classes",
        num_classes_arg=False,
        factory_path="tracin_core.audit.models:TutorialCifarNet",
    ),
    "digits_cnn": ArchitectureSpec(
        name="digits_cnn",
        factory=DigitsCNN,
        final_fc_layer="fc2",
        input_shape=(1, 8, 8),
        description="Small CNN for scikit-learn's 8x8 grey digits (the built-in demo)",
        num_classes_arg=True,
        factory_path="tracin_core.audit.models:DigitsCNN",
    ),
    "fashion_cnn": ArchitectureSpec(
        name="fashion_cnn",
        factory=FashionCNN,
        final_fc_layer="fc2",
        input_shape=(1, 28, 28),
        description="Small CNN for 28x28 grey images (the built-in Fashion-MNIST workspace)",
        num_classes_arg=True,
        factory_path="tracin_core.audit.models:FashionCNN",
    ),
    "resnet18": ArchitectureSpec(
        name="resnet18",
        factory=resnet18,
        final_fc_layer="fc",
        input_shape=(3, 224, 224),
        description="torchvision ResNet-18 (no pretrained weights); 224x224 RGB, also runs at 32x32",
        num_classes_arg=True,
        factory_path="tracin_core.audit.models:resnet18",
    ),
}


def linear_layer_names(model: nn.Module) -> list[str]:
    """Qualified names of the model's ``nn.Linear`` submodules, the last defined first."""
    names = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    return names[::-1]


#: modules that moved when tracin_core split into engine/ and audit/: workspace files
#: (and the workspace.json copies beside existing stores) written before still name them
MOVED_FACTORY_MODULES = {"tracin_core.models": "tracin_core.audit.models"}


def canonical_factory_path(factory_path: str) -> str:
    """``"package.module:callable"`` with a module that moved (:data:`MOVED_FACTORY_MODULES`)
    renamed to where it is now; any other text unchanged (stripped)."""
    text = factory_path.strip()
    module, sep, attr = text.partition(":")
    return MOVED_FACTORY_MODULES.get(module.strip(), module) + sep + attr if sep else text


_FACTORY_RE = re.compile(
    r"^(?P<module>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)"
    r":(?P<attr>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)$"
)


def resolve_factory(factory_path: str) -> Callable[..., Any]:
    """Return the callable named by ``"package.module:callable"``.

    The module must be importable from the server's Python path as it is (checked with
    ``importlib.util.find_spec`` before importing); nothing is read from uploads or
    executed from strings. Raises ``ValueError`` with the reason otherwise.
    """
    if not isinstance(factory_path, str):
        raise ValueError(f"model factory must be a string 'package.module:callable', got {factory_path!r}")
    match = _FACTORY_RE.match(canonical_factory_path(factory_path))
    if match is None:
        raise ValueError(
            f"model factory {factory_path!r} is not of the form 'package.module:callable' "
            "(a module importable on the server, a colon, then the name of a class or function)"
        )
    module_name, attr_path = match.group("module"), match.group("attr")
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:  # parent package missing, etc.
        spec = None
        reason = f"{type(exc).__name__}: {exc}"
    else:
        reason = "no such module on the server's Python path"
    if spec is None:
        raise ValueError(
            f"model factory {factory_path!r}: module {module_name!r} is not importable ({reason}). "
            "Only code already installed on the server can be used as a model factory; "
            "uploaded code is never executed."
        )
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - report any import failure clearly
        raise ValueError(
            f"model factory {factory_path!r}: importing module {module_name!r} failed: "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"model factory {factory_path!r}: {module_name!r} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    if isinstance(obj, type):
        if not issubclass(obj, nn.Module):
            raise ValueError(f"model factory {factory_path!r} names class {obj.__name__}, not a torch.nn.Module subclass")
    elif isinstance(obj, (types.BuiltinFunctionType, types.BuiltinMethodType)) or not callable(obj):
        raise ValueError(
            f"model factory {factory_path!r} names {type(obj).__name__} object; expected an nn.Module "
            "subclass or a Python function that returns one"
        )
    return obj


def build_model(factory_path: str, **kwargs: Any) -> nn.Module:
    """Build a model from ``"package.module:callable"`` (see :func:`resolve_factory`).

    ``kwargs`` are passed to the callable. The result must be an ``nn.Module``.
    """
    factory = resolve_factory(factory_path)
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise ValueError(f"model factory {factory_path!r} could not be called with {kwargs!r}: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise ValueError(
            f"model factory {factory_path!r} returned {type(model).__name__}, not a torch.nn.Module"
        )
    return model
