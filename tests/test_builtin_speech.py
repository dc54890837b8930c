"""Tests of the gemb_speech TFDS builder (small config) and its text sources."""
import collections
import io
import subprocess

import numpy as np
import pytest
import soundfile

from gemb.data.builtin import speech
from gemb.data.media.audio import load_audio

SPLITS = ("train", "validation", "test", "real", "real_train")


@pytest.fixture(scope="module")
def builder(tmp_path_factory):
  """The small config, built once for this module (~10 s)."""
  data_dir = tmp_path_factory.mktemp("speech_tfds")
  b = speech.GembSpeech(config="small", data_dir=str(data_dir))
  b.download_and_prepare(download_dir=str(data_dir / "downloads"))
  return speech.GembSpeech(config="small", data_dir=str(data_dir))


@pytest.fixture(scope="module")
def records(builder):
  return {split: list(builder.as_data_source(split)) for split in SPLITS}


@pytest.fixture(scope="module")
def small_texts():
  reserved = [text for _, text, _ in speech.real_sounds()]
  return speech.select_texts(speech.SMALL_QUOTAS, reserved)


def text_of(record):
  return record["text"].decode("utf-8")


# ------------------------------------------------------------------------------- sources

def test_normalize_and_split_rule():
  assert speech.normalize("Front_Left") == "front left"
  assert speech.normalize("  Flag:  United\tStates ") == "flag united states"
  assert speech.normalize("Mülleimer") == speech.normalize("MÜLLEIMER") == "mülleimer"
  # The split follows the normalized text, so spellings of one text never straddle splits.
  assert speech.split_of("Front_Left") == speech.split_of("front left")
  counts = collections.Counter(speech.split_of(f"text {i}") for i in range(4000))
  assert 0.75 < counts["train"] / 4000 < 0.85 and counts["validation"] > 100


def test_wordnet_words_are_common_and_cased():
  words = speech.wordnet_words()
  assert 5000 < len(words) < 10000
  assert {"person", "Monday", "march", "dog"} <= set(words)
  assert "monday" not in words and "March" not in words and "n't" not in words
  assert all(speech._WORD.fullmatch(w.lower()) for w in words)


def test_wordnet_sentences_are_plain_examples():
  sentences = speech.wordnet_sentences()
  assert len(sentences) > 20000 and len(set(sentences)) == len(sentences)
  assert "she was able to program her computer" in sentences
  assert all(3 <= len(s.split()) <= 14 and '"' not in s for s in sentences)


def test_freedict_spellings_follow_the_dictionary():
  index = speech.freedict_index("deu")
  # Only German words with many senses: the common ones.
  assert all(w in index for w in ("werkzeug", "klar", "offen"))
  assert "firmkatechese" not in index  # one entry: a rare compound
  spelled = speech.freedict_spellings("deu", ["werkzeug", "klar", "offen"], index)
  # "Klar" is also a noun, but the adjective's lowercase spelling wins.
  assert spelled == {"werkzeug": "Werkzeug", "klar": "klar", "offen": "offen"}
  fra = speech.freedict_index("fra")
  assert speech.freedict_spellings("fra", ["charlemagne", "charbon"], fra) == {
      "charlemagne": "Charlemagne", "charbon": "charbon"}


def test_small_texts_are_the_full_selection_prefix(small_texts):
  reserved = [text for _, text, _ in speech.real_sounds()]
  full = speech.select_texts(speech.FULL_QUOTAS, reserved)
  assert len(full) == sum(speech.FULL_QUOTAS.values())
  assert [t.item_id for t in full] == list(range(len(full)))
  by_id = {t.item_id: t for t in full}
  assert len(small_texts) == sum(speech.SMALL_QUOTAS.values())
  for t in small_texts:
    assert by_id[t.item_id] == t
  keys = [speech.normalize(t.text) for t in full]
  assert len(set(keys)) == len(keys)
  assert not set(keys) & {speech.normalize(r) for r in reserved}


def test_readings_are_distinct_voices_of_the_language():
  text = speech.SpeechText("Werkzeug", "de", "word", 0, "freedict_deu")
  readings = speech.readings(text, 3)
  assert readings == speech.readings(text, 3)
  assert len({r.voice for r in readings}) == 3
  for r in readings:
    assert r.voice.split("+")[0] in speech.VOICES["de"]
    assert speech.SPEED_RANGE[0] <= r.speed <= speech.SPEED_RANGE[1]
    assert speech.PITCH_RANGE[0] <= r.pitch <= speech.PITCH_RANGE[1]


def test_configured_voices_exist():
  # espeak-ng rejects an unknown voice but silently ignores an unknown "+variant".
  listing = subprocess.run(["espeak-ng", "--voices"], capture_output=True, text=True,
                           check=True).stdout
  languages = {line.split()[1] for line in listing.splitlines()[1:]}
  assert all(v in languages for voices in speech.VOICES.values() for v in voices)
  listing = subprocess.run(["espeak-ng", "--voices=variant"], capture_output=True, text=True,
                           check=True).stdout
  files = {line.split()[4] for line in listing.splitlines()[1:]}
  assert all(f"!v/{v[1:]}" in files for v in speech.VARIANTS if v)


def test_synthesis_speaks_texts_that_look_like_options():
  reading = speech.Reading("en-us", 175, 50)
  wav = speech.synthesize("-v nonsense", reading)
  samples, rate = soundfile.read(io.BytesIO(wav))
  assert rate == speech.SAMPLE_RATE and len(samples) > 0.3 * rate
  assert wav == speech.synthesize("-v nonsense", reading)
  # The trailing silence is cut to TRAIL_SECONDS (espeak-ng adds 0.35 s of zeros).
  tail = np.flatnonzero(samples)[-1]
  assert len(samples) - tail < (speech.TRAIL_SECONDS + 0.01) * rate


def test_missing_package_is_named(tmp_path, monkeypatch):
  monkeypatch.setattr(speech, "DICTD_DIR", str(tmp_path))
  b = speech.GembSpeech(config="small", data_dir=str(tmp_path))
  with pytest.raises(FileNotFoundError, match="dict-freedict-deu-eng"):
    b._split_generators(None)


# ------------------------------------------------------------------------------- builder

def test_split_sizes(builder, records, small_texts):
  per_split = collections.Counter(speech.split_of(t.text) for t in small_texts)
  assert set(builder.info.splits) == set(SPLITS)
  assert len(records["train"]) == speech.TRAIN_VOICES * per_split["train"] > 0
  assert len(records["validation"]) == speech.VALIDATION_VOICES * per_split["validation"] > 0
  assert len(records["test"]) == speech.TEST_VOICES * per_split["test"] > 0
  assert len(records["real"]) == len(speech.real_sounds()) >= 30
  assert len(records["real_train"]) == len(speech.other_theme_sounds()) >= 30


def test_splits_disjoint_by_text(records, small_texts):
  truth = {t.item_id: t for t in small_texts}
  keys, ids = {}, {}
  for split in ("train", "validation", "test"):
    keys[split] = {speech.normalize(text_of(r)) for r in records[split]}
    ids[split] = {r["item_id"] for r in records[split]}
    for r in records[split]:
      t = truth[r["item_id"]]
      assert (text_of(r), r["language"].decode(), r["kind"].decode()) == (
          t.text, t.language, t.kind)
      assert speech.split_of(t.text) == split
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not keys[a] & keys[b] and not ids[a] & ids[b]


def test_voices_per_text(records):
  expected = {"train": speech.TRAIN_VOICES, "validation": speech.VALIDATION_VOICES,
              "test": speech.TEST_VOICES}
  for split, count in expected.items():
    voices = collections.defaultdict(list)
    for r in records[split]:
      voices[r["item_id"]].append(r["voice"].decode())
      assert r["voice"].decode().split("+")[0] in speech.VOICES[r["language"].decode()]
    assert all(len(set(v)) == len(v) == count for v in voices.values())


def test_languages_and_kinds(records):
  synthetic = [r for s in ("train", "validation", "test") for r in records[s]]
  languages = collections.Counter(r["language"].decode() for r in synthetic)
  assert set(languages) == {"en", "de", "fr", "es"}
  kinds = collections.Counter(r["kind"].decode() for r in synthetic)
  assert set(kinds) == {"emoji_name", "word", "sentence"}


def test_audio_decodes_with_load_audio(records):
  for split in SPLITS:
    for r in records[split]:
      assert isinstance(r["audio"], bytes)
      info = soundfile.info(io.BytesIO(r["audio"]))
      assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
      wave, length = load_audio(r["audio"], sample_rate=16000, num_samples=16000 * 8)
      # Even one word takes 0.2 s to say; some sound events are shorter (a bell: 0.07 s).
      assert (0.2 * 16000 if not split.startswith("real") else 0) < length <= 16000 * 8
      assert np.abs(wave[:length]).max() > 0.05  # a sound, not silence


def test_real_split(records):
  real = {r["source"].decode(): r for r in records["real"]}
  front = real["/usr/share/sounds/alsa/Front_Left.wav"]
  assert (text_of(front), front["kind"], front["voice"]) == (
      "front left", b"spoken_name", b"recording")
  warning = real["/usr/share/sounds/freedesktop/stereo/dialog-warning.oga"]
  assert (text_of(warning), warning["kind"]) == ("dialog warning", b"sound_event")
  assert text_of(real["/usr/share/sounds/alsa/Noise.wav"]) == "noise"
  assert not any("audio-channel" in path for path in real)  # copies of the ALSA voices
  ids = {}
  for r in records["real"]:
    assert r["item_id"] >= speech.REAL_ID_BASE
    assert ids.setdefault(text_of(r), r["item_id"]) == r["item_id"]
  assert len(set(ids.values())) == len(ids)
  # The stored clip is the recording resampled: same duration.
  samples, rate = soundfile.read("/usr/share/sounds/alsa/Front_Left.wav")
  stored, _ = soundfile.read(io.BytesIO(front["audio"]))
  assert len(stored) == pytest.approx(len(samples) * 16000 / rate, abs=1)


def test_real_train_split_holds_other_themes_events(records):
  """real_train: the Yaru and deepin themes' sounds, named by event as the freedesktop theme
  names its own; no recording of the "real" split, and one id per event name."""
  train = {r["source"].decode(): r for r in records["real_train"]}
  themes = {path.split("/")[4] for path in train}
  assert themes == {"Yaru", "deepin"}
  assert not set(train) & {r["source"].decode() for r in records["real"]}
  assert text_of(train["/usr/share/sounds/Yaru/stereo/dialog-warning.oga"]) == "dialog warning"
  assert text_of(train["/usr/share/sounds/deepin/stereo/x-deepin-app-sent-to-desktop.wav"]) == (
      "app sent to desktop")
  yaru, deepin = (train[f"/usr/share/sounds/{t}/stereo/device-added.{e}"]
                  for t, e in (("Yaru", "oga"), ("deepin", "wav")))
  assert yaru["item_id"] == deepin["item_id"] >= speech.REAL_TRAIN_ID_BASE
  assert {r["kind"] for r in train.values()} == {b"sound_event"}
  ids = {}
  for r in records["real_train"]:
    assert ids.setdefault(text_of(r), r["item_id"]) == r["item_id"]
  assert len(set(ids.values())) == len(ids)
  # Events both sides name alike: the transfer the task measures.
  real_events = {text_of(r) for r in records["real"] if r["kind"] == b"sound_event"}
  assert {"dialog warning", "trash empty", "camera shutter"} <= real_events & set(ids)


def test_rebuilt_items_are_byte_identical(records):
  """espeak-ng is deterministic: synthesizing a stored reading again gives the same bytes."""
  checked = set()
  for split in ("train", "validation", "test"):
    for r in records[split]:
      language = r["language"].decode()
      if (split, language) in checked:
        continue
      checked.add((split, language))
      reading = speech.Reading(r["voice"].decode(), r["speed"], r["pitch"])
      assert speech.synthesize(text_of(r), reading) == r["audio"]
  assert len(checked) >= 6
  front = next(r for r in records["real"] if r["source"].endswith(b"Front_Left.wav"))
  assert speech.real_wav(front["source"].decode()) == front["audio"]


def test_tasks_read_existing_fields(builder, records):
  names = [t.name for t in speech.TASKS]
  assert names == ["speech_audio_to_text", "speech_text_to_audio", "speech_real_audio_to_text"]
  for task in speech.TASKS:
    assert task.dataset == "speech"
    assert task.instruction == "task: speech retrieval | query: "
    assert task.train_split in builder.info.splits and task.eval_split in builder.info.splits
    record = records[task.eval_split][0]
    for seg in task.query + task.candidate:
      assert seg.field in record
    assert isinstance(record[task.query_id], int)
  assert (speech.TASKS[2].train_split, speech.TASKS[2].eval_split) == ("real_train", "real")
