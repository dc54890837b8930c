"""Text tokenizer: a sentencepiece unigram model trained in memory on the training texts.

Owns training, saving/loading and batch encoding to the fixed-length id arrays of the batch
format (gemb/batch.py: 0 = padding). Uses the `sentencepiece` package (Apache-2.0);
the model is trained on gemb's own data (see gemb/data/pipeline.py:tokenizer_corpus).
Special ids: pad 0, unk 1, bos 2, eos 3. `encode` adds neither bos nor eos: every valid
token is a piece of the text, and the model tells text apart from padding by id 0 alone.
"""
from collections.abc import Iterable, Sequence
import io
import os

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
