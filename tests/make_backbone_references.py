"""Writes the reference fixtures that gemb's pretrained backbones are tested against.

    pip install -e .[reference]        # torch, sentence-transformers, transformers (CPU)
    python -m gemb.pretrained fetch all-minilm-l6-v2
    python tests/make_backbone_references.py all-minilm-l6-v2 [--dir=MODEL_DIR]
    python -m gemb.pretrained fetch embeddinggemma-300m
    python tests/make_backbone_references.py embeddinggemma-300m [--dir=MODEL_DIR]

For one sentence-transformers model directory it runs the published implementation
(sentence-transformers on transformers on torch, CPU, float32) over ``texts(name)`` and saves
tests/fixtures/backbones/<name>.npz with:

  texts           [T] unicode            the inputs (no prompt is added; some texts carry one)
  input_ids       int32 [T, L]           the reference tokenizer's ids, padded to the longest
  attention_mask  int32 [T, L]           1 = token, 0 = padding
  pooled          float32 [T, D]         the Pooling module's output (before Dense / Normalize)
  embedding       float32 [T, D_out]     SentenceTransformer.encode's output
  metadata        JSON string            versions, max_seq_length, model files' sha256, ...

No per-token hidden states: the files stay small enough to commit, and the parity tests in
CI compare what a user of the model sees. Run it again only when the reference changes.
"""

import argparse
import json
import os
import platform
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # this checkout's gemb, also when not installed

from gemb.pretrained.fetch import default_dir, sha256_file  # noqa: E402

OUT_DIR = os.path.join(HERE, "fixtures", "backbones")

# Short texts: every length class down to one word, several scripts, code, emoji, whitespace.
SHORT = [
    "",
    "a",
    "Paris",
    "?",
    "🙂",
    "👍🏽",
    "東京",
    "the",
    "The capital of France is Paris.",
    "What is the capital of France?",
    "Berlin is the capital and largest city of Germany.",
    "La capitale de la France est Paris, sur la Seine.",
    "Où se trouve la tour Eiffel ? À Paris, évidemment.",
    "¿Dónde está la biblioteca? Está al lado de la estación.",
    "El niño comió una manzana roja en el jardín de su abuela.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Die Straße ist nass, weil es gestern Abend geregnet hat.",
    "北京是中华人民共和国的首都。",
    "我喜欢在周末读书和喝茶。",
    "القاهرة هي عاصمة جمهورية مصر العربية.",
    "أحب القراءة في المساء مع كوب من الشاي.",
    "Москва — столица России.",
    "東京は日本の首都です。",
    "서울은 대한민국의 수도입니다.",
    "नमस्ते, आप कैसे हैं?",
    "Η Αθήνα είναι η πρωτεύουσα της Ελλάδας.",
    "I love pizza 🍕🍕🍕 and sunny days ☀️!",
    "🎉🎂🎈 Happy birthday! 🥳",
    "thumbs up 👍 medium-dark skin tone 👍🏾",
    "def add(a, b):\n    return a + b",
    "import numpy as np\nx = np.zeros((3, 4), dtype=np.float32)",
    "for i in range(10):\n    if i % 2 == 0:\n        print(f\"{i} is even\")",
    "class Stack:\n    def __init__(self):\n        self.items = []\n\n    def push(self, x):\n"
    "        self.items.append(x)",
    "SELECT name, COUNT(*) FROM users WHERE age > 30 GROUP BY name;",
    "   leading and trailing spaces   ",
    "tabs\tand\nnew\nlines",
    "UPPER CASE TEXT WITH NUMBERS 1234567890",
    "e-mail: someone@example.com, url: https://example.org/path?q=1&r=2",
    "task: search result | query: capital of France",
    "title: none | text: Paris is the capital and most populous city of France.",
    "task: code retrieval | query: reverse a linked list in python",
    "Mixed: English, français, español, Deutsch, 中文, العربية.",
]

# Paragraphs that the long texts are cut from (several languages and code in each).
PARAGRAPHS = [
    "The history of mathematics deals with the origin of discoveries in mathematics and the "
    "mathematical methods and notation of the past. Before the modern age and the worldwide "
    "spread of knowledge, written examples of new mathematical developments have come to light "
    "only in a few locales. From 3000 BC the Mesopotamian states of Sumer, Akkad and Assyria, "
    "followed closely by Ancient Egypt and the Levantine state of Ebla began using arithmetic, "
    "algebra and geometry for purposes of taxation, commerce, trade and also in the patterns "
    "in nature, the field of astronomy and to record time and formulate calendars.",
    "La photosynthèse est le processus bioénergétique qui permet à des organismes de "
    "synthétiser de la matière organique en utilisant l'énergie lumineuse, de l'eau et du "
    "dioxyde de carbone. Elle se déroule dans les chloroplastes des cellules végétales, où la "
    "chlorophylle capte la lumière. Les sucres produits servent de source d'énergie et de "
    "briques élémentaires pour la croissance de la plante.",
    "El río Amazonas, situado en América del Sur, es el río más caudaloso del mundo y, según "
    "algunas mediciones, también el más largo. Su cuenca abarca más de siete millones de "
    "kilómetros cuadrados y alberga la selva tropical más extensa del planeta, con una "
    "biodiversidad extraordinaria de plantas, insectos, peces y mamíferos.",
    "Die Relativitätstheorie befasst sich mit der Struktur von Raum und Zeit sowie mit dem "
    "Wesen der Gravitation. Sie besteht aus zwei maßgeblich von Albert Einstein geschaffenen "
    "physikalischen Theorien, der 1905 veröffentlichten speziellen Relativitätstheorie und der "
    "1916 abgeschlossenen allgemeinen Relativitätstheorie.",
    "长城是中国古代的军事防御工程，是一道高大、坚固而连绵不断的长垣，用以限隔敌骑的行动。"
    "长城不是一道单纯孤立的城墙，而是以城墙为主体，同大量的城、障、亭、标相结合的防御体系。",
    "اللغة العربية هي أكثر اللغات السامية تحدثاً، وإحدى أكثر اللغات انتشاراً في العالم، "
    "يتحدثها أكثر من أربعمائة مليون نسمة، ويتوزع متحدثوها في الوطن العربي وفي مناطق أخرى.",
    "def quicksort(items):\n    \"\"\"Sorts a list with the quicksort algorithm.\"\"\"\n"
    "    if len(items) <= 1:\n        return items\n    pivot = items[len(items) // 2]\n"
    "    left = [x for x in items if x < pivot]\n    middle = [x for x in items if x == pivot]\n"
    "    right = [x for x in items if x > pivot]\n"
    "    return quicksort(left) + middle + quicksort(right)\n",
    "Emoji are pictograms used in electronic messages 😀😃😄. A thumbs up 👍 can carry a skin "
    "tone modifier 👍🏻👍🏼👍🏽👍🏾👍🏿, and families 👨‍👩‍👧‍👦 are joined with zero-width joiners. "
    "Flags such as 🇫🇷 🇪🇸 🇩🇪 🇨🇳 are pairs of regional indicator symbols.",
]

# Long texts, cut to these many words: the tokens they give span 1..max_seq_length, and for
# EmbeddingGemma (max_seq_length 2048, sliding window 512) several cross the window.
LONG_WORDS = [8, 16, 24, 32, 48, 64, 80, 100, 120, 140, 160, 200, 240, 300, 360, 420]
EXTRA_LONG_WORDS = [480, 560, 700, 850, 1000]


def long_text(n_words, start):
  """The first ``n_words`` whitespace words of the paragraphs, starting at paragraph ``start``."""
  words = []
  i = start
  while len(words) < n_words:
    words.extend(PARAGRAPHS[i % len(PARAGRAPHS)].split(" "))
    i += 1
  return " ".join(words[:n_words])


def texts(name):
  out = list(SHORT) + list(PARAGRAPHS)
  out += [long_text(n, start=i) for i, n in enumerate(LONG_WORDS)]
  if name == "embeddinggemma-300m":
    out += [long_text(n, start=i + 3) for i, n in enumerate(EXTRA_LONG_WORDS)]
  return out


def reference(model_dir, texts_):
  import sentence_transformers
  import tokenizers
  import torch
  import transformers
  from sentence_transformers.sentence_transformer.modules import Pooling

  torch.manual_seed(0)
  model = sentence_transformers.SentenceTransformer(model_dir, device="cpu")
  model.eval()
  features = model.preprocess(texts_)  # padded to the longest text, truncated at max_seq_length
  input_ids = features["input_ids"].numpy().astype(np.int32)
  attention_mask = features["attention_mask"].numpy().astype(np.int32)

  # The Pooling output and the full pipeline, one text at a time (no padding at all), through
  # the model's own modules in order; encode() below batches and pads as users see it.
  pooled, chained = [], []
  with torch.no_grad():
    for t in texts_:
      f = model.preprocess([t])
      for module in model:
        f = module(f)
        if isinstance(module, Pooling):
          pooled.append(f["sentence_embedding"][0].numpy().copy())
      chained.append(f["sentence_embedding"][0].numpy().copy())
  pooled, chained = np.stack(pooled).astype(np.float32), np.stack(chained).astype(np.float32)
  embedding = model.encode(texts_, batch_size=8, convert_to_numpy=True, prompt_name=None,
                           normalize_embeddings=False).astype(np.float32)
  # encode() pads each batch: its agreement with the unpadded chain shows the reference's own
  # batching noise, which the parity tolerances must sit above.
  cos = np.sum(embedding * chained, 1) / (
      np.linalg.norm(embedding, axis=1) * np.linalg.norm(chained, axis=1))
  noise = {"encode_vs_unpadded_min_cos": float(cos.min()),
           "encode_vs_unpadded_max_abs": float(np.abs(embedding - chained).max())}
  meta = {
      "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                   "sentence_transformers": sentence_transformers.__version__,
                   "tokenizers": tokenizers.__version__, "numpy": np.__version__,
                   "python": platform.python_version()},
      "max_seq_length": int(model.max_seq_length),
      "modules": [type(m).__name__ for m in model],
      "attn_implementation": getattr(model[0].auto_model.config, "_attn_implementation", None),
      "torch_num_threads": torch.get_num_threads(),
      "reference_noise": noise,
  }
  return input_ids, attention_mask, pooled, embedding, meta


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("name", choices=["all-minilm-l6-v2", "embeddinggemma-300m"])
  parser.add_argument("--dir", help="the model directory (default: gemb.pretrained's cache)")
  parser.add_argument("--out", default=None, help="output .npz (default: tests/fixtures/...)")
  args = parser.parse_args(argv)
  model_dir = args.dir or default_dir(args.name)
  if not os.path.isfile(os.path.join(model_dir, "modules.json")):
    sys.exit(f"{model_dir}/modules.json not found: run "
             f"`python -m gemb.pretrained fetch {args.name} --dir={model_dir}` first")
  texts_ = texts(args.name)
  input_ids, attention_mask, pooled, embedding, meta = reference(model_dir, texts_)
  meta["name"] = args.name
  meta["num_texts"] = len(texts_)
  meta["tokens_per_text"] = attention_mask.sum(1).tolist()
  meta["model_files_sha256"] = {
      f: sha256_file(os.path.join(model_dir, f)) for f in sorted(os.listdir(model_dir))
      if f.endswith((".safetensors", ".json", ".model"))}
  out = args.out or os.path.join(OUT_DIR, f"{args.name}.npz")
  os.makedirs(os.path.dirname(out), exist_ok=True)
  np.savez_compressed(out, texts=np.array(texts_), input_ids=input_ids,
                      attention_mask=attention_mask, pooled=pooled, embedding=embedding,
                      metadata=np.array(json.dumps(meta, sort_keys=True)))
  lengths = attention_mask.sum(1)
  print(f"wrote {out}: {len(texts_)} texts, tokens {lengths.min()}..{lengths.max()} "
        f"(max_seq_length {meta['max_seq_length']}), pooled {pooled.shape}, "
        f"embedding {embedding.shape}; reference noise {meta['reference_noise']}")


if __name__ == "__main__":
  main()
