"""Tests of the gemb_video builder (small config): splits, captions vs pixels, narration."""
import collections
import io

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from gemb.data.builtin import glyphs, tts, video
from gemb.data.media.video import load_video
from gemb.batch import MODALITIES

MAIN = video.SPLITS
ALL_SPLITS = MAIN + tuple(f"{s}_narrated" for s in MAIN)
H = video.FRAMES // 2  # first frame of the second object's turn


class _RawSequence(tfds.decode.SkipDecoding):
  """Keeps a Sequence(Image) field as PNG bytes; tfds's SkipDecoding lacks the batch
  method that sequences need when TF is absent."""

  def decode_batch_example_np(self, serialized):
    return serialized


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds_video")
  builder = video.GembVideo(config="small", data_dir=str(data_dir))
  builder.download_and_prepare(download_dir=str(data_dir / "downloads"))
  return video.GembVideo(config="small", data_dir=str(data_dir))


@pytest.fixture(scope="module")
def records(built):
  return {s: [built.as_data_source(s)[i] for i in range(built.info.splits[s].num_examples)]
          for s in ALL_SPLITS}


@pytest.fixture(scope="module")
def objects():
  return video.load_objects()


@pytest.fixture(scope="module")
def plan(objects):
  return video.plan_clips(objects)


def text(v):
  return v.decode("utf-8") if isinstance(v, bytes) else v


def test_splits_are_nonempty_and_narrated_splits_hold_the_narrated_clips(records):
  for split in ALL_SPLITS:
    assert records[split], split
  for split in MAIN:
    narrated = {r["item_id"] for r in records[split] if r["has_narration"]}
    assert {r["item_id"] for r in records[f"{split}_narrated"]} == narrated
    for r in records[split]:
      assert isinstance(r["has_narration"], bool)
      assert bool(r["narration"]) == r["has_narration"]
  # About NARRATED_PERCENT of the clips, not all or none.
  n = sum(len(records[s]) for s in MAIN)
  assert 0.15 < sum(len(records[f"{s}_narrated"]) for s in MAIN) / n < 0.55


def test_splits_are_disjoint_by_clip_and_by_object(records):
  items = {s: {r["item_id"] for r in records[s]} for s in MAIN}
  objects = {s: {o for r in records[s] for o in r["object_ids"]} for s in MAIN}
  for a, b in (("train", "validation"), ("train", "test"), ("validation", "test")):
    assert not items[a] & items[b]
    assert not objects[a] & objects[b]
  # The split of an emoji is gemb_emoji's split of its family; a digit's is its own hash.
  with open(glyphs.EMOJI_TEST_PATH, encoding="utf-8") as f:
    emojis = glyphs.parse_emoji_test(f.read())
  kinds = collections.Counter()
  for split in MAIN:
    for object_id in objects[split]:
      if object_id >= video.DIGIT_ID_OFFSET:
        key = f"digit:{object_id - video.DIGIT_ID_OFFSET}"
        kinds["digit"] += 1
      else:
        key = emojis[object_id].base_key
        assert emojis[object_id].item_id == emojis[object_id].base_id
        kinds["emoji"] += 1
      assert glyphs.split_of(key) == split, (object_id, split)
  assert kinds["digit"] and kinds["emoji"]


def test_captions_are_unique_and_spell_the_objects_and_motions(records):
  captions, meanings = [], set()
  for split in MAIN:
    for r in records[split]:
      names = [text(n) for n in r["object_names"]]
      motions = [text(m) for m in r["motions"]]
      assert len(names) == len(motions) == len(r["object_ids"]) in (1, 2)
      parts = text(r["caption"]).split(", then ")
      assert len(parts) == len(names)
      for part, name, motion in zip(parts, names, motions):
        phrases = video.MOTIONS[motion]
        assert part[len(name) + 1:] in phrases + tuple(video.verb_phrase(p, True)
                                                       for p in phrases), (part, motion)
        assert part.startswith(name + " ")
      captions.append(text(r["caption"]))
      meanings.add(tuple(zip(names, motions)))
  assert len(set(captions)) == len(captions) == len(meanings)
  assert any(text(c).startswith("the ") and " digit " in c for c in captions)


def bg_and_masks(frames):
  """Background colour (the commonest pixel of the clip) and per-frame object masks."""
  packed = frames.reshape(-1, 3).astype(np.int32) @ np.array([1 << 16, 1 << 8, 1], np.int32)
  commonest = np.argmax(np.bincount(packed))
  bg = np.array([commonest >> 16, (commonest >> 8) & 255, commonest & 255])
  return np.abs(frames.astype(int) - bg).max(-1) > 8


def center(mask):
  ys, xs = np.nonzero(mask)
  return np.array([xs.mean(), ys.mean()])


def check_motion(motion, masks, frames):
  """Asserts that masks / frames (one object's turn) show `motion`."""
  first, last = masks[0], masks[-1]
  if motion.startswith("slide"):
    axis, sign = {"slide_left": (0, -1), "slide_right": (0, 1), "slide_up": (1, -1),
                  "slide_down": (1, 1)}[motion]
    move = center(last) - center(first)
    assert sign * move[axis] > 6, (motion, move)
    assert abs(move[1 - axis]) < 2, (motion, move)
    return
  if motion in ("grow", "shrink"):
    ratio = last.sum() / first.sum()
    assert (ratio > 4) if motion == "grow" else (ratio < 1 / 4), (motion, ratio)
    return
  if motion in ("appear", "disappear"):
    absent, present = (first, last) if motion == "appear" else (last, first)
    assert not absent.any() and present.sum() > 20, motion
    # The fade is gradual: the object's contrast grows (or falls) frame by frame.
    contrast = [np.abs(f.astype(int) - frames[0 if motion == "appear" else -1]).sum()
                for f in frames]
    steps = np.diff(contrast) * (1 if motion == "appear" else -1)
    assert (steps >= 0).all() and (steps > 0).sum() >= len(frames) - 2, contrast
    return
  assert motion == "spin", motion
  areas = masks.reshape(len(masks), -1).sum(1)
  assert areas.max() < 1.5 * areas.min(), areas
  # A whole turn: the last frame is the first again; the frames between are rotated.
  # (Mean change per channel of the object's pixels; rotation resampling alone gives ~1.)
  turned = [np.abs(f.astype(int) - frames[0]).sum() / (3 * first.sum()) for f in frames]
  assert turned[-1] == 0 and max(turned) > 10, turned


def halves(motions):
  """The two halves of a two-object clip's frame, by the layout rule of video._boxes."""
  s, h = video.IMAGE_SIZE, video.IMAGE_SIZE // 2
  side = (any(m in ("slide_up", "slide_down") for m in motions)
          and not any(m in ("slide_left", "slide_right") for m in motions))
  regions = (((slice(None), slice(0, h)), (slice(None), slice(h, s))) if side
             else ((slice(0, h), slice(None)), (slice(h, s), slice(None))))
  out = []
  for region in regions:
    m = np.zeros((s, s), bool)
    m[region] = True
    out.append(m)
  return out


def test_frames_show_the_captioned_motions_in_order(records):
  seen = collections.Counter()
  pairs = 0
  for split in MAIN:
    for r in records[split]:
      frames = np.stack(r["frames"])
      assert frames.shape == (video.FRAMES, video.IMAGE_SIZE, video.IMAGE_SIZE, 3)
      masks = bg_and_masks(frames)
      motions = [text(m) for m in r["motions"]]
      if len(motions) == 1:
        check_motion(motions[0], masks, frames)
        seen[motions[0]] += 1
        continue
      pairs += 1
      # The first object acts in frames [0, H), the second in [H, FRAMES), in two halves.
      changed1 = (frames[:H] != frames[0]).any(-1).any(0)
      changed2 = (frames[H:] != frames[H]).any(-1).any(0)
      assert changed1.any() and changed2.any() and not (changed1 & changed2).any()
      np.testing.assert_array_equal(frames[H - 1], frames[H])
      # Each object acts inside its own half (which one is random).
      box1, box2 = halves(motions)
      if not (changed1 & box1).any():
        box1, box2 = box2, box1
      assert not (changed1 & ~box1).any() and not (changed2 & ~box2).any()
      check_motion(motions[0], masks[:H] & box1, frames[:H] * box1[..., None])
      check_motion(motions[1], masks[H:] & box2, frames[H:] * box2[..., None])
  assert pairs and len(seen) >= 6, (pairs, seen)


def test_narration_is_16khz_mono_int16_speech(records):
  for r in records["test_narrated"] + records["validation_narrated"]:
    wave, rate = sf.read(io.BytesIO(r["narration"]), dtype="float32")
    info = sf.info(io.BytesIO(r["narration"]))
    assert rate == video.NARRATION_RATE and info.channels == 1 and info.subtype == "PCM_16"
    assert wave.ndim == 1 and 0.8 < len(wave) / rate < 12
    assert np.sqrt(np.mean(wave ** 2)) > 0.02  # speech, not silence
  # Longer captions are spoken for longer.
  narrated = sorted(records["train_narrated"], key=lambda r: len(r["caption"]))
  duration = lambda r: sf.info(io.BytesIO(r["narration"])).duration  # noqa: E731
  assert duration(narrated[0]) < duration(narrated[-1])


def test_rebuilt_records_are_byte_identical(built, records, plan, objects):
  small = video.small_subset(plan)
  assert ({c.item_id for c in small} == {r["item_id"] for s in MAIN for r in records[s]})
  assert plan == video.plan_clips(objects)
  by_id = {c.item_id: c for c in small}
  for split in ("test", "validation_narrated"):
    source = built.as_data_source(split, decoders={"frames": _RawSequence()})
    for i in (0, len(source) - 1):
      stored = source[i]
      clip = by_id[stored["item_id"]]
      rebuilt = video.clip_record(clip, {t.obj.key: video.glyph_of(t.obj) for t in clip.tracks})
      assert list(stored["frames"]) == rebuilt["frames"]
      assert stored["narration"] == rebuilt["narration"]
      assert text(stored["caption"]) == rebuilt["caption"]
      # The stored PNG frames are what the pipeline's video loader reads.
      out = load_video(stored["frames"], frames=8, size=32)
      assert out.shape == (8, 32, 32, 3)


def test_plan_draws_unique_captions_and_uses_every_object(objects, plan):
  clips = plan
  assert len({c.caption for c in clips}) == len(clips)
  assert [c.item_id for c in clips] == list(range(len(clips)))
  starters = collections.Counter(c.tracks[0].obj.key for c in clips)
  assert set(starters) == {o.key for o in objects}
  for c in clips:
    assert len({t.obj.name for t in c.tracks}) == len(c.tracks)
    assert {glyphs.split_of(t.obj.key) for t in c.tracks} == {c.split}


def test_articles():
  assert video._with_article("red apple") == "a red apple"
  assert video._with_article("octopus") == "an octopus"
  assert video._with_article("unicorn") == "a unicorn"
  assert video._with_article("hourglass done") == "an hourglass done"
  assert video._with_article("Tokyo tower") == "the Tokyo tower"
  assert video._with_article("eyes") == "the eyes"
  assert video.verb_phrase("slides to the left", False) == "slides to the left"
  assert video.verb_phrase("slides to the left", True) == "slide to the left"
  assert video.verb_phrase("shrinks", True) == "shrink"
  names = {o.name: o for o in video.load_objects()}
  assert names["the sparkles"].plural and not names["an octopus"].plural


def test_tasks_read_existing_fields_and_splits(built):
  features = built.info.features
  names = [t.name for t in video.TASKS]
  assert len(set(names)) == len(names) == 3
  for task in video.TASKS:
    assert task.dataset == "video"
    for seg in task.query + task.candidate:
      assert seg.modality in MODALITIES and seg.field in features
    for f in (task.query_id, task.candidate_id):
      assert f in features
    assert task.train_split in built.info.splits and task.eval_split in built.info.splits
  narrated = {t.name: t for t in video.TASKS}["video_narrated_to_text"]
  assert [s.modality for s in narrated.query] == ["video", "audio"]
  assert narrated.eval_split == "test_narrated"


def test_missing_packages_are_named(monkeypatch):
  monkeypatch.setattr(glyphs, "FONT_PATH", "/nonexistent/NotoColorEmoji.ttf")
  with pytest.raises(FileNotFoundError, match="fonts-noto-color-emoji"):
    video.load_objects()
  monkeypatch.setattr(tts.shutil, "which", lambda name: None)
  with pytest.raises(FileNotFoundError, match="espeak-ng"):
    video.GembVideo(config="small", data_dir="/nonexistent")._split_generators(None)


def test_motion_check_rejects_the_opposite_motion(records):
  # The pixel checks above must be able to fail: played backwards, every motion but a spin
  # is its opposite, and check_motion says so.
  done = set()
  for r in records["train"] + records["test"]:
    motion = text(r["motions"][0])
    if len(r["motions"]) != 1 or motion == "spin" or motion in done:
      continue
    frames = np.stack(r["frames"])[::-1]
    with pytest.raises(AssertionError):
      check_motion(motion, bg_and_masks(frames), frames)
    done.add(motion)
  assert len(done) >= 5, done
