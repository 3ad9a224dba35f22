"""Task losses: SI-SNR on hand-computed cases, FT-JNF's loss and the sub-band band loss against numpy
re-derivations, the band loss's exact band isolation (which the waveform path lacked), per-family
defaults and overrides with their one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdlib.errors import ConfigError
from kdlib.kd import FeatureTaps
from kdlib.losses import (
    TASK_LOSSES,
    BandSpectralLoss,
    CompressedSpectralLoss,
    FTJNFLoss,
    NegativeSISNR,
    check_task_loss,
    task_loss_for,
)
from kdlib.models import MODELS, build_model

ELITE = {"n_bands": 4, "hidden": 16, "shared": False}
#: the default task loss of every registered family (the papers' objectives; see each model's docstring)
DEFAULTS = {"convtasnet": "si_snr", "dptnet": "si_snr", "dccrn": "si_snr", "ftjnf": "ftjnf",
            "subband": "band_spectral", "dpcrn_lite": "compressed_spectral", "dpdcrn": "compressed_spectral"}


def _stft(x: np.ndarray, n_fft: int, hop: int, sqrt_window: bool = False) -> np.ndarray:
    """``(L,)`` → ``(F, T)``, frame by frame: reflect-pad n_fft/2 each side, periodic Hann (or its root), rfft."""
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    win = np.sqrt(win) if sqrt_window else win
    pad = np.pad(x, n_fft // 2, mode="reflect")
    return np.stack([np.fft.rfft(pad[t * hop: t * hop + n_fft] * win) for t in range(1 + len(x) // hop)], axis=1)


# ------------------------------------------------------------------------------------------ SI-SNR


def _zero_mean_pair(rng: np.random.Generator, snr_db: float, length: int = 16000) -> tuple[np.ndarray, np.ndarray]:
    """A zero-mean target s and s + n with n zero-mean, orthogonal to s and ‖s‖²/‖n‖² = 10^(snr/10)."""
    s = rng.standard_normal(length)
    s -= s.mean()
    n = rng.standard_normal(length)
    n -= n.mean()
    n -= (n @ s) / (s @ s) * s
    n *= np.sqrt((s @ s) / (n @ n) / 10 ** (snr_db / 10))
    return s, s + n


@pytest.mark.parametrize("snr_db", [-5.0, 0.0, 20.0])
def test_si_snr_of_target_plus_orthogonal_noise_is_the_snr(snr_db):
    s, est = _zero_mean_pair(np.random.default_rng(0), snr_db)
    loss = NegativeSISNR()(torch.tensor(est[None], dtype=torch.float32), torch.tensor(s[None], dtype=torch.float32))
    assert float(loss) == pytest.approx(-snr_db, abs=1e-3)


def test_si_snr_is_scale_and_offset_invariant_and_averages_the_batch():
    rng = np.random.default_rng(1)
    pairs = [_zero_mean_pair(rng, snr) for snr in (3.0, 13.0)]
    s = torch.tensor(np.stack([p[0] for p in pairs]), dtype=torch.float32)
    est = torch.tensor(np.stack([p[1] for p in pairs]), dtype=torch.float32)
    loss = NegativeSISNR()
    assert float(loss(est, s)) == pytest.approx(-8.0, abs=1e-3)  # mean of −3 and −13 dB
    scaled = est * torch.tensor([[3.0], [0.1]]) + 5.0  # per-utterance gain and a DC offset
    assert float(loss(scaled, s)) == pytest.approx(-8.0, abs=1e-3)


def test_si_snr_guards_an_exact_multiple_and_a_silent_target():
    s = np.random.default_rng(2).standard_normal(8000)
    s -= s.mean()
    target = torch.tensor(s[None], dtype=torch.float32)
    # ŝ = 2s leaves no error: the ε in the denominator bounds the value at 10·log10(‖2s‖² / ε)
    expected = 10 * np.log10(4 * (s @ s) / 1e-8)
    assert float(NegativeSISNR()(2 * target, target)) == pytest.approx(-expected, rel=1e-4)
    # a silent target: no projection, SI-SNR = 10·log10(ε) = −80 dB, a finite loss and gradient
    est = target.clone().requires_grad_(True)
    loss = NegativeSISNR()(est, torch.zeros_like(target))
    loss.backward()
    assert float(loss.detach()) == pytest.approx(80.0, abs=1e-4) and torch.isfinite(est.grad).all()


# ------------------------------------------------------------------------------------------ FT-JNF


@pytest.mark.parametrize("noise_term", [True, False])
def test_ftjnf_loss_matches_the_official_terms_rederived(noise_term):
    """α·(mean|s − ŝ| + mean|n − n̂|) + mean||S| − |Ŝ|| + mean||N| − |N̂||, n = y_ref − s, n̂ = y_ref − ŝ, √Hann
    STFT of the model's n_fft / hop (the official sp-uhh/deep-non-linear-filter loss, methods.md §4.3)."""
    torch.manual_seed(0)
    model = build_model("ftjnf", {"n_channels": 3, "n_fft": 256, "hop_length": 128, "n_lstm_hidden1": 6,
                                  "n_lstm_hidden2": 4, "reference_channel": 1})
    loss_fn = task_loss_for(model, {"name": "ftjnf", "kwargs": {"noise_term": noise_term}})
    assert isinstance(loss_fn, FTJNFLoss)
    noisy, clean = torch.randn(2, 3, 2000), torch.randn(2, 2000)
    est = model(noisy)
    value = float(loss_fn(est, clean).detach())

    def mag_l1(a, b):
        return np.mean([np.abs(np.abs(_stft(a[i], 256, 128, True)) - np.abs(_stft(b[i], 256, 128, True))).mean()
                        for i in range(len(a))])

    e, s, y = est.detach().double().numpy(), clean.double().numpy(), noisy[:, 1].double().numpy()
    expected = 10 * np.abs(s - e).mean() + mag_l1(e, s)
    if noise_term:
        expected += 10 * np.abs((y - s) - (y - e)).mean() + mag_l1(y - e, y - s)
    assert value == pytest.approx(expected, rel=1e-4)


def test_a_loss_that_reads_the_forward_pass_refuses_a_foreign_estimate():
    model = build_model("ftjnf", {"n_channels": 1, "n_lstm_hidden1": 4, "n_lstm_hidden2": 4})
    loss_fn = task_loss_for(model)
    x = torch.randn(1, 2000)
    out = model(x)
    with pytest.raises(RuntimeError, match="model just returned"):
        loss_fn(out.detach().clone(), x)
    loss_fn(out, x)  # the model's own output
    with pytest.raises(RuntimeError, match="model just returned"):
        loss_fn(out, x)  # read once: a second call would pair a cleared capture


def test_copies_and_pickles_of_the_model_do_not_feed_the_loss():
    """The best-validation copy (deepcopy) and a spawned scoring worker (pickle) get inert hooks."""
    import copy
    import pickle

    model = build_model("subband", ELITE)
    loss_fn = task_loss_for(model)
    x, y = torch.randn(1, 2000), torch.randn(1, 2000)
    out = model(x)
    copy.deepcopy(model)(x)  # must not replace the capture of `out`
    pickle.loads(pickle.dumps(model))(x)
    assert torch.isfinite(loss_fn(out, y))
    hooks = len(model._forward_hooks)
    del loss_fn  # a discarded loss takes its hooks with it
    assert len(model._forward_hooks) == hooks - 1


# ---------------------------------------------------------------------------------------- sub-band


def _old_band_loss(model, out: torch.Tensor, target: torch.Tensor, band: slice) -> torch.Tensor:
    """The sub-band family's loss before band_spectral, on one band's bins: compressed spectral terms of
    STFT(output waveform), i.e. through the iSTFT → STFT path."""
    old = CompressedSpectralLoss(wav_weight=0.0)
    mag_e, spec_e = old._compressed(out)
    mag_t, spec_t = old._compressed(target)
    return (mag_e[:, band] - mag_t[:, band]).abs().mean() + (spec_e[:, band] - spec_t[:, band]).abs().mean()


def _grads(model) -> list[torch.Tensor]:
    return [torch.cat([p.grad.flatten() for p in net.parameters()]) for net in model.bands]


def test_a_band_loss_sends_exactly_no_gradient_into_other_bands():
    torch.manual_seed(0)
    model = build_model("subband", ELITE)
    loss_fn = task_loss_for(model)
    assert isinstance(loss_fn, BandSpectralLoss)
    x, y = torch.randn(2, 8000), torch.randn(2, 8000)
    band0 = model.band_slices()[0]
    # the old waveform path leaks: band 0's bins of STFT(iSTFT(Ŝ)) depend on band 1's network
    _old_band_loss(model, model(x), y, band0).backward()
    old = _grads(model)
    assert old[0].abs().sum() > 0 and old[1].abs().sum() > 0
    model.zero_grad(set_to_none=True)
    loss_fn.band_losses(model(x), y)[0].backward()
    new = _grads(model)
    assert new[0].abs().sum() > 0
    assert all(int(torch.count_nonzero(g)) == 0 for g in new[1:])


def test_band_loss_matches_a_per_bin_rederivation_on_the_models_own_spectrum():
    torch.manual_seed(1)
    model = build_model("subband", {**ELITE, "n_fft": 128, "hop_length": 64})
    loss_fn = task_loss_for(model)
    taps = FeatureTaps(model, ["tap_spectrum"])
    x, y = torch.randn(2, 1500), torch.randn(2, 1500)
    out = model(x)
    spec_e = taps.features["tap_spectrum"].detach().numpy()  # (B, F, T) before the iSTFT
    taps.remove()
    per_band = loss_fn.band_losses(out, y).detach().numpy()
    out = model(x)
    total = float(loss_fn(out, y).detach())

    def comp(z):
        mag = np.maximum(np.abs(z), 1e-8)
        return mag**0.3, z * mag**0.3 / mag

    spec_t = np.stack([_stft(y[i].double().numpy(), 128, 64) for i in range(2)])
    (me, ce), (mt, ct) = comp(spec_e.astype(np.complex128)), comp(spec_t)
    per_bin = (np.abs(me - mt) + np.abs(ce - ct)).mean(axis=(0, 2))
    assert total == pytest.approx(per_bin.mean(), rel=1e-4)
    expected = [per_bin[s].mean() for s in model.band_slices()]
    np.testing.assert_allclose(per_band, expected, rtol=1e-4)


def test_band_spectral_needs_a_model_with_bands():
    with pytest.raises(ConfigError, match=r"training\.task_loss: task loss 'band_spectral' cannot train dpcrn_lite"):
        check_task_loss(MODELS.get("dpcrn_lite"), {"name": "band_spectral"})


# ----------------------------------------------------------------------------- defaults, overrides


def test_every_family_declares_its_default():
    assert set(DEFAULTS) == set(MODELS.names())
    for family, name in DEFAULTS.items():
        spec = check_task_loss(MODELS.get(family))
        assert spec.name == name, family


def test_default_and_override_build_the_named_loss():
    model = build_model("convtasnet", {"n_filters": 16, "bn_chan": 8, "hid_chan": 16, "skip_chan": 8,
                                       "n_blocks": 1, "n_repeats": 1})
    default = task_loss_for(model)
    assert isinstance(default, NegativeSISNR) and default.spec.label() == "si_snr"
    custom = task_loss_for(model, {"name": "compressed_spectral", "kwargs": {"wav_weight": 0.0}})
    assert isinstance(custom, CompressedSpectralLoss) and custom.wav_weight == 0.0 and custom.compress == 0.3
    assert custom.spec.label() == "compressed_spectral(wav_weight=0.0)"
    assert isinstance(task_loss_for(model, "si_snr"), NegativeSISNR)  # a bare name


def test_a_model_class_declaring_task_loss_gets_it():
    class Custom(torch.nn.Module):
        task_loss = {"name": "compressed_spectral", "kwargs": {"wav_weight": 0.0, "compress": 0.5}}

    est, ref = torch.randn(2, 4000), torch.randn(2, 4000)
    loss = task_loss_for(Custom())
    torch.testing.assert_close(loss(est, ref), CompressedSpectralLoss(compress=0.5, wav_weight=0.0)(est, ref))
    plain = task_loss_for(torch.nn.Linear(1, 1))  # declares nothing: compressed_spectral defaults
    assert isinstance(plain, CompressedSpectralLoss) and plain.wav_weight == 10.0


@pytest.mark.parametrize("spec,needle", [
    ({"name": "si_snrr"}, "training.task_loss.name: unknown task loss 'si_snrr'"),
    ({"name": "si_snr", "kwargs": {"epsilon": 1e-6}}, "unknown key 'training.task_loss.kwargs.epsilon'"),
    ({"name": "compressed_spectral", "kwargs": {"compress": 2.0}}, "training.task_loss.kwargs.compress"),
    ({"name": "ftjnf", "kwargs": {"window": "hamming"}}, "training.task_loss.kwargs.window"),
    ({"name": "si_snr", "knobs": {}}, "unknown key 'training.task_loss.knobs'"),
])
def test_bad_names_and_kwargs_are_one_line_naming_the_key(spec, needle):
    with pytest.raises(ConfigError) as err:
        check_task_loss(MODELS.get("dccrn"), spec)
    assert needle in str(err.value) and "\n" not in str(err.value)


def test_every_registered_loss_config_mirrors_its_constructor():
    """The registry builds a loss from its validated Config: each Config field is a constructor keyword
    with the same default, so a loss built by name equals one built by hand."""
    import inspect

    assert set(TASK_LOSSES.names()) == {"compressed_spectral", "si_snr", "ftjnf", "band_spectral"}
    for name in TASK_LOSSES.names():
        cls = TASK_LOSSES.get(name)
        params = inspect.signature(cls.__init__).parameters
        for field, info in cls.Config.model_fields.items():
            assert field in params and params[field].default == info.default, (name, field)
