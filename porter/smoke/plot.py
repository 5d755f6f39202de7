"""Waveform and spectrogram picture of the generated audio (matplotlib, Agg, no pyplot state)."""

from __future__ import annotations

from pathlib import Path


def plot_audio(wav: Path, png: Path, title: str) -> None:
    import numpy as np
    import soundfile as sf
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    data, sr = sf.read(str(wav), dtype="float32", always_2d=True)  # [samples, channels]
    mono = data.mean(axis=1)
    t = np.arange(mono.size) / float(sr)

    fig = Figure(figsize=(10, 5), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax_w, ax_s = fig.subplots(2, 1, sharex=True)
    for ch in range(data.shape[1]):
        ax_w.plot(t, data[:, ch], linewidth=0.6, label=f"ch {ch}" if data.shape[1] > 1 else None)
    ax_w.set_ylim(-1.05, 1.05)
    ax_w.set_ylabel("amplitude")
    ax_w.set_title(title, fontsize=10)
    if data.shape[1] > 1:
        ax_w.legend(loc="upper right", fontsize=8)
    nfft = 2 ** max(6, round(np.log2(sr * 0.025)))  # ~25 ms windows
    while nfft > 64 and nfft * 4 > mono.size:
        nfft //= 2
    if mono.size > nfft:
        with np.errstate(divide="ignore"):  # silent audio: log10(0), drawn as the floor
            ax_s.specgram(mono, NFFT=nfft, Fs=sr, noverlap=nfft // 2, cmap="magma")
    else:
        ax_s.text(0.5, 0.5, "too short for a spectrogram", ha="center", va="center", transform=ax_s.transAxes)
    ax_s.set_ylabel("frequency (Hz)")
    ax_s.set_xlabel("time (s)")
    tmp = png.with_suffix(".tmp.png")
    fig.savefig(tmp)
    tmp.replace(png)
