"""Neuronavigation fiducials: why dropping the fiducial with the largest error does not help.

A head-sized layout: 7 skin fiducials on an ellipsoid of 180 x 220 x 200 mm (left-right, anterior-posterior,
inferior-superior), placed where adhesive markers usually go (forehead, frontal, temporal, vertex, occipital),
and targets deep in the brain. The fiducials are located in the pre-operative MRI (fixed space) and touched with a
tracked probe (moving space, the tracker); both localisations are noisy, with a total FLE of 1 mm RMS. A rigid fit
``T`` (MRI -> tracker, ``T(mri_i) ~ tracker_i``) registers the two.

The "sanity check" often done in theatre: drop the fiducial with the largest FRE and re-register. The table
shows, for one registration, the FRE and the TRE at each target (predicted by Fitzpatrick, West and Maurer 1998,
simulated by Monte Carlo, and the actual TRE, known here because the truth is simulated) before and after. Then
thousands of independent registrations show what happens on average: the FRE always falls, the TRE rises, and
FRE and TRE are uncorrelated (Fitzpatrick, Proc. SPIE 7261, 2009).

Usage::

    python examples/fiducials.py [-o example_out] [--seed 0] [--fle 1.0] [--trials 5000] [--samples 4000]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxreg.points import drop_worst_fiducial, fit_rigid, fle_from_fre, predict_tre, registration_errors
from jaxreg.transforms import Rigid

SEMI_AXES = np.array(
    [90.0, 110.0, 100.0]
)  # mm: x left-right, y posterior-anterior, z inferior-superior (RAS)
# (name, elevation above the ear plane, azimuth from the right (+x) towards the front (+y)), degrees
FIDUCIALS = [
    ("forehead", 25, 90),
    ("frontal L", 40, 130),
    ("frontal R", 40, 50),
    ("temporal L", 12, 185),
    ("temporal R", 12, -5),
    ("vertex", 78, 100),
    ("occipital", 30, 270),
]
TARGETS = [  # RAS mm, head centre at the origin
    ("thalamus L", (-12.0, -18.0, 8.0)),
    ("STN R", (12.0, -13.0, -5.0)),
    ("insula L", (-38.0, 5.0, 4.0)),
    ("brainstem", (0.0, -30.0, -30.0)),
    ("visual cortex", (8.0, -85.0, 5.0)),
]


def fiducial_positions() -> np.ndarray:
    el, az = (np.radians([f[i] for f in FIDUCIALS]) for i in (1, 2))
    unit = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=1)
    return unit * SEMI_AXES


def make_trial(mri: np.ndarray, targets: np.ndarray, truth: Rigid, fle: float):
    """One simulated registration, written for one key and vmapped over many."""
    sigma = fle / np.sqrt(2 * 3)  # per axis, in each of the two spaces: FLE^2 = 3 (2 sigma^2)
    mri_j, tgt_j = jnp.asarray(mri, jnp.float32), jnp.asarray(targets, jnp.float32)
    tracker_true = truth(mri_j)
    tgt_true = truth(tgt_j)
    n = mri.shape[0]

    def trial(key):
        k1, k2 = jax.random.split(key)
        mri_obs = mri_j + sigma * jax.random.normal(k1, mri_j.shape)
        trk_obs = tracker_true + sigma * jax.random.normal(k2, mri_j.shape)
        before = fit_rigid(mri_obs, trk_obs)
        err = registration_errors(before, mri_obs, trk_obs)
        worst = jnp.argmax(err)
        keep = (jnp.arange(n) != worst).astype(jnp.float32)
        after = fit_rigid(mri_obs, trk_obs, weights=keep)
        err_after = registration_errors(after, mri_obs, trk_obs)
        fre_after = jnp.sqrt(jnp.sum(keep * err_after**2) / (n - 1))
        return (
            jnp.sqrt(jnp.mean(err**2)),
            fre_after,
            registration_errors(before, tgt_j, tgt_true),
            registration_errors(after, tgt_j, tgt_true),
            mri_obs,
            trk_obs,
        )

    return trial


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "-o", "--output", default=None, help="folder for fiducials.png (needs matplotlib); none by default"
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--fle", type=float, default=1.0, help="total RMS fiducial localisation error, mm (default 1)"
    )
    p.add_argument(
        "--trials", type=int, default=5000, help="simulated registrations for the summary (default 5000)"
    )
    p.add_argument(
        "--samples", type=int, default=4000, help="Monte Carlo draws per TRE simulation (default 4000)"
    )
    args = p.parse_args()
    t0 = time.perf_counter()

    mri = fiducial_positions()
    targets = np.array([t[1] for t in TARGETS])
    names = [f[0] for f in FIDUCIALS]
    n = len(mri)
    # an arbitrary MRI -> tracker pose: the patient's head somewhere in the tracker's field of view
    truth = Rigid(jnp.asarray([0.3, -1.2, 0.5]), jnp.asarray([-150.0, 420.0, -1300.0]), jnp.zeros(3))
    trial = make_trial(mri, targets, truth, args.fle)
    key = jax.random.key(args.seed)
    k_sim, k_many = jax.random.split(key)

    # many independent registrations (vmapped); the first one is examined in detail
    fre_b, fre_a, tre_b, tre_a, mri_all, trk_all = jax.jit(jax.vmap(trial))(
        jax.random.split(k_many, args.trials)
    )
    mri_obs, trk_obs = mri_all[0], trk_all[0]

    # -- one registration --------------------------------------------------------------------------------------
    res = drop_worst_fiducial(
        k_sim,
        mri_obs,
        trk_obs,
        targets,
        moving_targets=truth(jnp.asarray(targets, jnp.float32)),
        fle_rms=args.fle,
        num_samples=args.samples,
    )
    d = res.dropped
    fle_est = float(fle_from_fre(res.fre_before, n))
    print(
        f"Head {2 * SEMI_AXES[0]:.0f} x {2 * SEMI_AXES[1]:.0f} x {2 * SEMI_AXES[2]:.0f} mm, {n} skin fiducials, "
        f"FLE {args.fle:.2f} mm RMS (MRI and tracker), rigid fit MRI -> tracker."
    )
    print(
        f"One registration (seed {args.seed}, the first of the {args.trials} below): per-fiducial FRE (mm):"
    )
    print("  " + "  ".join(f"{nm} {e:.2f}" for nm, e in zip(names, np.asarray(res.fiducial_errors))))
    print(
        f"The largest is '{names[d]}' ({float(res.fiducial_errors[d]):.2f} mm): drop it and re-register with {n - 1}."
    )
    print(f"(FLE estimated from this FRE: {fle_est:.2f} mm; the table uses the true {args.fle:.2f} mm.)\n")
    print(f"{'':16}{'all ' + str(n):>10}{'worst dropped':>15}{'change':>9}")
    change = 100 * (float(res.fre_after) / float(res.fre_before) - 1)
    print(f"{'RMS FRE (mm)':16}{float(res.fre_before):>10.2f}{float(res.fre_after):>15.2f}{change:>+8.0f}%")
    print(f"\n{'TRE (mm)':16}{'predicted':>19}{'simulated':>19}{'actual':>19}")
    print(f"{'target':16}" + f"{'before  after':>19}" * 3)
    for i, (name, _) in enumerate(TARGETS):
        row = f"{name:16}"
        for b, a in (
            (res.predicted_tre_before, res.predicted_tre_after),
            (res.simulated_tre_before, res.simulated_tre_after),
            (res.tre_before, res.tre_after),
        ):
            row += f"{float(b[i]):>12.2f}{float(a[i]):>7.2f}"
        print(row)

    # -- many registrations ------------------------------------------------------------------------------------
    fre_b, fre_a, tre_b, tre_a = (np.asarray(v, np.float64) for v in (fre_b, fre_a, tre_b, tre_a))
    pred_b = np.asarray(predict_tre(mri, targets, fle_rms=args.fle))
    pred_a = np.array(
        [np.asarray(predict_tre(np.delete(mri, i, 0), targets, fle_rms=args.fle)) for i in range(n)]
    )
    print(
        f"\nOver {args.trials} independent registrations (same layout and FLE), dropping the worst fiducial:"
    )
    print(
        f"  lowered the FRE in {100 * np.mean(fre_a < fre_b):.1f}% of them "
        f"(RMS {np.sqrt(np.mean(fre_b**2)):.2f} -> {np.sqrt(np.mean(fre_a**2)):.2f} mm)"
    )
    print(
        f"{'target':16}{'RMS TRE before':>15}{'after':>8}{'TRE worse in':>14}{'corr(FRE, TRE)':>16}"
        f"{'predicted before':>18}{'after (range over dropped)':>28}"
    )
    for i, (name, _) in enumerate(TARGETS):
        rb, ra = np.sqrt(np.mean(tre_b[:, i] ** 2)), np.sqrt(np.mean(tre_a[:, i] ** 2))
        worse = 100 * np.mean(tre_a[:, i] > tre_b[:, i])
        corr = np.corrcoef(fre_b, tre_b[:, i])[0, 1]
        print(
            f"{name:16}{rb:>15.2f}{ra:>8.2f}{worse:>13.0f}%{corr:>16.2f}{pred_b[i]:>18.2f}"
            f"{pred_a[:, i].min():>18.2f} - {pred_a[:, i].max():.2f}"
        )
    print(
        "A lower FRE does not mean a lower TRE: FRE and TRE are uncorrelated, and the dropped fiducial was only\n"
        "unlucky, not wrong; removing it leaves fewer fiducials spread over less of the head."
    )

    if args.output:
        try:
            from jaxreg.plot import _pyplot, save_figure

            plt = _pyplot()
        except ImportError:
            print("matplotlib is not installed: no figure")
        else:
            out = Path(args.output)
            out.mkdir(parents=True, exist_ok=True)
            fig, ax = plt.subplots(1, 3, figsize=(15, 4.6))
            th = np.linspace(0, 2 * np.pi, 200)
            ax[0].plot(SEMI_AXES[0] * np.cos(th), SEMI_AXES[1] * np.sin(th), "0.7")
            ax[0].scatter(mri[:, 0], mri[:, 1], c="C0", label="fiducials")
            ax[0].scatter(
                mri[d, 0], mri[d, 1], s=140, facecolors="none", edgecolors="C3", label="dropped (one run)"
            )
            ax[0].scatter(targets[:, 0], targets[:, 1], marker="x", c="C1", label="targets")
            for (nm, _, _), q in zip(FIDUCIALS, mri):
                ax[0].annotate(nm, q[:2], fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax[0].set(aspect="equal", xlabel="x (R) mm", ylabel="y (A) mm", title="layout (axial projection)")
            ax[0].legend(fontsize=7, loc="lower left")
            ax[1].scatter(fre_b, tre_b[:, 0], s=2, alpha=0.3)
            ax[1].set(
                xlabel="RMS FRE (mm)",
                ylabel=f"TRE at {TARGETS[0][0]} (mm)",
                title=f"FRE vs TRE, {args.trials} registrations",
            )
            bins = np.linspace(0, np.percentile(tre_a[:, 0], 99.5), 50)
            ax[2].hist(tre_b[:, 0], bins=bins, alpha=0.6, label=f"all {n} fiducials")
            ax[2].hist(tre_a[:, 0], bins=bins, alpha=0.6, label="worst dropped")
            ax[2].set(
                xlabel=f"TRE at {TARGETS[0][0]} (mm)", ylabel="registrations", title="TRE before / after"
            )
            ax[2].legend()
            fig.tight_layout()
            path = save_figure(fig, out / "fiducials.png")
            print(f"wrote {path}")
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
