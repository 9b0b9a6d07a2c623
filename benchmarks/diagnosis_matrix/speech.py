"""A small source-filter speech synthesiser: spoken-word-like clips from phone sequences.

A glottal pulse train at the speaker's pitch (with a per-clip contour) and aspiration noise
excite a cascade of time-varying formant resonators (F1-F4, scaled by the speaker's
vocal-tract factor); fricatives and stop bursts are band-passed noise added in parallel;
stop closures are silences. Formant targets glide between phones (coarticulation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import signal

SAMPLE_RATE = 16000
_BLOCK = 80  # samples per formant-filter update (5 ms)
_BANDWIDTHS = (70.0, 100.0, 140.0, 200.0)
_F4 = 3500.0


@dataclass(frozen=True)
class Phone:
    """One phone: ``kind`` is vowel, glide, nasal, fricative or stop; formants in Hz for an
    adult male tract (``end`` for diphthongs); ``band`` is the noise band of fricatives and
    stop bursts; ``voiced`` whether the glottis vibrates."""

    kind: str
    ms: float
    formants: tuple[float, float, float] | None = None
    end: tuple[float, float, float] | None = None
    band: tuple[float, float] | None = None
    voiced: bool = True
    level: float = 1.0


_A = (730.0, 1090.0, 2440.0)
_I = (270.0, 2290.0, 3010.0)
_U = (300.0, 870.0, 2240.0)
_O = (570.0, 840.0, 2410.0)

PHONES: dict[str, Phone] = {
    "iy": Phone("vowel", 150, _I),
    "eh": Phone("vowel", 140, (530.0, 1840.0, 2480.0)),
    "ae": Phone("vowel", 160, (660.0, 1720.0, 2410.0)),
    "aa": Phone("vowel", 160, _A),
    "ao": Phone("vowel", 160, _O),
    "ah": Phone("vowel", 120, (640.0, 1190.0, 2390.0)),
    "ow": Phone("vowel", 200, _O, end=_U),
    "aw": Phone("vowel", 220, _A, end=_U),
    "ay": Phone("vowel", 220, _A, end=_I),
    "y": Phone("glide", 60, (260.0, 2070.0, 3020.0), level=0.6),
    "l": Phone("glide", 70, (360.0, 1300.0, 2800.0), level=0.6),
    "r": Phone("glide", 70, (420.0, 1300.0, 1600.0), level=0.6),
    "w": Phone("glide", 60, (300.0, 610.0, 2200.0), level=0.6),
    "n": Phone("nasal", 80, (250.0, 1700.0, 2600.0), level=0.35),
    "m": Phone("nasal", 80, (250.0, 1000.0, 2200.0), level=0.35),
    "s": Phone("fricative", 130, band=(4000.0, 7600.0), voiced=False, level=0.5),
    "sh": Phone("fricative", 130, band=(2000.0, 4500.0), voiced=False, level=0.5),
    "f": Phone("fricative", 120, band=(1200.0, 7600.0), voiced=False, level=0.18),
    "p": Phone("stop", 90, band=(300.0, 1500.0), voiced=False, level=0.6),
    "t": Phone("stop", 90, band=(3000.0, 7000.0), voiced=False, level=0.6),
    "k": Phone("stop", 90, band=(1500.0, 3000.0), voiced=False, level=0.6),
    "b": Phone("stop", 60, band=(300.0, 1200.0), level=0.4),
    "d": Phone("stop", 60, band=(2500.0, 6000.0), level=0.4),
    "g": Phone("stop", 60, band=(1200.0, 2800.0), level=0.4),
}

WORDS: dict[str, tuple[str, ...]] = {
    "yes": ("y", "eh", "s"),
    "no": ("n", "ow"),
    "up": ("ah", "p"),
    "down": ("d", "aw", "n"),
    "left": ("l", "eh", "f", "t"),
    "right": ("r", "ay", "t"),
    "stop": ("s", "t", "aa", "p"),
    "go": ("g", "ow"),
    "on": ("aa", "n"),
    "off": ("ao", "f"),
}


@dataclass(frozen=True)
class Speaker:
    """Pitch (Hz) and vocal-tract factor (formant scale) of one speaker."""

    pitch_hz: float
    tract: float
    breathiness: float


def random_speaker(rng: np.random.Generator) -> Speaker:
    """Adult male, adult female or child-like voice: pitch 80-260 Hz, tract factor 0.85-1.3."""
    kind = rng.choice(3, p=[0.45, 0.4, 0.15])
    pitch = (rng.uniform(80, 150), rng.uniform(160, 240), rng.uniform(220, 260))[kind]
    tract = (rng.uniform(0.85, 1.0), rng.uniform(1.08, 1.2), rng.uniform(1.2, 1.3))[kind]
    return Speaker(float(pitch), float(tract), float(rng.uniform(0.02, 0.12)))


def _band_noise(n: int, band: tuple[float, float], rng: np.random.Generator) -> np.ndarray:
    high = min(band[1], 0.95 * SAMPLE_RATE / 2)
    sos = signal.butter(2, (band[0], high), btype="bandpass", fs=SAMPLE_RATE, output="sos")
    noise = signal.sosfilt(sos, rng.standard_normal(n + 256))[256:]
    return noise / (np.sqrt(np.mean(noise**2)) + 1e-12)


def _ramp(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    if attack:
        env[:attack] = np.linspace(0.0, 1.0, attack)
    if release:
        env[-release:] = np.linspace(1.0, 0.0, release)
    return env


def _glottal_source(f0: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Pulse train at the instantaneous pitch, shaped to a -6 dB/octave glottal spectrum."""
    phase = np.cumsum(f0 / SAMPLE_RATE) + rng.uniform()
    pulses = np.diff(np.floor(phase), prepend=np.floor(phase[0])).astype(float)
    pulses *= 1.0 + 0.05 * rng.standard_normal(len(pulses))  # shimmer
    shaped = signal.lfilter([1.0, -1.0], [1.0, -1.94, 0.9409], pulses)
    return shaped / (np.sqrt(np.mean(shaped**2)) + 1e-12)


def _formant_cascade(excitation: np.ndarray, tracks: np.ndarray) -> np.ndarray:
    """Cascade of resonators (Klatt, unit DC gain) whose frequencies follow ``tracks``
    ``[blocks, formants]``, updated every block with the filter state carried over."""
    out = excitation.copy()
    for k in range(tracks.shape[1]):
        r = np.exp(-np.pi * _BANDWIDTHS[k] / SAMPLE_RATE)
        state = np.zeros(2)
        filtered = np.empty_like(out)
        for block, freq in enumerate(tracks[:, k]):
            start = block * _BLOCK
            chunk = out[start : start + _BLOCK]
            if not len(chunk):
                break
            b1 = 2 * r * np.cos(2 * np.pi * min(freq, 0.45 * SAMPLE_RATE) / SAMPLE_RATE)
            b2 = -(r**2)
            gain = 1.0 - b1 - b2
            filtered[start : start + len(chunk)], state = signal.lfilter(
                [gain], [1.0, -b1, -b2], chunk, zi=state
            )
        out = filtered
    return out


def synthesize_word(
    phones: tuple[str, ...], speaker: Speaker, rate: float, rng: np.random.Generator
) -> np.ndarray:
    """One word as float samples (unit RMS over the word), spoken by ``speaker`` at ``rate``
    (>1 is faster) with a random pitch contour and per-phone duration jitter."""
    specs = [PHONES[p] for p in phones]
    lengths = [
        max(_BLOCK, int(s.ms / 1000 * SAMPLE_RATE / rate * rng.uniform(0.85, 1.15))) for s in specs
    ]
    n = sum(lengths)
    n_blocks = -(-n // _BLOCK)
    # Formant targets per block; consonants without formants take their neighbours'.
    targets = np.full((n_blocks, 3), np.nan)
    voicing = np.zeros(n)
    aspiration = np.zeros(n)
    parallel = np.zeros(n)
    start = 0
    for spec, length in zip(specs, lengths, strict=True):
        b0, b1 = start // _BLOCK, max(start // _BLOCK + 1, (start + length) // _BLOCK)
        if spec.formants is not None:
            end = spec.end or spec.formants
            weights = np.linspace(0.0, 1.0, b1 - b0)[:, None]
            targets[b0:b1] = (1 - weights) * np.array(spec.formants) + weights * np.array(end)
        segment = slice(start, start + length)
        fade = int(0.015 * SAMPLE_RATE)
        if spec.kind in ("vowel", "glide", "nasal"):
            voicing[segment] = spec.level * _ramp(length, fade, fade)
        elif spec.kind == "fricative":
            noise = _band_noise(length, spec.band, rng) * _ramp(length, 2 * fade, 2 * fade)
            parallel[segment] += spec.level * noise
        elif spec.kind == "stop":
            closure = int(length * 0.55)
            burst = length - closure
            if spec.voiced:
                voicing[start : start + closure] = 0.08  # voice bar
            noise = _band_noise(burst, spec.band, rng) * np.exp(-np.arange(burst) / (0.008 * 16e3))
            parallel[start + closure : start + length] += spec.level * noise
            if not spec.voiced:  # aspiration into the next phone
                asp = min(int(0.04 * SAMPLE_RATE / rate), n - start - length)
                aspiration[start + length : start + length + asp] = 0.3 * np.linspace(1, 0, asp)
        start += length
    targets = _fill_and_smooth(targets)
    tracks = np.column_stack([targets * speaker.tract, np.full(n_blocks, _F4 * speaker.tract)])

    seconds = np.arange(n) / SAMPLE_RATE
    contour = rng.uniform(-0.15, 0.1) * seconds / max(seconds[-1], 1e-3)  # declination or rise
    vibrato = 0.01 * np.sin(2 * np.pi * rng.uniform(4, 6) * seconds + rng.uniform(0, 6.3))
    f0 = speaker.pitch_hz * rng.uniform(0.92, 1.08) * (1.0 + contour + vibrato)
    voice = _glottal_source(f0, rng) * _smooth(voicing, 80)
    breath = rng.standard_normal(n) * (speaker.breathiness * _smooth(voicing, 80) + aspiration)
    word = _formant_cascade(voice + breath, tracks) + parallel
    return word / (np.sqrt(np.mean(word**2)) + 1e-12)


def _fill_and_smooth(targets: np.ndarray) -> np.ndarray:
    """Interpolates missing (NaN) formant blocks and smooths the tracks over ~25 ms."""
    index = np.arange(len(targets))
    filled = np.empty_like(targets)
    for k in range(targets.shape[1]):
        known = ~np.isnan(targets[:, k])
        filled[:, k] = np.interp(index, index[known], targets[known, k])
    kernel = np.ones(5) / 5
    padded = np.pad(filled, ((2, 2), (0, 0)), mode="edge")
    return np.column_stack([np.convolve(padded[:, k], kernel, "valid") for k in range(3)])


def _smooth(envelope: np.ndarray, width: int) -> np.ndarray:
    return np.convolve(envelope, np.ones(width) / width, mode="same")
