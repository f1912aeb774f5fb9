"""model.kind = "module": your own nn.Module, trained by the one loop from Python.

    trainlab.train("digits-mlp", model=MyNet(), objective=my_loss)   # see trainlab.api

The run's config.toml records the class (`model.target`, "package.module:Class") so that the run folder says
what was trained; the weights are in model/model.safetensors like any other run's. trainlab cannot construct
your class by itself, so the commands that rebuild a model (`trainlab eval`, `report`, `predict`, resume) take
it from you: `trainlab.load(run_dir, model=MyNet())`, `trainlab.train(..., model=MyNet(), resume=True)`.
"""

from __future__ import annotations

from typing import Literal

from trainlab import registry
from trainlab.config import NetworkTable, ObjectiveTable
from trainlab.errors import UserError


class ModuleConfig(NetworkTable):
    kind: Literal["module"] = "module"
    target: str = ""  # the class that was trained, "package.module:Class" (recorded, not imported)


class CustomObjective(ObjectiveTable):
    kind: Literal["custom"] = "custom"
    target: str = ""  # the objective that was used, "package.module:name" (recorded, not imported)


def qualified_name(obj) -> str:
    """"package.module:Class" of an object (its class when it is an instance)."""
    t = obj if isinstance(obj, type) or callable(obj) and hasattr(obj, "__qualname__") else type(obj)
    return f"{getattr(t, '__module__', '?')}:{getattr(t, '__qualname__', type(obj).__name__)}"


@registry.model("module", ModuleConfig, consumes={"features", "images", "tokens"},
                produces={"predictions", "token_logits"}, objective="supervised")
def build(cfg: ModuleConfig, info: dict):
    """Your own nn.Module, passed to trainlab.train(model=...) from Python."""
    raise UserError(f"this run trained your own nn.Module ({cfg.target or 'model.kind = module'}), which trainlab "
                    "cannot construct by itself",
                    "pass an instance from Python: trainlab.load(run_dir, model=MyNet()) or "
                    "trainlab.train(..., model=MyNet(), resume=True)")


@registry.objective("custom", CustomObjective)
def build_objective(cfg: CustomObjective, info: dict):
    """Your own objective, passed to trainlab.train(objective=...) from Python."""
    raise UserError(f"this run used your own objective ({cfg.target or 'objective.kind = custom'}), which trainlab "
                    "cannot construct by itself", "pass it from Python: trainlab.train(..., objective=my_loss, resume=True)")
