"""Text to speech for the builders (gemb_speech, gemb_video's narration): espeak-ng, from the
Debian package espeak-ng (GPL-3; its output is data). It is deterministic, so a build that
synthesizes the same text with the same voice gets the same bytes."""

import shutil
import subprocess

ESPEAK = "espeak-ng"


def require_espeak() -> None:
  """FileNotFoundError naming the Debian package when espeak-ng is not installed."""
  if shutil.which(ESPEAK) is None:
    raise FileNotFoundError(f"{ESPEAK} is not on PATH: install the Debian package espeak-ng")


def espeak(text: str, *, voice: str, speed: int, pitch: int) -> bytes:
  """espeak-ng's WAV output (22,050 Hz mono, int16) of ``text`` read by ``voice`` (e.g.
  "en-us", "de+f3") at ``speed`` words per minute and ``pitch`` (0-99)."""
  # No shell, UTF-8 input (-b 1) and "--" before the text: any text (even "-v") is only
  # ever spoken.
  cmd = [ESPEAK, "-b", "1", "-v", voice, "-s", str(speed), "-p", str(pitch), "--stdout", "--",
         text]
  result = subprocess.run(cmd, capture_output=True, check=False, timeout=60)
  if result.returncode or len(result.stdout) <= 44:  # 44 bytes: a WAV header, no samples
    raise RuntimeError(f"{' '.join(cmd)} failed ({result.returncode}): "
                       f"{result.stderr.decode(errors='replace')}")
  return result.stdout
