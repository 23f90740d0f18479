"""The math of the distillation losses, as pure functions on tensors (public API).

No parameters, no state: float32 or float64 in, the same dtype out. Each function computes the
loss of one (student, teacher) pair of tensors exactly as the reference Knowledge-Distillation-Zoo
does (seed-zoo.md section 2 has every formula); the method classes in :mod:`kdzoo.methods` add the
weights and average over stages. Tests check every function against a hand-written float64
computation of the formula and with ``torch.autograd.gradcheck``.

The functions live in topic modules (``logits``: losses on logits; ``maps``: losses on feature
maps; ``relations``: losses on relations between samples) and are all importable from here.
"""
import importlib
import pkgutil

__all__: list[str] = []
for _module in pkgutil.iter_modules(__path__):
    _mod = importlib.import_module(f"{__name__}.{_module.name}")
    for _name in _mod.__all__:
        globals()[_name] = getattr(_mod, _name)
        __all__.append(_name)
__all__.sort()
