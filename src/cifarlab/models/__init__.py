"""Model families; importing this package registers them all. Models of your own come from a file or
module named `FILE.py:NAME` / `package.module:NAME` (external.py); `model_from_config` builds either kind."""
from cifarlab.models.registry import (
    check_budget,
    check_options,
    check_output,
    count_params,
    create_model,
    list_models,
    model_doc,
    model_options,
    register_model,
)
from cifarlab.models import budget_net, keras_cnn, s8_net  # noqa: F401,E402 - registration side effect
from cifarlab.models.external import is_external, model_from_config, resolve  # noqa: E402

__all__ = ["check_budget", "check_options", "check_output", "count_params", "create_model", "is_external",
           "list_models", "model_doc", "model_from_config", "model_options", "register_model", "resolve"]
