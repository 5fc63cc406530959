import pytest

from llm_compression.variants import Pruning, Variant, artifact_dir, format_ratio, metrics_path, pruned_dir


@pytest.mark.parametrize("p", [Pruning("dense"), Pruning("wanda", "unstructured", 0.5, 1),
                               Pruning("magnitude", "2:4", 0.5, 1), Pruning("wanda", "unstructured", 0.75, 3)])
def test_segment_roundtrip(p):
    assert Pruning.from_segment(p.segment) == p


def test_paths():
    w2 = Pruning("wanda", "unstructured", 0.5, 2)
    assert w2.segment == "wanda_unstructured_0.5_x2"
    assert w2.parent() == Pruning("wanda", "unstructured", 0.5, 1)
    assert pruned_dir("m", Pruning("dense")) == "m/base"
    assert artifact_dir("m", Variant(w2)) == "m/pruned/wanda_unstructured_0.5_x2"
    assert artifact_dir("m", Variant(w2, "none", "nf4-dq")) == "m/quantized/wanda_unstructured_0.5_x2/none/nf4-dq"
    assert metrics_path("m", Variant(w2), "ppl-ptb") == "m/metrics/wanda_unstructured_0.5_x2/none/none/ppl-ptb.json"
    assert format_ratio(0.1 + 0.2) == "0.3" and format_ratio(0.75) == "0.75"


def test_bad_segment():
    with pytest.raises(ValueError, match="not 'dense' nor of the form"):
        Pruning.from_segment("wanda-0.5")
