"""Reading the parts of a role's network (``Step.networks``, ``MethodContext.networks``) that
some methods reuse: its classifier and the classifier's weight (SDD, CAT-KD, WKD, SRD, SimKD).
Never for running the network: a method gets other inputs' features from ``Step.run``."""
from __future__ import annotations

from torch import Tensor, nn

from ..errors import ConfigError
from ..models.features import FeatureNet


def feature_net(network: nn.Module) -> FeatureNet:
    """``network`` as the kdzoo network every role's network is."""
    if not isinstance(network, FeatureNet):
        raise TypeError(f"a role's network must be a kdzoo FeatureNet, got a "
                        f"{type(network).__name__}")
    return network


def classifier_layer(network: nn.Module) -> nn.Module:
    """The module of ``network`` that maps its pooled feature to the logits."""
    return feature_net(network).classifier_layer()


def classifier_weight(network: nn.Module, method: str) -> Tensor:
    """The (classes x features) weight of ``network``'s classifier (its only ``nn.Linear``),
    which maps the pooled feature to the logits."""
    linears = [m for m in classifier_layer(network).modules() if isinstance(m, nn.Linear)]
    if len(linears) != 1:
        raise ConfigError(f"method {method} reads the classifier weights of the networks, and "
                          f"{getattr(network, 'model_name', '') or 'one'}'s classifier is not a "
                          "single linear layer")
    return linears[0].weight
