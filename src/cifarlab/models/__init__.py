"""Model families; importing this package registers them all."""
from cifarlab.models.registry import (
    check_budget,
    count_params,
    create_model,
    list_models,
    model_doc,
    model_options,
    register_model,
)
from cifarlab.models import budget_net, keras_cnn, s8_net  # noqa: F401,E402 - registration side effect

__all__ = ["check_budget", "count_params", "create_model", "list_models", "model_doc", "model_options",
           "register_model"]
