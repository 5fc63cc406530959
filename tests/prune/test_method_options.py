"""Each pruning method's options are one typed object, used by the library, the config and the docs;
adding a method means one module and one register() call (walked here with a toy method)."""

from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from llm_compression.config import ConfigError, validate_config
from llm_compression.options.pruning import (
    METHODS,
    MethodOptions,
    PruningMethod,
    SparseGPTOptions,
    option,
    options_markdown,
    register,
    unregister,
)
from llm_compression.planning import Plan
from llm_compression.prune import prune_model

ROOT = Path(__file__).resolve().parents[2]


def test_docs_options_table_is_generated_from_the_options_objects():
    readme = (ROOT / "docs" / "configuration.md").read_text()
    start, end = "<!-- pruning-options:start -->\n", "<!-- pruning-options:end -->"
    assert start in readme and end in readme
    block = readme[readme.index(start) + len(start):readme.index(end)]
    assert block == options_markdown(), (
        "docs/configuration.md's pruning options table is stale; regenerate it with "
        "python -c 'from llm_compression.options.pruning import options_markdown; print(options_markdown())'")


def test_one_default_per_option():
    """SparseGPT's defaults are defined once: the science module reads them from the options object."""
    from llm_compression.prune import sparsegpt

    assert (sparsegpt.DEFAULT_BLOCKSIZE, sparsegpt.DEFAULT_PERCDAMP) == (SparseGPTOptions.blocksize,
                                                                         SparseGPTOptions.percdamp)
    with pytest.raises(ValueError, match="multiple of M=8"):
        SparseGPTOptions.from_mapping({"blocksize": 20}, level="4:8")
    with pytest.raises(ValueError, match="does not take option"):
        SparseGPTOptions.from_mapping({"scope": "row"})


# --------------------------------------------------------------------------- a toy method, end to end


@dataclass(frozen=True)
class StrideOptions(MethodOptions):
    """Toy method: zero every ``stride``-th input column of each prunable Linear."""

    method = "toy-stride"
    stride: int = option(2, "zero every stride-th input column (>= 2)")

    def validate(self, level: str) -> None:
        super().validate(level)
        if not isinstance(self.stride, int) or self.stride < 2:
            raise ValueError(f"toy-stride stride {self.stride!r} must be an integer >= 2")


def run_stride(model, *, options, **_) -> dict:
    from llm_compression.modules import prunable_linears

    for lin in prunable_linears(model).values():
        lin.weight[:, :: options.stride] = 0
    return {}


@pytest.fixture
def toy_method():
    register(PruningMethod("toy-stride", StrideOptions, ("unstructured",), False, run_stride))
    yield METHODS["toy-stride"]
    unregister("toy-stride")


def _config(**entry):
    return {"model": {"name": "tiny", "source": "embedded:smollm2-135m"},
            "grid": {"pruning": [{"method": "toy-stride", "ratios": [0.5], **entry}]},
            "evaluation": {"perplexity": {"datasets": {"ptb": {}}}}}


def test_a_registered_toy_method_validates_plans_and_prunes(toy_method, model):
    cfg = validate_config(_config(stride=4), check_model=False)
    plan = Plan(cfg)
    segs = [v.pruning.segment for v in plan.variants]
    assert "toy-stride_unstructured_0.5_x1" in segs
    assert plan.prune_params("toy-stride_unstructured_0.5_x1") == {
        "method": "toy-stride", "level": "unstructured", "ratio": 0.5, "repeat": 1, "stride": 4}  # no calibration
    with pytest.raises(ConfigError, match=r"grid\.pruning\[0\]: toy-stride stride 1 must be an integer >= 2"):
        validate_config(_config(stride=1), check_model=False)
    with pytest.raises(ConfigError, match="does not take 'blocksize'"):
        validate_config(_config(blocksize=64), check_model=False)
    res = prune_model(model, method="toy-stride", ratio=0.5, stride=4)
    assert res["sparsity_after"] == pytest.approx(0.25, abs=1e-6)
    with torch.no_grad():
        for lin in [m for n, m in model.named_modules() if n.endswith("q_proj")]:
            assert bool((lin.weight[:, ::4] == 0).all())


def test_an_unregistered_method_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown pruning method 'toy-stride'"):
        prune_model(torch.nn.Linear(2, 2), method="toy-stride")
    with pytest.raises(ConfigError, match="'toy-stride' is not one of"):
        validate_config(_config(), check_model=False)


def test_schema_file_agrees_with_the_options_objects():
    """The schema file keeps enums and defaults for readers; they must say what the options objects say."""
    import re

    import yaml

    from llm_compression.config import SCHEMA_PATH

    props = yaml.safe_load(SCHEMA_PATH.read_text())["properties"]["grid"]["properties"]["pruning"]["items"][
        "properties"]
    for spec in METHODS.values():
        for name in spec.options.names(config_only=True):
            assert name in props, f"schema lacks option {name!r} of {spec.name!r}"
            f = spec.options.__dataclass_fields__[name]
            if f.metadata.get("choices"):
                assert set(props[name]["enum"]) == set(f.metadata["choices"]), name
            m = re.search(r"\(default ([^;),]+)", props[name].get("description", ""))
            if m and f.default is not None and not isinstance(f.default, bool):
                assert m.group(1).strip() == str(f.default), (name, m.group(1), f.default)
