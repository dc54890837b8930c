"""Text tokenizers: encode texts to the fixed-length id arrays of the batch format
(gemb/batch.py: 0 = padding), save and load them.

``Tokenizer``: a sentencepiece unigram model trained in memory on the training texts, for
gemb's own transformer (the `sentencepiece` package, Apache-2.0; trained on gemb's own data,
see gemb/data/pipeline.py:tokenizer_corpus). Special ids: pad 0, unk 1, bos 2, eos 3.
`encode` adds neither bos nor eos: every valid token is a piece of the text, and the model
tells text apart from padding by id 0 alone.

``PretrainedTokenizer``: a pretrained backbone's own tokenizer.json through the Hugging Face
`tokenizers` library (Apache-2.0), with the checkpoint's framing ([CLS] ... [SEP] for BERT,
<bos> ... <eos> for Gemma: the file's post-processor) and truncation at the checkpoint's
max_seq_length, so ids equal those sentence-transformers feeds the model. Its saved form is
one tokenizer.json that carries that truncation.

``load(path)`` opens either kind by its file name (tokenizer.model / tokenizer.json).
"""
from collections.abc import Iterable, Sequence
import io
import json
import os
import threading

import numpy as np
import sentencepiece as spm

from gemb import batch

PAD_ID, UNK_ID, BOS_ID, EOS_ID = batch.PAD_ID, 1, 2, 3


class Tokenizer:
  """A sentencepiece model; picklable, so grain worker processes can use it."""

  def __init__(self, model_proto: bytes):
    self._proto = bytes(model_proto)
    self._sp = spm.SentencePieceProcessor(model_proto=self._proto)
    if self._sp.pad_id() != PAD_ID:
      raise ValueError(f"tokenizer pad id is {self._sp.pad_id()}, the batch format needs "
                       f"{PAD_ID}")

  @classmethod
  def train(cls, texts: Iterable[str], vocab_size: int) -> "Tokenizer":
    """Trains a unigram model; the same texts and vocab_size give the same model bytes.

    vocab_size is an upper bound: small corpora yield fewer pieces (hard_vocab_limit=False)
    instead of an error.
    """
    texts = [t for t in texts if t.strip()]
    if not texts:
      raise ValueError("Tokenizer.train got no non-empty texts")
    if vocab_size < 8:
      raise ValueError(f"vocab_size={vocab_size} leaves no room next to the 4 special ids")
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts),
        model_writer=model,
        model_type="unigram",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
        # Every character of the corpus gets a piece (names have accents: "piñata").
        character_coverage=1.0,
        # Determinism: one thread and no sentence sampling.
        num_threads=1,
        input_sentence_size=0,
        shuffle_input_sentence=False,
        minloglevel=2,  # Training logs are long; keep warnings and errors only.
    )
    return cls(model.getvalue())

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      f.write(self._proto)

  @classmethod
  def load(cls, path: str) -> "Tokenizer":
    with open(path, "rb") as f:
      return cls(f.read())

  @property
  def vocab_size(self) -> int:
    return self._sp.get_piece_size()

  @property
  def model_proto(self) -> bytes:
    return self._proto

  def encode(self, texts: str | Sequence[str], max_len: int) -> np.ndarray:
    """int32 [n, max_len] ids, truncated to max_len and padded with PAD_ID."""
    if isinstance(texts, str):
      texts = [texts]
    if max_len < 1:
      raise ValueError(f"max_len must be positive, got {max_len}")
    out = np.full((len(texts), max_len), PAD_ID, np.int32)
    for i, ids in enumerate(self._sp.encode(list(texts), out_type=int)):
      ids = ids[:max_len]
      out[i, :len(ids)] = ids
    return out

  def decode(self, ids) -> str | list[str]:
    """Text of one id row ([L] -> str) or of several ([n, L] -> list); padding is skipped."""
    ids = np.asarray(ids)
    if ids.ndim == 1:
      return self._sp.decode([int(i) for i in ids if i != PAD_ID])
    if ids.ndim == 2:
      return [self.decode(row) for row in ids]
    raise ValueError(f"decode expects ids of rank 1 or 2, got shape {ids.shape}")

  def __getstate__(self):
    return {"model_proto": self._proto}

  def __setstate__(self, state):
    self.__init__(state["model_proto"])


class PretrainedTokenizer:
  """A Hugging Face tokenizer.json; picklable (grain workers) and thread-safe (serving).

  The padding id must be 0, the batch format's: real tokens are never id 0 then.
  ``max_length`` caps every encode (the truncation stored in the file when None).
  """

  # A task instruction is the prefix of the text it instructs, tokenized with it (one
  # [CLS] ... [SEP]), as sentence-transformers applies prompts: gemb.data.examples.instructed.
  joins_instructions = True

  def __init__(self, json_text: str, max_length: int | None = None, *, where="tokenizer.json"):
    import tokenizers  # only backbone runs need it

    self._where = where
    try:
      tok = tokenizers.Tokenizer.from_str(json_text)
    except Exception as e:  # tokenizers raises its own Exception type
      raise ValueError(f"{where}: not a Hugging Face tokenizer file: {e}") from e
    stored = (tok.truncation or {}).get("max_length")
    self.max_length = int(max_length or stored or 1 << 30)
    pad = (json.loads(json_text).get("padding") or {}).get("pad_id")
    if pad is None:
      pad = next((tok.token_to_id(t) for t in ("[PAD]", "<pad>", "<PAD>")
                  if tok.token_to_id(t) is not None), None)
    if pad != PAD_ID:
      raise ValueError(f"{where}: padding id is {pad}, gemb's batch format needs {PAD_ID}")
    tok.no_padding()
    tok.enable_truncation(max_length=self.max_length)
    self._tok = tok
    self._json = tok.to_str()
    self._by_length = {self.max_length: tok}
    self._lock = threading.Lock()

  @classmethod
  def from_checkpoint(cls, path: str, max_length: int) -> "PretrainedTokenizer":
    with open(path, encoding="utf-8") as f:
      return cls(f.read(), max_length, where=path)

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
      f.write(self._json)

  @classmethod
  def load(cls, path: str) -> "PretrainedTokenizer":
    with open(path, encoding="utf-8") as f:
      return cls(f.read(), where=path)

  @property
  def vocab_size(self) -> int:
    """Pieces of the model, without the added tokens (Gemma's tokenizer.json adds one past
    the embedding table: an image placeholder that text never yields)."""
    return self._tok.get_vocab_size(with_added_tokens=False)

  @property
  def file_bytes(self) -> bytes:
    return self._json.encode("utf-8")

  def _truncating_at(self, length):
    """A copy of the tokenizer truncating at ``length`` (special tokens kept, as HF does)."""
    with self._lock:
      if length not in self._by_length:
        import tokenizers
        tok = tokenizers.Tokenizer.from_str(self._json)
        tok.enable_truncation(max_length=length)
        self._by_length[length] = tok
      return self._by_length[length]

  def encode(self, texts: str | Sequence[str], max_len: int) -> np.ndarray:
    """int32 [n, max_len]: framed ids truncated to min(max_len, max_length), PAD_ID after."""
    if isinstance(texts, str):
      texts = [texts]
    if max_len < 1:
      raise ValueError(f"max_len must be positive, got {max_len}")
    tok = self._truncating_at(min(max_len, self.max_length))
    out = np.full((len(texts), max_len), PAD_ID, np.int32)
    for i, enc in enumerate(tok.encode_batch(list(texts), add_special_tokens=True)):
      out[i, :len(enc.ids)] = enc.ids
    return out

  def decode(self, ids) -> str | list[str]:
    ids = np.asarray(ids)
    if ids.ndim == 1:
      return self._tok.decode([int(i) for i in ids if i != PAD_ID], skip_special_tokens=True)
    if ids.ndim == 2:
      return [self.decode(row) for row in ids]
    raise ValueError(f"decode expects ids of rank 1 or 2, got shape {ids.shape}")

  def __getstate__(self):
    return {"json": self._json, "where": self._where}

  def __setstate__(self, state):
    self.__init__(state["json"], where=state["where"])


# The file names each kind is saved under (in a run's workdir and in serving bundles).
SENTENCEPIECE_FILE, PRETRAINED_FILE = "tokenizer.model", "tokenizer.json"


def load(path: str):
  """The tokenizer saved at ``path``: tokenizer.json (pretrained) or a sentencepiece model."""
  if path.endswith(".json"):
    return PretrainedTokenizer.load(path)
  return Tokenizer.load(path)


def backbone_tokenizer(checkpoint):
  """The own tokenizer (tokenizer.json) of a pretrained backbone checkpoint (a
  gemb.model.backbone.read_checkpoint result), truncating at its max_seq_length."""
  tok = PretrainedTokenizer.from_checkpoint(checkpoint.tokenizer_file, checkpoint.max_seq_length)
  vocab = int(checkpoint.hf_config.get("vocab_size", 0))
  if tok.vocab_size > vocab:
    raise ValueError(f"{checkpoint.tokenizer_file}: {tok.vocab_size} tokens, but "
                     f"{checkpoint.path}/config.json has vocab_size={vocab}")
  return tok
